"""configs/params_citations.yaml: the literature citation and evidence tag of each param (format in that file).

The citations live outside params.yaml because ``dvc exp run -S`` rewrites params.yaml without its comments.
This module reads the file into typed entries, resolves each dotted path against the params, and lists what
is wrong: an entry naming no param, or a numeric value under a checked section with no entry covering it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from pipeline.errors import ConfigError

CITATIONS_FILE = Path("configs") / "params_citations.yaml"
CHECKED_SECTIONS = ("synthesize",)  # every numeric value under these needs a citation entry
CITE_PATTERN = re.compile(r"^lit §\d+[a-z]?\b")
PAIR_SEPARATOR = "~"  # a correlation triple [a, b, r] is named a~b


class Evidence(StrEnum):
    READ = "R"  # read in a source
    COMPUTED = "C"  # computed from read numbers
    ESTIMATE = "E"  # an estimate for the generator


class Citation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cite: str | None = Field(default=None, pattern=CITE_PATTERN.pattern, description="lit §n pointers.")
    evidence: Evidence
    note: str | None = None


class Citations(RootModel[dict[str, Citation]]):
    model_config = ConfigDict(frozen=True)


def load_citations(path: Path) -> dict[str, Citation]:
    """The entries of ``path``; a malformed file or entry is a ConfigError naming the entry."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the params citations: {exc}", file=path) from exc
    try:
        return Citations.model_validate(raw or {}).root
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"entry {where}: {first['msg']}", file=path, hint="see the format at the top of the file"
        ) from exc


def _item_name(item: Any, index: int) -> str:
    if isinstance(item, Mapping) and isinstance(item.get("name"), str):
        return item["name"]
    if isinstance(item, list) and len(item) == 3 and all(isinstance(v, str) for v in item[:2]):
        return f"{item[0]}{PAIR_SEPARATOR}{item[1]}"
    return str(index)


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key), value
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield _item_name(item, index), item


def numeric_leaves(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Paths (as segment tuples) of every int or float under ``node`` (booleans are not numbers here)."""
    if isinstance(node, bool):
        return
    if isinstance(node, int | float):
        yield prefix
        return
    for name, child in _children(node):
        yield from numeric_leaves(child, (*prefix, name))


def resolves(params: Mapping[str, Any], path: str) -> bool:
    """Whether the dotted ``path`` names a param (segments: keys, list items by name, a~b or index)."""
    node: Any = params
    for segment in path.split("."):
        found = dict(_children(node)) if isinstance(node, Mapping | list) else {}
        if segment not in found:
            return False
        node = found[segment]
    return True


def problems(params: Mapping[str, Any], citations: Mapping[str, Citation]) -> list[str]:
    """Entries that name no param, and numeric values under CHECKED_SECTIONS that no entry covers."""
    found = [
        f"{path}: names no param in params.yaml (renamed or removed?)"
        for path in citations
        if not resolves(params, path)
    ]
    covered = {tuple(path.split(".")) for path in citations}
    for section in CHECKED_SECTIONS:
        for leaf in numeric_leaves(params.get(section, {}), (section,)):
            if not any(leaf[:n] in covered for n in range(1, len(leaf) + 1)):
                found.append(f"{'.'.join(leaf)}: no citation entry covers this value")
    return found
