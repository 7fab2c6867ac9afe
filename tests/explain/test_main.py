"""The stage end to end with MLflow (only identifier-free outputs logged), and dvc.yaml."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline.explain import main as stage
from pipeline.explain import types
from pipeline.explain.types import ExplainParams
from pipeline.features import build_features
from pipeline.io import write_parquet
from pipeline.modelling.bundle import OUTPUT_COLUMN, load_bundle, save_bundle
from pipeline.params import read_params_file
from tests.conftest import REPO_ROOT, register_training_run
from tests.explain.conftest import SEED, TASKS, small_params

# --------------------------------------------------------------------------------------------------------------
# the stage end to end, with MLflow, and dvc.yaml
# --------------------------------------------------------------------------------------------------------------


def test_main_writes_both_outputs_and_logs_only_the_reports_to_the_training_run(
    project_root, mlflow_store, split, models, planted, contributions, spec
) -> None:
    train, test = split
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["explain"] = small_params(example_patients=1, dependence_top_k=0).model_dump(mode="json")
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    (project_root / "dvc.yaml").write_text("stages: {}\n")
    write_parquet(test, project_root / "data/processed/acute/test.parquet")
    (project_root / "data/raw/synthetic").mkdir(parents=True)
    (project_root / "data/raw/synthetic/planted_effects.json").write_text(json.dumps(planted))
    write_parquet(contributions, project_root / "data/raw/synthetic/true_contributions.parquet")
    champion = models[("xgboost", "none")]
    example = build_features(train.head(5), spec)
    info = json.loads(champion.info.model_dump_json())
    info.pop("estimator_sha256")
    save_bundle(
        project_root / "models/acute", estimator=champion.estimator, feature_spec=spec, info_fields=info,
        signature=mlflow.models.infer_signature(example, pd.DataFrame({OUTPUT_COLUMN: [0.0] * 5})),
        input_example=example,
    )  # fmt: skip
    sha256 = load_bundle(project_root / "models/acute").info.estimator_sha256
    run_id = register_training_run(project_root, sha256, SEED)
    client = MlflowClient()

    stage.main("acute")

    folder = project_root / "reports/acute/explain"
    payload = json.loads((folder / "fidelity.json").read_text())
    assert payload["n_explained"] == len(test)
    per_patient = pd.read_parquet(project_root / "data/explanations/acute/shap.parquet")
    assert len(per_patient) == len(test)
    assert "patient_id" in per_patient.columns
    run_data = client.get_run(run_id).data
    for key in ("patient_correlation_median", "rank_spearman_true", "noise_share"):
        assert run_data.metrics[f"explain.fidelity.{key}"] == pytest.approx(payload["fidelity"][key])
    logged = {a.path for a in client.list_artifacts(run_id, "explain")}
    assert {"explain/fidelity.json", "explain/importance.csv", "explain/figures"} <= logged
    figures_logged = {a.path for a in client.list_artifacts(run_id, "explain/figures")}
    assert "explain/figures/beeswarm.png" in figures_logged
    every = [a.path for a in client.list_artifacts(run_id)]
    assert not [p for p in every if "shap.parquet" in p or "explanations" in p]  # per-patient values never logged


def test_dvc_yaml_declares_the_stage_and_its_metrics_for_every_task() -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["explain"]
    assert stage["foreach"] == "${tasks}"
    assert stage["do"]["cmd"] == "python -m pipeline explain ${key}"
    assert stage["do"]["params"] == [p.replace("{task}", "${key}") for p in types.PARAMS_USED]
    assert stage["do"]["outs"] == ["reports/${key}/explain", "data/explanations/${key}"]
    deps = stage["do"]["deps"]
    for needed in (
        "pipeline/explain", "pipeline/modelling", "models/${key}", "data/processed/${key}/test.parquet",
        "data/raw/synthetic/planted_effects.json", "data/raw/synthetic/true_contributions.parquet",
    ):  # fmt: skip
        assert needed in deps
    # the per-patient out must not overlap the split stage's data/processed/<task>
    assert not any(out.startswith("data/processed") for out in stage["do"]["outs"])
    for task in TASKS.root:
        assert f"reports/{task}/explain/headline.json" in dvc["metrics"]
        assert f"reports/{task}/explain/figures" in dvc["plots"]


def test_course_early_leaves_madrs_baseline_out_of_fidelity() -> None:
    params = ExplainParams.model_validate(read_params_file(REPO_ROOT / "params.yaml")["explain"])
    assert "madrs_baseline" in params.fidelity_exclude.get("course_early", ())
    assert set(params.fidelity_exclude) <= set(TASKS.root)
