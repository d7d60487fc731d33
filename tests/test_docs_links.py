"""The documents' links still point at what they name: README.md and launch/docs/*.md.

Every relative link must resolve to a file or folder of the repository. A link to a line,

    [`column_sum(dy, out=self.db)` (core/layers.py:127)](../../core/layers.py#L127)

must name (in backticks, first in its text) something that line contains, so that a line
number gone stale after an edit fails here instead of sending a reader to the wrong line. A
`file:NN` written in the text, as above, must be the file and line the link points at.
Web links (http, https, mailto) and links to a heading of the same page are not checked.

    pytest tests/test_docs_links.py
    python tests/test_docs_links.py --fix     # move stale line links to the line that now holds
                                              # the named code, where exactly one line does
"""
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "launch" / "docs").glob("*.md"))]
LINK = re.compile(r"\[((?:[^\[\]]|`[^`]*`)*)\]\(([^()\s]+)\)")   # [text](target)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def links(text: str):
    """(text, target) of every markdown link outside fenced code blocks."""
    return LINK.findall(FENCE.sub("", text))


def broken_links(document: Path) -> list[str]:
    """One line per link of ``document`` that does not point at what it says."""
    problems = []
    for text, target in links(document.read_text()):
        if re.match(r"(https?|mailto):", target) or target.startswith("#"):
            continue
        path, _, fragment = target.partition("#")
        file = (document.parent / path).resolve()
        if not file.exists():
            problems.append(f"{document.name}: [{text}]({target}): no such file")
            continue
        line = re.fullmatch(r"L(\d+)", fragment)
        if not line:
            continue
        name = re.search(r"`([^`]+)`", text)
        lines = file.read_text().splitlines()
        number = int(line.group(1))
        if name is None:
            problems.append(f"{document.name}: [{text}]({target}): a link to a line must "
                            "name, in backticks, what is on it")
        elif not 1 <= number <= len(lines) or name.group(1) not in lines[number - 1]:
            problems.append(f"{document.name}: [{text}]({target}): line {number} of {path} "
                            f"does not contain `{name.group(1)}`")
        written = re.search(r"([\w/.-]+\.\w+):(\d+)", text.replace(name.group(0), "") if name
                            else text)
        if written and (not path.endswith(written.group(1)) or int(written.group(2)) != number):
            problems.append(f"{document.name}: [{text}]({target}): the text says "
                            f"{written.group(0)}, the link {path}#L{number}")
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_points_at_what_it_names(document):
    assert broken_links(document) == []


def test_the_check_catches_stale_lines_and_missing_files(tmp_path):
    (tmp_path / "code.py").write_text("def forward(x):\n    return x\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[`forward` in code.py](code.py#L1) [`forward`](code.py#L2) "
                   "[code.py:1](code.py#L1) [`forward` (code.py:2)](code.py#L1) "
                   "[gone](gone.py) [web](https://example.org)\n"
                   "```\n[in a code block](nowhere.md)\n```\n")
    assert broken_links(doc) == [
        "doc.md: [`forward`](code.py#L2): line 2 of code.py does not contain `forward`",
        "doc.md: [code.py:1](code.py#L1): a link to a line must name, in backticks, what is "
        "on it",
        "doc.md: [`forward` (code.py:2)](code.py#L1): the text says code.py:2, the link "
        "code.py#L1",
        "doc.md: [gone](gone.py): no such file"]


def test_fix_moves_a_stale_link_to_the_line_that_holds_its_code(tmp_path):
    (tmp_path / "code.py").write_text("import numpy\n\ndef forward(x):\n    return x\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[`def forward` (code.py:1)](code.py#L1) and [`return`](code.py#L1)\n")
    assert fix_line_numbers(doc) == []
    assert doc.read_text() == "[`def forward` (code.py:3)](code.py#L3) and [`return`](code.py#L4)\n"


def fix_line_numbers(document: Path) -> list[str]:
    """Point each stale line link of ``document`` at the one line of its file that holds the
    named code (the link and a ``file:NN`` in its text). Returns what it could not fix."""
    def moved(match):
        text, target = match.group(1), match.group(2)
        path, _, fragment = target.partition("#")
        name = re.search(r"`([^`]+)`", text)
        file = (document.parent / path).resolve()
        if not (re.fullmatch(r"L\d+", fragment) and name and file.is_file()):
            return match.group(0)
        lines = file.read_text().splitlines()
        number = int(fragment[1:])
        if 1 <= number <= len(lines) and name.group(1) in lines[number - 1]:
            return match.group(0)
        found = [i + 1 for i, line in enumerate(lines) if name.group(1) in line]
        if len(found) != 1:
            return match.group(0)
        text = re.sub(rf"({re.escape(Path(path).name)}):{number}\b", rf"\g<1>:{found[0]}", text)
        return f"[{text}]({path}#L{found[0]})"

    original = document.read_text()
    fixed = LINK.sub(moved, original)
    if fixed != original:
        document.write_text(fixed)
    return broken_links(document)


if __name__ == "__main__" and sys.argv[1:] == ["--fix"]:
    left = [problem for document in DOCUMENTS for problem in fix_line_numbers(document)]
    print("\n".join(left) or "every link points at what it names")
    sys.exit(1 if left else 0)
