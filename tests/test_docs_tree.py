"""launch/docs/ holds documents and figures only: Markdown, PNG and SVG, about 20 files at most.

Run outputs, benchmark sittings, logs and one-off scripts do not belong there: git history
keeps them, and launch/docs/results.md cites the commit whose tree held each figure's files
(`git show <commit>:launch/docs/runs/...`). In a git checkout the files checked are the
tracked ones (`git ls-files launch/docs`: what a commit would ship); elsewhere (an sdist, an
exported tree) every file under the folder.

    pytest tests/test_docs_tree.py
"""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "launch" / "docs"
ALLOWED = {".md", ".png", ".svg"}
MOST = 20


def docs_files(root: Path = REPO) -> list[str]:
    """The folder's files, relative to ``root``: tracked ones in a git checkout, else all."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", "launch/docs"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is not None and listed.returncode == 0 and (root / ".git").exists():
        return sorted(name for name in listed.stdout.split("\0") if name)
    folder = root / "launch" / "docs"
    return sorted(str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file())


def problems(files: list[str]) -> list[str]:
    """One line per rule the listing breaks."""
    found = [f"{name}: not a document or a figure (only {', '.join(sorted(ALLOWED))}; "
             "git history keeps run outputs and scripts, results.md cites the commit)"
             for name in files if Path(name).suffix.lower() not in ALLOWED]
    if len(files) > MOST:
        found.append(f"launch/docs holds {len(files)} files, more than {MOST}: "
                     "documents and figures only")
    return found


def test_docs_holds_documents_and_figures_only():
    files = docs_files()
    assert files, "launch/docs lists no files"
    assert problems(files) == []


def test_the_documents_are_there():
    files = set(docs_files())
    for name in ("results.md", "design.md", "benchmarks.md"):
        assert f"launch/docs/{name}" in files


def test_the_check_catches_outputs_scripts_and_too_many_files():
    assert problems(["launch/docs/results.md", "launch/docs/step.png", "launch/docs/a.svg"]) == []
    assert problems(["launch/docs/runs/cnn/final.json", "launch/docs/bench/run.sh",
                     "launch/docs/design.md"]) == [
        "launch/docs/runs/cnn/final.json: not a document or a figure (only .md, .png, .svg; "
        "git history keeps run outputs and scripts, results.md cites the commit)",
        "launch/docs/bench/run.sh: not a document or a figure (only .md, .png, .svg; "
        "git history keeps run outputs and scripts, results.md cites the commit)"]
    many = [f"launch/docs/figure-{i}.png" for i in range(MOST + 1)]
    assert problems(many) == [f"launch/docs holds {MOST + 1} files, more than {MOST}: "
                              "documents and figures only"]


def test_outside_git_the_folder_listing_is_used(tmp_path):
    (tmp_path / "launch" / "docs" / "runs").mkdir(parents=True)
    (tmp_path / "launch" / "docs" / "results.md").write_text("# Results\n")
    (tmp_path / "launch" / "docs" / "runs" / "final.json").write_text("{}\n")
    files = docs_files(tmp_path)
    assert files == ["launch/docs/results.md", "launch/docs/runs/final.json"]
    assert len(problems(files)) == 1
