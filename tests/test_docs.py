"""The README and docs/ as a clone has them: self-contained (no path outside the repository), every link
resolving to a file and heading of the repository, the README's test command the one CI runs."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"\.\./shared|shared/docs|\b(hdmap|baselines|feclip_method)\.md")  # the user's notes
RECORDS = re.compile(r"experiments/.*/report\.md$")  # reports earlier commands wrote, kept as they were
README_LINES = 150  # a five-minute read; the reference lives in docs/


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    kinds = {".py", ".md", ".yaml", ".sh", ".toml", ".ipynb", ""}
    return [ROOT / n for n in names if Path(n).suffix in kinds and not RECORDS.search(n) and n != THIS]


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())  # a `#` comment in a code block is no heading
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_no_tracked_file_points_outside_the_repository():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    offending = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in tracked_text_files()
        if path.is_file()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not offending, f"paths outside the repository: {offending}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_resolves_to_a_file_and_heading_of_the_repository(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or not path.is_relative_to(ROOT):
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{doc.name}: links that lead nowhere: {broken}"


def test_the_readme_is_short_and_its_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_LINES
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"\n{ci_command.replace('pip install -q ', 'pip install ')}\n" in readme  # CI installs quietly
    assert "feclip run -m experiment=default_sweep" in readme


def test_slug_follows_githubs_rule():
    assert slug(" What the LFS statistics compute") == "what-the-lfs-statistics-compute"
    assert slug("Deciding between variants: choose on `dev`, claim on `test`") == (
        "deciding-between-variants-choose-on-dev-claim-on-test"
    )
