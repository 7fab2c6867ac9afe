"""Training core on tiny data: every candidate, calibration choice, selection, the gate and the MLflow registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.errors import ConfigError, PipelineError
from pipeline.features import FeatureColumn, FeatureSpec
from pipeline.modelling.bundle import (
    OUTPUT_COLUMN,
    dump_estimator,
    feature_signature,
    load_bundle,
    load_estimator,
    save_bundle,
)
from pipeline.modelling.calibration import CalibratedModel, apply_calibrator, calibrate, fit_calibrator
from pipeline.modelling.candidates import (
    CandidateResult,
    choose_calibration,
    evaluate_candidate,
    fit_final,
    make_estimator,
)
from pipeline.modelling.params import CandidateParams, SelectionParams, TrainParams
from pipeline.modelling.selection import select_champion, selection_table
from pipeline.modelling.training import load_training_inputs, train_task
from pipeline.modelling.validation import internal_validation
from pipeline.stage import StageContext
from pipeline.train import log_to_mlflow


def tiny_params(**overrides) -> TrainParams:
    raw = {
        "cv_folds": 3,
        "selection": {"metric": "log_loss", "rule": "one_se", "simplicity_order": ["logreg", "xgboost", "hist_gb"]},
        "calibration_methods": ["none", "sigmoid", "isotonic"],
        "cv_bootstrap_repetitions": 50,
        "n_jobs": 1,
        "internal_validation": {"bootstrap_repetitions": 20},
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


def test_every_candidate_trains_and_reports_cv_metrics(trained, tiny_data) -> None:
    assert [r.name for r in trained.results] == ["logreg", "xgboost", "hist_gb"]
    for result in trained.results:
        assert 0.0 <= result.cv["cv_auroc_lower"] <= result.cv["cv_auroc"] <= result.cv["cv_auroc_upper"] <= 1.0
        assert result.calibration in ("none", "sigmoid", "isotonic")
        assert ((result.oof > 0) & (result.oof < 1)).all()
    _, y = tiny_data
    assert trained.champion is select_champion(trained.results, y, tiny_params().selection)
    assert set(trained.selection["candidates"]) == {"logreg", "xgboost", "hist_gb"}
    assert trained.selection["candidates"][trained.selection["best_by_metric"]]["margin"] == 0.0


def _selection(rule: str = "one_se", multiplier: float = 1.0) -> SelectionParams:
    return SelectionParams(
        metric="log_loss", rule=rule, se_multiplier=multiplier, simplicity_order=["logreg", "xgboost"]
    )


def _candidates(shift: float) -> tuple[list[CandidateResult], np.ndarray]:
    """Two candidates on the same 2,000 patients, each with its own noise; xgboost's is smaller by ``shift``."""
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-truth))).astype(int)
    noisy, better = truth + rng.normal(0, 1, 2000), truth + rng.normal(0, 1, 2000) * (1 - shift)
    results = [
        CandidateResult("logreg", {}, "none", 1 / (1 + np.exp(-0.6 * noisy)), {}),
        CandidateResult("xgboost", {}, "none", 1 / (1 + np.exp(-0.6 * better)), {}),
    ]
    return results, y


def test_one_se_rule_keeps_the_simpler_candidate_within_one_se_of_the_best() -> None:
    results, y = _candidates(shift=0.08)  # xgboost a little better: a near-tie (0.4 SE)
    table = selection_table(results, y, _selection())
    assert table["best_by_metric"] == "xgboost"
    row = table["candidates"]["logreg"]
    assert 0 < row["margin"] <= row["margin_se"]
    assert select_champion(results, y, _selection()).name == "logreg"
    assert select_champion(results, y, _selection("best")).name == "xgboost"


def test_one_se_rule_takes_the_better_candidate_beyond_one_se() -> None:
    results, y = _candidates(shift=0.5)  # xgboost clearly better
    table = selection_table(results, y, _selection())
    assert table["candidates"]["logreg"]["margin_in_se"] > 1.0
    assert not table["candidates"]["logreg"]["eligible"]
    assert select_champion(results, y, _selection()).name == "xgboost"
    # a wide enough band hands it back to the simpler candidate
    assert select_champion(results, y, _selection(multiplier=5.0)).name == "logreg"


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


def test_the_cv_calibrator_is_the_shipped_calibrator(tiny_data) -> None:
    """One implementation: the calibrator the CV chose (fitted on the selection's out-of-fold probabilities, from
    the same shuffled folds) is the one inside the saved model, and both give the same probabilities."""
    X, y = tiny_data
    for method in ("sigmoid", "isotonic"):
        params = tiny_params(calibration_methods=[method])
        result = evaluate_candidate("xgboost", params.candidates["xgboost"], params, X, y, seed=3)
        assert result.calibration == method
        shipped = fit_final(result, X, y, folds=params.cv_folds, seed=3)
        assert isinstance(shipped, CalibratedModel)
        cv_calibrator = fit_calibrator(method, result.raw_oof, y)
        for key, value in cv_calibrator.items():
            np.testing.assert_allclose(shipped.calibrator[key], value, rtol=0, atol=1e-12) if key != "method" else None
        base = shipped.estimator_.predict_proba(X)[:, 1]
        # the CV's fit-and-apply (choose_calibration's per-fold step) on the same data gives the shipped numbers
        np.testing.assert_allclose(
            shipped.predict_proba(X)[:, 1], calibrate(method, result.raw_oof, y, base), atol=1e-12
        )
        np.testing.assert_allclose(shipped.predict_proba(X)[:, 1], apply_calibrator(cv_calibrator, base), atol=1e-12)
        # the shipped model's own folds are the selection's: recomputing the out-of-fold probabilities agrees
        refit = CalibratedModel(shipped.estimator, method=method, cv_folds=params.cv_folds, seed=3).fit(X, y)
        np.testing.assert_allclose(refit.predict_proba(X), shipped.predict_proba(X), atol=1e-9)


def test_a_different_calibrator_would_be_caught(tiny_data) -> None:
    """The agreement above can fail: a calibrator fitted on other data gives other probabilities."""
    X, y = tiny_data
    params = tiny_params(calibration_methods=["sigmoid"])
    result = evaluate_candidate("xgboost", params.candidates["xgboost"], params, X, y, seed=3)
    shipped = fit_final(result, X, y, folds=params.cv_folds, seed=3)
    base = shipped.estimator_.predict_proba(X)[:, 1]
    other = calibrate("sigmoid", base, y, base)  # fitted in-sample, not out of fold
    assert np.abs(shipped.predict_proba(X)[:, 1] - other).max() > 1e-3


@pytest.mark.parametrize("candidate", ["logreg_spline", "xgboost"])
def test_own_estimators_round_trip_through_skops_with_the_trusted_list(tiny_data, tmp_path, candidate) -> None:
    X, y = tiny_data
    estimator = make_estimator(candidate, seed=0, interactions=[("age", "bmi")])
    if candidate == "xgboost":
        estimator.set_params(n_estimators=20)
    model = CalibratedModel(estimator, method="isotonic", cv_folds=3, seed=0).fit(X, y)
    digest = dump_estimator(model, tmp_path / "m.skops")
    loaded = load_estimator(tmp_path / "m.skops", digest)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_internal_validation_corrects_an_overfitted_model(tiny_data) -> None:
    """Bootstrap optimism: positive for AUROC and slope of a barely regularised model, so the corrected values lie
    below the apparent ones; reproducible; every repetition counted."""
    X, y = tiny_data
    params = tiny_params(internal_validation={"bootstrap_repetitions": 30})
    result = CandidateResult("xgboost", {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.1}, "none",
                             np.full(len(y), 0.4), {})  # fmt: skip
    model = fit_final(result, X, y, folds=3, seed=0)
    first = internal_validation(result, model, X, y, params=params, seed=0)
    assert first["repetitions_used"] + first["repetitions_failed"] == 30
    assert first["auroc"]["optimism"] > 0.05
    assert first["calibration_slope"]["optimism"] > 0.3
    assert first["auroc"]["corrected"] == pytest.approx(first["auroc"]["apparent"] - first["auroc"]["optimism"])
    for name in ("auroc", "calibration_slope", "calibration_in_the_large", "brier"):
        entry = first[name]
        assert entry["corrected_lower"] <= entry["corrected"] <= entry["corrected_upper"], name
    again = internal_validation(result, model, X, y, params=params, seed=0)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in first.items() if k != "seconds"}


def test_bad_train_params_are_refused() -> None:
    with pytest.raises(ValueError, match="risk_bands"):
        tiny_params(risk_bands=[{"name": "a", "upper": 0.6}, {"name": "b", "upper": 0.4}])
    with pytest.raises(ValueError, match="calibration_slope"):
        tiny_params(gate={"min_cv_auroc_lower": 0.5, "calibration_slope": [1.2, 0.8]})
    with pytest.raises(ValueError, match="search_iterations"):
        CandidateParams.model_validate({"search_iterations": 0, "grid": {"C": [1.0]}})
    with pytest.raises(ValueError, match="svm"):
        tiny_params(candidates={"svm": {"search_iterations": 1, "grid": {"C": [1.0]}}})
    with pytest.raises(ValueError, match="simplicity_order must list every candidate"):
        tiny_params(selection={"metric": "log_loss", "rule": "one_se", "simplicity_order": ["logreg"]})
    with pytest.raises(ValueError, match="only logreg_spline takes interactions"):
        tiny_params(
            candidates={"logreg": {"search_iterations": 1, "grid": {"C": [1.0]}, "interactions": [["age", "bmi"]]}},
            selection={"metric": "log_loss", "rule": "best", "simplicity_order": ["logreg"]},
        )
    with pytest.raises(ValueError, match="auroc"):  # the rule needs a per-patient loss
        SelectionParams(metric="auroc", rule="best", simplicity_order=["logreg"])


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


def test_the_bundle_stores_the_pyfunc_entry_point_as_code(trained, tiny_data, tmp_path) -> None:
    """MLflow runs the stored pyfunc.py to load the model; the bundle module has no back-compat pyfunc shim."""
    import pipeline.modelling.bundle as bundle

    model_dir = _save(trained, tmp_path / "acute", tiny_data)
    meta = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    assert meta["flavors"]["python_function"]["model_code_path"] == "pyfunc.py"
    assert (model_dir / "pyfunc.py").read_bytes() == bundle.MODEL_CODE.read_bytes()
    assert not hasattr(bundle, "ResponseModel")  # importing the bundle never imports MLflow's pyfunc


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
    # the whole model's identity, as `trd score` prints it, on the run and on the registered version
    assert set(parents["tags.model_manifest_sha256"]) == {local.manifest_sha256}
    assert tags["model_manifest_sha256"] == local.manifest_sha256
    assert "AUROC" in parents["tags.gate_reasons"].iloc[1]
    # the declared selection rule, the margins and the internal validation are on the run
    assert "paired standard error" in parents["tags.selection_rule"].iloc[0]
    assert "logreg +" in parents["tags.selection_margins"].iloc[0]
    assert parents["metrics.internal_validation.auroc.corrected"].notna().all()
    nested = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert nested["metrics.selection.margin"].notna().all()
    assert nested["tags.git_sha"].notna().all()  # the candidates carry the run tags too (and DVC's, in DVC)
    # the registry says what the model is; the UI opens the model-training view
    assert "trd features" in client.get_registered_model("trd-acute").description
    assert "CV AUROC" in client.get_model_version("trd-acute", decision["version"]).description
    kind = mlflow.get_experiment_by_name("trd-acute").tags[tracking.EXPERIMENT_KIND_TAG]
    assert kind == "custom_model_development"
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


def test_a_small_cohort_prefers_logistic_regression_and_a_failing_candidate_leaves_the_race(tiny_data) -> None:
    """Small-cohort protocol on 80 patients: fewer folds, logistic regression first under one SE, and histogram
    boosting (which cannot bin a column missing for everyone) recorded as failed instead of a traceback."""
    X, y = tiny_data
    X = X.head(80).assign(never_recorded=np.nan)
    y = y[:80]
    declared = tiny_params(
        cv_folds=10,
        min_fold_events=5,
        selection={"metric": "log_loss", "rule": "best", "simplicity_order": ["xgboost", "hist_gb", "logreg"]},
    )
    trained = train_task("acute", "response_acute", X, y, params=declared, seed=3, small_cohort=True)
    smaller = int(min(y.sum(), len(y) - y.sum()))
    assert trained.protocol["cv_folds"] == min(10, smaller // 5) < 10
    assert trained.protocol["small_cohort"] is True
    assert "window shape" in trained.protocol["candidates_failed"]["hist_gb"]
    assert [r.name for r in trained.results] == ["logreg", "xgboost"]
    rows = trained.selection["candidates"]
    # logistic regression wins unless the other beats it by more than one paired SE
    beaten = rows["logreg"]["margin"] > rows["logreg"]["margin_se"]
    assert trained.champion.name == ("xgboost" if beaten else "logreg")
    assert trained.selection["simplicity_order"][0] == "logreg"


def test_training_inputs_need_a_task(project_root) -> None:
    with pytest.raises(ConfigError, match="needs a task"):
        load_training_inputs(StageContext.open())


def test_training_inputs_refuse_a_missing_split_naming_it(project_root) -> None:
    with pytest.raises(PipelineError) as error:
        load_training_inputs(StageContext.open("acute"))
    assert "train.parquet" in str(error.value)
