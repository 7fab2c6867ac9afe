"""requirements.lock (written by `make lock`) still satisfies pyproject.toml, where the ranges are declared."""

from __future__ import annotations

import re
import tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked_pins() -> dict[str, list[tuple[str, str | None, int]]]:
    """name -> [(version, marker, number of hashes)]; a name appears once per marker where the lock forks."""
    pins: dict[str, list[tuple[str, str | None, int]]] = {}
    current: list | None = None
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        match = PIN.match(line)
        if match:
            name, version, marker = match.groups()
            current = [version, marker, 0]
            pins.setdefault(canonicalize_name(name), []).append(current)  # type: ignore[arg-type]
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            current[2] += 1
    return {name: [tuple(entry) for entry in entries] for name, entries in pins.items()}


def version_here(entries: list[tuple[str, str | None, int]]) -> str | None:
    """The pinned version whose marker holds on this interpreter and platform."""
    chosen = [version for version, marker, _ in entries if marker is None or Marker(marker).evaluate()]
    assert len(chosen) <= 1, entries
    return chosen[0] if chosen else None


def declared_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = [
        *pyproject["project"]["dependencies"],
        *pyproject["project"]["optional-dependencies"]["dev"],
        *pyproject["build-system"]["requires"],
    ]
    return [Requirement(text) for text in declared]


def test_every_declared_requirement_is_pinned_within_its_range() -> None:
    pins = locked_pins()
    problems = []
    for requirement in declared_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = version_here(pins.get(canonicalize_name(requirement.name), []))
        if version is None:
            problems.append(f"{requirement.name}: not in requirements.lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} outside {requirement.specifier}")
    assert not problems, "pyproject.toml changed without `make lock`:\n  " + "\n  ".join(problems)


def test_every_pin_carries_hashes() -> None:
    pins = locked_pins()
    assert len(pins) > 150  # mlflow, dvc and dask pull in many packages: all of them are pinned
    unhashed = [name for name, entries in pins.items() for _, _, hashes in entries if hashes == 0]
    assert not unhashed
