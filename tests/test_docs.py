"""The repository stands alone: nothing cites documents outside it, and every cited docs/ section exists.

Code, configs and tests cite the project's own docs/ files ("lit §8a" = docs/literature.md §8a,
"docs/engineering.md §2"). A clone has no ``../shared`` beside it except, optionally, the dataset mirror
(``TRD_DATA_MIRROR``, ``../shared/datasets`` and that mirror's checksum list ``../shared/README.md``), which tests
skip without; any other pointer there, or to a notes file that is not in docs/, is a dangling reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
THIS_FILE = Path(__file__).resolve()  # it spells the forbidden patterns out

TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".j2"}
SCANNED_FILES = ("params.yaml", "dvc.yaml", "README.md", "Makefile")
SCANNED_DIRS = ("pipeline", "configs", "tests", "benchmarks")

# ../shared is only legitimate as the dataset mirror (the folder, or its README listing the files' checksums)
OUTSIDE = re.compile(r"\.\./shared(?!/datasets\b|/README\.md\b)|shared/docs\b")
# notes files that used to live outside the repository; only docs/<name>.md is a valid citation
NOTES = re.compile(r"(?<![\w/])(?:design|anchors|literature)\.md\b")
# the nearest document named before a "§" on the same line says which file the section belongs to
CITING = re.compile(r"\blit\b|\bliterature notes\b|\bdocs/([\w-]+)\.md\b")
SECTION = re.compile(r"§\s?(\d+[a-z]?)")
HEADING = re.compile(r"^#{2,4}\s+(\d+[a-z]?)\.\s", re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def scanned_files(root: Path = ROOT) -> list[Path]:
    files = [root / name for name in SCANNED_FILES if (root / name).is_file()]
    for folder in SCANNED_DIRS:
        files += [
            p
            for p in sorted((root / folder).rglob("*"))
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
        ]
    return [p for p in files if p.resolve() != THIS_FILE]


def outside_references(text: str) -> list[tuple[int, str]]:
    """(line number, matched text) for every pointer outside the repository or to a notes file not in docs/."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        found += [(number, m.group(0)) for m in OUTSIDE.finditer(line)]
        found += [(number, m.group(0)) for m in NOTES.finditer(line)]
    return found


def citations(text: str) -> list[tuple[int, str, str]]:
    """(line number, docs file name, section) for every "§n" that follows a citing prefix on its line."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for section in SECTION.finditer(line):
            prefixes = list(CITING.finditer(line, 0, section.start()))
            if prefixes:
                document = prefixes[-1].group(1) or "literature"
                found.append((number, document, section.group(1)))
    return found


def section_ids(markdown: str) -> set[str]:
    return set(HEADING.findall(markdown))


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(markdown_file: Path) -> list[str]:
    """Relative links in a Markdown file whose target file, or heading anchor, does not exist."""
    broken = []
    for target in LINK.findall(markdown_file.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        destination = (markdown_file.parent / path_part).resolve() if path_part else markdown_file
        if not destination.exists():
            broken.append(target)
        elif anchor and destination.suffix == ".md":
            headings = re.findall(r"^#+\s+(.+?)\s*$", destination.read_text(encoding="utf-8"), re.MULTILINE)
            if anchor not in {github_anchor(h) for h in headings}:
                broken.append(target)
    return broken


# --- the scanner itself (each check shown to fire) ------------------------------------------------------------


def test_outside_references_are_found_and_the_dataset_mirror_is_allowed() -> None:
    text = "\n".join(
        [
            "see ../shared/docs/literature.md §8",  # outside
            "cf. design.md and anchors.md §0.3",
            "files in ../shared/datasets/ds005917",  # the mirror: allowed
            "checksums as in ../shared/README.md",  # the mirror's list: allowed
            "figures in docs/literature.md §8a",  # inside: allowed
        ]
    )
    assert outside_references(text) == [
        (1, "../shared"),
        (2, "design.md"),
        (2, "anchors.md"),
    ]


def test_citations_name_their_document_and_every_section_of_a_chain() -> None:
    text = "x: 1  # lit §4c/§8c; single (§1a)\ny: 2  # docs/engineering.md §6 and lit §5b\nz  # [§9 Sample size]"
    assert citations(text) == [
        (1, "literature", "4c"),
        (1, "literature", "8c"),
        (1, "literature", "1a"),
        (2, "engineering", "6"),
        (2, "literature", "5b"),
    ]


def test_a_missing_section_or_link_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("## 1. Scope\n\n### 1a. Detail\n\n[ok](page.md#1a-detail) [gone](other.md) [bad](#2-none)\n")
    assert section_ids(page.read_text()) == {"1", "1a"}
    assert broken_links(page) == ["other.md", "#2-none"]


# --- the repository ------------------------------------------------------------------------------------------


def test_the_scan_covers_the_code_configs_tests_and_readme() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    for expected in ("params.yaml", "dvc.yaml", "README.md", "pipeline/report/stage.py", "configs/cohort_schema.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nothing_points_outside_the_repository(path: Path) -> None:
    found = outside_references(path.read_text(encoding="utf-8", errors="replace"))
    assert not found, f"{path.relative_to(ROOT)} cites documents outside the repository (use docs/): {found}"


def test_every_cited_section_is_a_heading_in_docs() -> None:
    headings = {p.stem: section_ids(p.read_text(encoding="utf-8")) for p in DOCS.glob("*.md")}
    missing = []
    cited = 0
    for path in scanned_files():
        for line, document, section in citations(path.read_text(encoding="utf-8", errors="replace")):
            cited += 1
            if section not in headings.get(document, set()):
                missing.append(f"{path.relative_to(ROOT)}:{line}: docs/{document}.md §{section}")
    assert cited > 100, "the citation scan found almost nothing: is its pattern still right?"
    assert not missing, "cited sections missing from docs/:\n" + "\n".join(missing)


def test_literature_keeps_its_section_numbers() -> None:
    # params cite these; renumbering the file would silently repoint every citation
    ids = section_ids((DOCS / "literature.md").read_text(encoding="utf-8"))
    expected = {str(n) for n in range(1, 17)} | {"1a", "1b", "1c", "1d", "1e", "1f", "3a", "3b", "4a", "4b", "4c"}
    expected |= {"5a", "5b", "7a", "7b", "7c", "8a", "8b", "8c", "8d", "11a", "11b", "12a", "12b"}
    assert expected <= ids, sorted(expected - ids)


@pytest.mark.parametrize("name", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_relative_links_resolve(name: str) -> None:
    path = ROOT / name if name == "README.md" else DOCS / name
    assert not broken_links(path), f"{name}: broken links {broken_links(path)}"


def test_readme_links_every_docs_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in DOCS.glob("*.md") if f"](docs/{p.name})" not in readme]
    assert not unlinked, f"README's Documentation section does not link {unlinked}"
