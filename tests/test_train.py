"""Training core on tiny data: every candidate, calibration choice, selection, the gate and the MLflow registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.errors import ConfigError
from pipeline.features import FeatureColumn, FeatureSpec
from pipeline.model import OUTPUT_COLUMN, feature_signature, load_bundle, save_bundle
from pipeline.train import (
    CandidateParams,
    CandidateResult,
    TrainParams,
    choose_calibration,
    log_to_mlflow,
    select_champion,
    train_task,
)


def tiny_params(**overrides) -> TrainParams:
    raw = {
        "cv_folds": 3,
        "selection_metric": "log_loss",
        "calibration_methods": ["none", "sigmoid", "isotonic"],
        "cv_bootstrap_repetitions": 50,
        "n_jobs": 1,
        "candidates": {
            "logreg": {"search_iterations": 2, "grid": {"C": [0.1, 1.0]}},
            "xgboost": {"search_iterations": 1, "grid": {"n_estimators": [30], "max_depth": [2]}},
            "hist_gb": {"search_iterations": 1, "grid": {"max_iter": [30], "max_depth": [2]}},
        },
        "gate": {"min_cv_auroc_lower": 0.55, "calibration_slope": [0.5, 2.0]},
        "risk_bands": [{"name": "low", "upper": 0.4}, {"name": "high", "upper": 1.0}],
    }
    raw.update(overrides)
    return TrainParams.model_validate(raw)


@pytest.fixture(scope="module")
def tiny_data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 400
    X = pd.DataFrame({"age": rng.normal(45, 12, n), "bmi": rng.normal(28, 5, n), "noise": rng.normal(size=n)})
    X.loc[rng.random(n) < 0.1, "bmi"] = np.nan  # missing values must be handled by every candidate
    logit = -0.5 + 0.08 * (X["bmi"].fillna(28) - 28) - 0.03 * (X["age"] - 45)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


@pytest.fixture(scope="module")
def trained(tiny_data):
    X, y = tiny_data
    return train_task("acute", "response_acute", X, y, params=tiny_params(), seed=3)


def test_every_candidate_trains_and_reports_cv_metrics(trained) -> None:
    assert [r.name for r in trained.results] == ["logreg", "xgboost", "hist_gb"]
    for result in trained.results:
        assert 0.0 <= result.cv["cv_auroc_lower"] <= result.cv["cv_auroc"] <= result.cv["cv_auroc_upper"] <= 1.0
        assert result.calibration in ("none", "sigmoid", "isotonic")
        assert ((result.oof > 0) & (result.oof < 1)).all()
    assert trained.champion is select_champion(trained.results, "log_loss")


def test_champion_is_chosen_by_the_declared_metric() -> None:
    def result(name: str, log_loss: float, auroc: float) -> CandidateResult:
        return CandidateResult(
            name, {}, "none", np.array([0.5]), {"cv_log_loss": log_loss, "cv_auroc": auroc, "cv_brier": 0.2}
        )

    results = [result("a", 0.60, 0.70), result("b", 0.65, 0.75)]
    assert select_champion(results, "log_loss").name == "a"
    assert select_champion(results, "auroc").name == "b"


def test_calibration_choice_prefers_the_simpler_method_on_calibrated_scores() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 4000)
    y = (rng.random(4000) < p).astype(int)
    method, _, scores = choose_calibration(p, y, ["none", "sigmoid", "isotonic"], folds=5, seed=0)
    assert scores["none"] <= scores["isotonic"]
    squashed = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))  # overconfident: sigmoid must fix it
    method, _, scores = choose_calibration(squashed, y, ["none", "sigmoid"], folds=5, seed=0)
    assert method == "sigmoid"
    assert scores["sigmoid"] < scores["none"]


def test_unknown_hyperparameter_fails_before_fitting(tiny_data) -> None:
    X, y = tiny_data
    params = tiny_params(candidates={"xgboost": {"search_iterations": 1, "grid": {"max_deepth": [2]}}})
    with pytest.raises(ConfigError, match=r"train\.candidates\.xgboost\.grid.*max_deepth"):
        train_task("acute", "response_acute", X, y, params=params, seed=0)


def test_bad_train_params_are_refused() -> None:
    with pytest.raises(ValueError, match="risk_bands"):
        tiny_params(risk_bands=[{"name": "a", "upper": 0.6}, {"name": "b", "upper": 0.4}])
    with pytest.raises(ValueError, match="calibration_slope"):
        tiny_params(gate={"min_cv_auroc_lower": 0.5, "calibration_slope": [1.2, 0.8]})
    with pytest.raises(ValueError, match="search_iterations"):
        CandidateParams.model_validate({"search_iterations": 0, "grid": {"C": [1.0]}})
    with pytest.raises(ValueError, match="svm"):
        tiny_params(candidates={"svm": {"search_iterations": 1, "grid": {"C": [1.0]}}})


def test_gate_passes_and_refuses() -> None:
    good = {"cv_auroc_lower": 0.6, "cv_calibration_slope": 1.0}
    assert tracking.gate_decision(good, 0.55, (0.8, 1.25)) == []
    reasons = tracking.gate_decision({"cv_auroc_lower": 0.5, "cv_calibration_slope": 1.6}, 0.55, (0.8, 1.25))
    assert len(reasons) == 2
    assert "AUROC" in reasons[0]
    assert "slope" in reasons[1]


def _save(trained, folder: Path, tiny_data) -> Path:
    X, _ = tiny_data
    spec = FeatureSpec(
        task="acute",
        target="response_acute",
        columns=tuple(FeatureColumn(name=c, kind="numeric") for c in X.columns),
    )
    info = {
        "task": "acute", "target": "response_acute", "candidate": trained.champion.name,
        "calibration": trained.champion.calibration, "risk_bands": [{"name": "low", "upper": 0.4},
        {"name": "high", "upper": 1.0}], "training_data_sha256": "0" * 64, "n_train": len(X),
        "registered_model_name": "trd-acute", "package_version": "test",
    }  # fmt: skip
    signature = feature_signature(list(X.columns))
    save_bundle(
        folder, estimator=trained.estimator, feature_spec=spec, info_fields=info, signature=signature,
        input_example=trained.example,
    )  # fmt: skip
    return folder


def test_saved_model_has_a_float64_signature_and_returns_probabilities(trained, tiny_data, tmp_path) -> None:
    model_dir = _save(trained, tmp_path / "acute", tiny_data)
    model = mlflow.models.Model.load(str(model_dir))
    assert model.signature is not None
    assert {spec.type.name for spec in model.signature.inputs.inputs} == {"double"}
    assert not any(spec.required for spec in model.signature.inputs.inputs)  # any clinical value may be missing
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    X, _ = tiny_data
    out = pyfunc.predict(X.head(20))
    assert list(out.columns) == [OUTPUT_COLUMN]
    assert out[OUTPUT_COLUMN].between(0, 1).all()
    np.testing.assert_allclose(out[OUTPUT_COLUMN], load_bundle(model_dir).predict(X.head(20)))
    assert not list(model_dir.rglob("*.pkl"))
    assert not list(model_dir.rglob("*.pickle"))


def test_models_saved_with_the_earlier_model_code_still_load(trained, tiny_data, tmp_path) -> None:
    """Registry versions saved before the pyfunc class moved to model_code.py import it from pipeline.model."""
    model_dir = _save(trained, tmp_path / "acute", tiny_data)
    (model_dir / "model_code.py").write_text(
        "import mlflow\n\nfrom pipeline.model import ResponseModel\n\nmlflow.models.set_model(ResponseModel())\n"
    )
    X, _ = tiny_data
    out = mlflow.pyfunc.load_model(str(model_dir)).predict(X.head(20))
    np.testing.assert_allclose(out[OUTPUT_COLUMN], load_bundle(model_dir).predict(X.head(20)))


def test_saving_twice_gives_identical_bytes(trained, tiny_data, tmp_path) -> None:
    first = _save(trained, tmp_path / "one", tiny_data)
    second = _save(trained, tmp_path / "two", tiny_data)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_registry_alias_moves_only_through_the_gate(trained, tiny_data, tmp_path, mlflow_store) -> None:
    X, _ = tiny_data
    model_dir = _save(trained, tmp_path / "acute", tiny_data)
    train_file = tmp_path / "train.parquet"
    train_file.write_bytes(b"stand-in for the split file")
    passing = tiny_params(gate={"min_cv_auroc_lower": 0.0, "calibration_slope": [0.01, 100.0]})
    decision = log_to_mlflow(trained, passing, tmp_path, model_dir, features=X, train_path=train_file, seed=3)
    assert decision["gate_passed"] is True
    client = MlflowClient()
    champion = client.get_model_version_by_alias("trd-acute", "champion")
    assert str(champion.version) == decision["version"]

    refusing = tiny_params(gate={"min_cv_auroc_lower": 0.999, "calibration_slope": [0.99, 1.01]})
    refused = log_to_mlflow(trained, refusing, tmp_path, model_dir, features=X, train_path=train_file, seed=3)
    assert refused["gate_passed"] is False
    assert str(client.get_model_version_by_alias("trd-acute", "champion").version) == decision["version"]
    tags = client.get_model_version("trd-acute", refused["version"]).tags
    assert tags["gate"] == "refused"
    assert "AUROC" in tags["gate_reasons"]

    registry = load_bundle("models:/trd-acute@champion")
    local = load_bundle(model_dir)
    np.testing.assert_array_equal(registry.predict(X), local.predict(X))
    runs = mlflow.search_runs(experiment_names=["trd-acute"])
    parents = runs[runs["tags.mlflow.parentRunId"].isna()].sort_values("start_time")
    assert parents["tags.gate_passed"].tolist() == ["True", "False"]
    assert "AUROC" in parents["tags.gate_reasons"].iloc[1]
    assert len(runs) == 2 * (1 + len(trained.results))  # parent + nested candidates, twice

    # evaluate and explain add to the newest training run of the same estimator, and to no other
    sha = local.info.estimator_sha256
    assert tracking.training_run_to_extend(tmp_path, "acute", sha, "evaluation") == parents["run_id"].iloc[1]
    assert tracking.training_run_to_extend(tmp_path, "acute", "0" * 64, "evaluation") is None


def test_later_stages_skip_mlflow_without_a_store(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a project with no mlflow.db yet
    with caplog.at_level("WARNING"):
        assert tracking.training_run_to_extend(tmp_path, "acute", "0" * 64, "explanations") is None
    assert "explanations not logged to MLflow" in caplog.text
    assert not (tmp_path / "mlflow.db").exists()  # looking must not create a store
