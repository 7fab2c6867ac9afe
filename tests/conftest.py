"""Shared fixtures: the repository's own configs, and throw-away project roots for stage tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.contract import CohortContract, load_contract
from pipeline.paths import ROOT_ENV
from pipeline.scales import ScaleConversions, load_scale_conversions

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def contract() -> CohortContract:
    return load_contract(REPO_ROOT / "configs" / "cohort_schema.yaml")


@pytest.fixture(scope="session")
def scales() -> ScaleConversions:
    return load_scale_conversions(REPO_ROOT / "configs" / "scale_conversions.yaml")


@pytest.fixture
def project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project root with the repository's configs and params; stages write their outputs into it."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    monkeypatch.setenv(ROOT_ENV, str(root))
    return root
