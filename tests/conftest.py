"""Shared fixtures: the repository's own configs, and throw-away project roots for stage tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.contract import CohortContract, load_contract
from pipeline.paths import ROOT_ENV
from pipeline.scales import ScaleConversions, load_scale_conversions

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run MLflow's schema migrations once; each test then copies the migrated file (seconds -> milliseconds)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _mlflow_template_db: Path) -> str:
    """A private MLflow tracking store and registry for one test."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def register_training_run(root: Path, estimator_sha256: str, seed: int) -> str:
    """A training run with a registered version tagged with the estimator hash, as the train stage leaves them
    (what the evaluate and explain stages look up); returns the run id."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline import tracking

    tracking.configure(root, "trd-acute")
    with mlflow.start_run(run_name="train-acute") as run:
        mlflow.log_param("seed", seed)
    client = MlflowClient()
    client.create_registered_model("trd-acute")
    client.create_model_version(
        "trd-acute", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
        tags={"estimator_sha256": estimator_sha256},
    )  # fmt: skip
    return run.info.run_id


@pytest.fixture(scope="module")
def one_worker_cluster() -> Iterator[object]:
    """A Dask LocalCluster with one single-threaded worker process on 127.0.0.1 (for the scorer's Dask tests)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local
