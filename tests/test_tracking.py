"""MLflow conventions (pipeline/tracking.py): tag names, the experiment kind, a store that can move."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.modelling.bundle import load_bundle, log_saved_model
from tests.scoring.helpers import save_test_model


def test_run_tags_use_dvcs_variable_names(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "tame-pens")
    monkeypatch.setenv("DVC_STAGE", "train@acute")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    tags = tracking.run_tags(tmp_path)
    assert tags["DVC_EXP_NAME"] == "tame-pens"
    assert tags["DVC_STAGE"] == "train@acute"
    assert "DVC_EXP_BASELINE_REV" not in tags
    assert "dvc_exp_name" not in tags
    assert "git_sha" in tags


def test_the_experiment_kind_is_set_on_new_and_existing_experiments(tmp_path, mlflow_store) -> None:
    old = mlflow.create_experiment("made-before")  # as stores made before the kind was set
    tracking.configure(tmp_path, "made-before")
    tracking.configure(tmp_path, "trd-new")
    for name in ("made-before", "trd-new"):
        assert mlflow.get_experiment_by_name(name).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert mlflow.get_experiment_by_name("made-before").experiment_id == old


def _project_with_a_registered_model(root: Path, contract) -> tuple[Path, pd.DataFrame]:
    root.mkdir()
    model_dir = save_test_model(contract, root / "models" / "acute", lambda X: 0.08 * (X["bmi"] - 28))
    tracking.configure(root, "trd-acute")
    with mlflow.start_run():
        mlflow.log_text("identifier-free", "notes/readme.txt")
        log_saved_model(model_dir, registered_name="trd-acute")
    names = load_bundle(model_dir).feature_spec.feature_names
    return model_dir, pd.DataFrame(np.random.default_rng(0).uniform(0, 40, (5, len(names))), columns=names)


def test_a_moved_project_still_loads_its_registered_model(tmp_path, monkeypatch, contract) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("DVC_ROOT", str(first))
    model_dir, X = _project_with_a_registered_model(first, contract)
    expected = load_bundle(model_dir).predict(X)
    shutil.copytree(first, second)
    shutil.rmtree(first)  # moved, not copied: nothing may still resolve through the old folder

    # another process on the moved folder (mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI)
    mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(second))
    tracking.use_store(second)  # what every stage and command does first
    client = MlflowClient()
    run = client.search_runs([mlflow.get_experiment_by_name("trd-acute").experiment_id])[0]
    assert run.info.artifact_uri.startswith((second / "mlruns").resolve().as_uri())
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/readme.txt") == "identifier-free"
    registry = load_bundle("models:/trd-acute/1")
    np.testing.assert_array_equal(registry.predict(X), expected)
    assert tracking.relocate_store(second / "mlflow.db", second / "mlruns") == {}  # a second call finds nothing
    mlflow.set_tracking_uri(None)


def test_relocation_needs_the_artifacts_folder(tmp_path) -> None:
    assert tracking.relocate_store(tmp_path / "mlflow.db", tmp_path / "mlruns") == {}


@pytest.mark.parametrize(
    ("locations", "expected"),
    [
        (["file:///old/p/mlruns", "/old/p/mlruns/0"], {"file:///old/p/mlruns", "/old/p/mlruns"}),
        (["file:///new/mlruns", "/new/mlruns/0"], set()),
        (["s3://bucket/artifacts"], set()),  # not the embedded layout: left alone
    ],
)
def test_old_roots_are_the_mlruns_prefixes_that_are_not_here(locations, expected) -> None:
    assert tracking._old_artifact_roots(locations, Path("/new/mlruns")) == expected


def test_flatten_params_gives_dotted_keys_and_keeps_leaves() -> None:
    flat = tracking.flatten_params("train", {"gate": {"min": 0.6, "slope": [0.8, 1.2]}, "n_jobs": 2})
    assert flat == {"train.gate.min": 0.6, "train.gate.slope": [0.8, 1.2], "train.n_jobs": 2}
    assert tracking.flatten_params("", {"a": {"b": 1}}) == {"a.b": 1}


def test_finite_metrics_drops_missing_and_non_numeric_values() -> None:
    values = {"auroc": 0.71, "n": 3, "passed": True, "slope": float("nan"), "name": "x", "none": None}
    assert tracking.finite_metrics(values, "cv.") == {"cv.auroc": 0.71, "cv.n": 3.0, "cv.passed": 1.0}


def test_stage_run_tags_and_logs_params_on_parent_and_nested_runs(tmp_path, mlflow_store) -> None:
    with (
        tracking.stage_run(tmp_path, "trd-x", "train-x", tags={"task": "x"}, params={"seed": 7}),
        tracking.stage_run(tmp_path, "trd-x", "logreg", tags={"candidate": "logreg"}, nested=True),
    ):
        pass
    runs = mlflow.search_runs(experiment_names=["trd-x"]).set_index("tags.mlflow.runName")
    assert runs.loc["train-x", "params.seed"] == "7"
    assert runs.loc["train-x", "tags.task"] == "x"
    assert runs.loc["logreg", "tags.candidate"] == "logreg"
    assert runs.loc["logreg", "tags.mlflow.parentRunId"] == runs.loc["train-x", "run_id"]
    assert runs["tags.git_sha"].notna().all()  # every run, nested too, carries the code tags


def test_extending_training_run_yields_false_without_a_store(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a project with no mlflow.db
    with tracking.extending_training_run(tmp_path, "acute", "0" * 64, "evaluation") as logging_to_mlflow:
        assert logging_to_mlflow is False
    assert not (tmp_path / "mlflow.db").exists()
