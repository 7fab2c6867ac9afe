from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.fixtures import fabricate


@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch, project_root: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project_root))


@pytest.fixture
def project(project_root: Path, contract, no_mlflow) -> Path:
    fabricate(project_root, contract)
    return project_root
