"""The documents' links still point at what they name: README.md and launch/docs/*.md.

Every relative link must resolve to a file or folder of the repository. A link to a line,

    [`column_sum` in core/layers.py](../../core/layers.py#L127)

must name (in backticks, first in its text) something that line contains, so that a line
number gone stale after an edit fails here instead of sending a reader to the wrong line.
Web links (http, https, mailto) and links to a heading of the same page are not checked.

    pytest tests/test_docs_links.py
"""
import re
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
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_points_at_what_it_names(document):
    assert broken_links(document) == []


def test_the_check_catches_stale_lines_and_missing_files(tmp_path):
    (tmp_path / "code.py").write_text("def forward(x):\n    return x\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[`forward` in code.py](code.py#L1) [`forward`](code.py#L2) "
                   "[code.py:1](code.py#L1) [gone](gone.py) [web](https://example.org)\n"
                   "```\n[in a code block](nowhere.md)\n```\n")
    assert broken_links(doc) == [
        "doc.md: [`forward`](code.py#L2): line 2 of code.py does not contain `forward`",
        "doc.md: [code.py:1](code.py#L1): a link to a line must name, in backticks, what is "
        "on it",
        "doc.md: [gone](gone.py): no such file"]
