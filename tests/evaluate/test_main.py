"""The stage outputs: identifier-free, byte-stable, declared in dvc.yaml, logged to MLflow (pipeline.evaluate.main)."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.errors import ConfigError
from pipeline.evaluate import main as stage
from pipeline.evaluate import performance, plots, types
from pipeline.evaluate.main import log_to_mlflow
from pipeline.io import write_parquet
from tests.conftest import REPO_ROOT, register_training_run
from tests.evaluate.conftest import N_BOOT, SEED, TASKS, champion_scores, eval_params

# --------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------


def test_outputs_are_byte_identical_across_runs(written) -> None:
    first, second = written
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert {"figures/calibration.png", "figures/roc.png", "figures/decision_curve.png"} <= {str(f) for f in files}
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_no_patient_identifier_in_any_output(written, cohort) -> None:
    ids = cohort["patient_id"].astype(str).tolist()
    folder = written[0]
    for path in folder.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            leaked = [pid for pid in ids if pid.encode() in content]
            assert not leaked, f"{path.relative_to(folder)} contains patient ids, e.g. {leaked[:3]}"
    assert b"syn-" not in (folder / "evaluation.json").read_bytes()


def test_metrics_json_holds_only_numbers_and_nulls(written) -> None:
    payload = json.loads((written[0] / "metrics.json").read_text())

    def leaves(node):
        for value in node.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    assert all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in leaves(payload))
    assert payload["external"]["negative_control"]["auroc_lower"] is None  # NaN is written as null
    for key in ("auroc", "auroc_lower", "auroc_upper", "brier", "calibration_slope", "calibration_in_the_large"):
        assert key in payload["test"]
    assert {"auroc", "brier"} <= set(payload["oracle"])
    assert {"auroc", "auroc_lower", "auroc_upper"} <= set(payload["gap"])
    assert {"n", "events", "auroc", "spearman_rho"} <= set(payload["external"])


# --------------------------------------------------------------------------------------------------------------
# dvc.yaml agrees with the stage
# --------------------------------------------------------------------------------------------------------------


def test_dvc_yaml_declares_the_stage_its_metrics_and_plots_for_every_task(written) -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["evaluate"]
    assert stage["foreach"] == "${tasks}"
    assert stage["do"]["cmd"] == "python -m pipeline evaluate ${key}"
    assert stage["do"]["params"] == [p.replace("{task}", "${key}") for p in types.PARAMS_USED]
    assert stage["do"]["outs"] == ["reports/${key}/evaluation"]
    folder = written[0]
    for task in TASKS.root:
        prefix = f"reports/{task}/evaluation/"
        # the headline is the only DVC metric; the figures are the plots (images render offline)
        assert f"{prefix}headline.json" in dvc["metrics"]
        assert f"{prefix}metrics.json" not in dvc["metrics"]
        assert f"{prefix}figures" in dvc["plots"]
    # what they point to exists in what the stage writes (checked on the acute output)
    assert set(json.loads((folder / "headline.json").read_text())["acute"]) >= {"auc", "slope", "gap"}
    assert {p.name for p in (folder / "figures").iterdir()} == set(plots.FIGURES)


# --------------------------------------------------------------------------------------------------------------
# the stage end to end, with MLflow
# --------------------------------------------------------------------------------------------------------------


def test_main_writes_the_outputs_and_logs_to_the_training_run(
    project_root, mlflow_store, data, honest, cohort, contract
) -> None:
    import shutil

    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["evaluate"]["bootstrap_repetitions"] = N_BOOT
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    (project_root / "dvc.yaml").write_text("stages: {}\n")
    write_parquet(data["test"], project_root / "data/processed/acute/test.parquet")
    write_parquet(data["truth"], project_root / "data/raw/synthetic/truth.parquet")
    write_parquet(contract.coerce(cohort), project_root / "data/interim/cohort.parquet")
    shutil.copytree(honest["folder"] / "model", project_root / "models/acute")
    shutil.copytree(honest["folder"] / "candidates", project_root / "models/candidates/acute")
    run_id = register_training_run(project_root, honest["champion"].info.estimator_sha256, SEED)

    stage.main("acute")

    folder = project_root / "reports/acute/evaluation"
    payload = json.loads((folder / "metrics.json").read_text())
    assert payload["test"]["n"] == len(data["test"])
    assert payload["external"]["n"] == 27
    assert sorted(p.name for p in (folder / "figures").iterdir()) == [
        "calibration.png", "decision_curve.png", "precision_recall.png", "roc.png",
    ]  # fmt: skip
    assert not (project_root / "reports/acute/cv_metrics.json").exists()  # nothing outside the stage's folder
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["test.auroc"] == pytest.approx(payload["test"]["auroc"])
    assert run.data.metrics["oracle.auroc"] == pytest.approx(payload["oracle"]["auroc"])
    assert run.data.metrics["external.auroc"] == pytest.approx(payload["external"]["auroc"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation/figures")}
    assert "evaluation/figures/roc.png" in artifacts


def test_mlflow_is_skipped_with_a_warning_without_a_store(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluate"):
        assert log_to_mlflow("acute", tmp_path, tmp_path, {"test": {"auroc": 0.7}}, "0" * 64) is None
    assert "no MLflow store" in caplog.text
    assert not (tmp_path / "mlflow.db").exists()  # looking for the store must not create one


def test_mlflow_is_skipped_with_a_warning_without_a_matching_version(tmp_path, mlflow_store, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluate"):
        assert log_to_mlflow("acute", tmp_path, tmp_path, {"test": {"auroc": 0.7}}, "f" * 64) is None
    assert "no registered version of trd-acute" in caplog.text


def test_unknown_subgroup_column_is_a_config_error(data, honest) -> None:
    y, p = champion_scores(data, honest)
    params = eval_params(subgroups={"columns": ["hair_colour"], "age_bands": [18]}).subgroups
    with pytest.raises(ConfigError, match="hair_colour"):
        performance.subgroup_performance(data["test"], y, p, params)
