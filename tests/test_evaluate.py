"""Evaluate stage on tiny fixtures: metrics agree with pipeline.metrics, the oracle catches leakage, small cells
are suppressed, external validation counts and signs are right, outputs are identifier-free and byte-stable, and
dvc.yaml declares what the stage writes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import evaluate, metrics
from pipeline.errors import ConfigError, PipelineError
from pipeline.evaluate import (
    CHAMPION,
    EvaluateParams,
    Evaluation,
    age_bands,
    evaluate_task,
    external_validation,
    flatten_metrics,
    json_ready,
    load_candidates,
    log_to_mlflow,
    write_outputs,
)
from pipeline.features import FeatureColumn, FeatureSpec, build_features, build_target
from pipeline.io import write_parquet
from pipeline.modelling.bundle import OUTPUT_COLUMN, Bundle, load_bundle, save_bundle
from pipeline.modelling.params import TrainParams
from pipeline.modelling.training import save_candidates, train_task
from pipeline.params import read_params_file
from pipeline.tasks import TasksParams, task_predictors
from tests.conftest import REPO_ROOT, register_training_run

SEED = 11
N_BOOT = 200
SITES = ("north", "east", "south")
TINY_SITE = "tiny"  # few test patients: its subgroup row must be suppressed
TASKS = TasksParams.model_validate(read_params_file(REPO_ROOT / "params.yaml")["tasks"])
ACUTE = TASKS.get("acute")


def eval_params(**overrides) -> EvaluateParams:
    raw = read_params_file(REPO_ROOT / "params.yaml")["evaluate"]
    raw = {**raw, "bootstrap_repetitions": N_BOOT, **overrides}
    return EvaluateParams.model_validate(raw)


def tiny_train_params() -> TrainParams:
    return TrainParams.model_validate(
        {
            "cv_folds": 3,
            "selection": {"metric": "log_loss", "rule": "best", "simplicity_order": ["logreg", "xgboost"]},
            "calibration_methods": ["none"],
            "cv_bootstrap_repetitions": 50,
            "n_jobs": 1,
            "internal_validation": {"bootstrap_repetitions": 20},
            "candidates": {
                "logreg": {"search_iterations": 1, "grid": {"C": [1.0]}},
                "xgboost": {"search_iterations": 1, "grid": {"n_estimators": [40], "max_depth": [2]}},
            },
            "gate": {"min_cv_auroc_lower": 0.5, "calibration_slope": [0.5, 2.0]},
            "risk_bands": [{"name": "low", "upper": 0.4}, {"name": "high", "upper": 1.0}],
        }
    )


# --------------------------------------------------------------------------------------------------------------
# fixtures: a tiny synthetic cohort with its truth, a fabricated mini "real" cohort, honest and leaky models
# --------------------------------------------------------------------------------------------------------------


def synthetic_cohort(contract, n: int = 600) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical synthetic rows and their truth (true P(response_acute)); the first 400 train, the rest test."""
    rng = np.random.default_rng(5)
    frame = contract.empty_frame(n)
    frame["patient_id"] = [f"syn-{i:06d}" for i in range(1, n + 1)]
    frame["cohort"] = "synthetic"
    site = rng.choice(SITES, n)
    site[400:406] = TINY_SITE  # six test patients from a tiny site
    frame["site"] = site
    frame["age"] = rng.uniform(18, 80, n).round(1)
    frame["sex"] = rng.choice(["F", "M"], n)
    frame["bmi"] = rng.normal(28, 5, n).clip(15, 60)
    frame["madrs_baseline"] = rng.integers(20, 50, n).astype(float)
    frame["route"] = rng.choice(["iv_racemic", "intranasal_esketamine"], n)
    frame["dose"] = 0.5
    frame["psychotherapy"] = rng.choice(["none", "supportive"], n)
    frame["n_failed_trials"] = rng.integers(2, 8, n)
    logit = (
        -0.3
        - 0.05 * (frame["age"] - 45)
        - 0.25 * (frame["n_failed_trials"].astype(float) - 4)
        + 0.6 * (frame["route"] == "iv_racemic")
    )
    p_true = 1 / (1 + np.exp(-logit.to_numpy(dtype=float)))
    frame["response_acute"] = rng.random(n) < p_true
    truth = pd.DataFrame(
        {"patient_id": frame["patient_id"].to_numpy(dtype=object), "p_response_acute": p_true, "p_response_end": 0.4}
    )
    return contract.coerce(frame), truth


def real_cohort(contract, champion: Bundle) -> pd.DataFrame:
    """A fabricated mini ds005917: 33 patients, 27 with a known acute response (6 responders), 26 with a known
    placebo response (1 responder); only the columns the real cohort records. Outcomes are set from the model's
    own ranking, so the expected AUROC (1) and Spearman sign (-1) are known exactly."""
    n = 33
    rng = np.random.default_rng(9)
    frame = contract.empty_frame(n)
    frame["patient_id"] = [f"sub-NIMH{i:03d}" for i in range(1, n + 1)]
    frame["cohort"] = "ds005917"
    frame["site"] = "nimh"
    frame["age"] = np.linspace(20, 64, n).round(1)
    frame["sex"] = np.where(np.arange(n) % 2, "F", "M")
    frame["bmi"] = rng.normal(29, 4, n)
    frame["madrs_baseline"] = rng.integers(22, 45, n).astype(float)
    frame["route"] = "iv_racemic"
    frame["dose"] = 0.5
    frame["n_sessions"] = 1
    frame["psychotherapy"] = "none"
    frame = contract.coerce(frame)
    p = champion.predict(build_features(frame, champion.feature_spec))
    known = np.arange(n) < 27  # the last six have no day-2 rating
    order = np.argsort(p[known], kind="stable")  # ascending predicted probability
    pct = np.full(n, np.nan)
    pct_known = np.empty(27)
    pct_known[order] = np.r_[np.linspace(0, -45, 21), np.linspace(-55, -90, 6)]  # higher p, larger drop
    pct[known] = pct_known
    frame["madrs_pct_change_acute"] = pct
    frame["madrs_acute"] = frame["madrs_baseline"] * (1 + pct / 100)
    frame["response_acute"] = pd.array(np.where(known, pct <= -50, None), dtype="boolean")
    placebo_known = np.arange(n) < 26
    frame["madrs_placebo_acute"] = np.where(placebo_known, frame["madrs_baseline"] * rng.uniform(0.6, 1.05, n), np.nan)
    placebo_response = np.zeros(n, dtype=bool)
    placebo_response[3] = True
    frame.loc[3, "madrs_placebo_acute"] = frame.loc[3, "madrs_baseline"] * 0.4
    frame["response_placebo_acute"] = pd.array(np.where(placebo_known, placebo_response, None), dtype="boolean")
    return contract.coerce(frame)


def _save_model(folder: Path, trained, spec: FeatureSpec, candidate: str) -> Bundle:
    result = next(r for r in trained.results if r.name == candidate)
    info = {
        "task": "acute", "target": spec.target, "candidate": candidate, "calibration": result.calibration,
        "risk_bands": [{"name": "low", "upper": 0.4}, {"name": "high", "upper": 1.0}],
        "training_data_sha256": "0" * 64, "n_train": trained.n_train, "registered_model_name": "trd-acute",
        "package_version": "test",
    }  # fmt: skip
    signature = mlflow.models.infer_signature(trained.example, pd.DataFrame({OUTPUT_COLUMN: [0.0] * 5}))
    save_bundle(
        folder / "model", estimator=trained.candidate_estimators[candidate], feature_spec=spec, info_fields=info,
        signature=signature, input_example=trained.example,
    )  # fmt: skip
    save_candidates(trained, folder / "candidates")
    return load_bundle(folder / "model")


@pytest.fixture(scope="module")
def data(contract):
    cohort, truth = synthetic_cohort(contract)
    return {"train": cohort.iloc[:400].reset_index(drop=True), "test": cohort.iloc[400:].reset_index(drop=True),
            "truth": truth}  # fmt: skip


@pytest.fixture(scope="module")
def honest(contract, data, tmp_path_factory):
    """A model on the acute task's real predictors; the logistic regression is made the champion."""
    spec = FeatureSpec.from_columns("acute", "response_acute", task_predictors(ACUTE, contract))
    X, y = build_features(data["train"], spec), build_target(data["train"], spec)
    trained = train_task("acute", "response_acute", X, y, params=tiny_train_params(), seed=SEED)
    folder = tmp_path_factory.mktemp("honest")
    champion = _save_model(folder, trained, spec, "logreg")
    return {"folder": folder, "champion": champion, "candidates": load_candidates(folder / "candidates")}


@pytest.fixture(scope="module")
def cohort(contract, data, honest):
    return pd.concat([data["train"], data["test"], real_cohort(contract, honest["champion"])], ignore_index=True)


@pytest.fixture(scope="module")
def evaluation(data, honest, cohort) -> Evaluation:
    return run(data["test"], honest["champion"], honest["candidates"], data["truth"], cohort)


@pytest.fixture(scope="module")
def written(evaluation, tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("first") / "evaluation", tmp_path_factory.mktemp("second") / "evaluation"
    write_outputs(evaluation, first)
    write_outputs(evaluation, second)
    return first, second


def run(test, champion, candidates, truth, cohort, seed: int = SEED) -> Evaluation:
    return evaluate_task(
        "acute", ACUTE, test, champion=champion, candidates=candidates, truth=truth, cohort=cohort,
        params=eval_params(), seed=seed,
    )  # fmt: skip


def champion_scores(data, honest) -> tuple[np.ndarray, np.ndarray]:
    spec = honest["champion"].feature_spec
    return build_target(data["test"], spec), honest["champion"].predict(build_features(data["test"], spec))


# --------------------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------------------


def test_params_section_parses_and_refuses_bad_values() -> None:
    params = eval_params()
    grid = params.decision_curve.grid()
    assert grid[0] == params.decision_curve.start
    assert grid[-1] == params.decision_curve.stop
    with pytest.raises(ValueError, match="thresholds"):
        eval_params(thresholds=[0.5, 0.3])
    with pytest.raises(ValueError, match="age_bands"):
        eval_params(subgroups={"columns": ["sex"], "age_bands": [50, 18]})
    with pytest.raises(ValueError, match="identifier"):
        eval_params(subgroups={"columns": ["patient_id"], "age_bands": [18]})
    with pytest.raises(ValueError, match="extra"):
        eval_params(bootstrap_reps=100)


def test_age_bands_use_completed_years() -> None:
    bands = age_bands(pd.Series([18.0, 34.9, 35.0, 64.9, 65.0, 90.0, np.nan]), (18, 35, 50, 65))
    assert bands.astype("string").tolist() == ["18-34", "18-34", "35-49", "50-64", "65+", "65+", pd.NA]


# --------------------------------------------------------------------------------------------------------------
# test split
# --------------------------------------------------------------------------------------------------------------


def test_test_metrics_equal_pipeline_metrics_on_the_same_inputs(evaluation, data, honest) -> None:
    y, p = champion_scores(data, honest)
    test = evaluation.metrics["test"]
    assert test["n"] == len(y)
    assert test["events"] == int(y.sum())
    assert test["auroc"] == pytest.approx(metrics.auroc(y, p), abs=1e-12)
    assert test["auprc"] == pytest.approx(metrics.auprc(y, p), abs=1e-12)
    assert test["brier"] == pytest.approx(metrics.brier_score(y, p), abs=1e-12)
    assert test["scaled_brier"] == pytest.approx(metrics.scaled_brier_score(y, p), abs=1e-12)
    assert test["calibration_in_the_large"] == pytest.approx(metrics.calibration_in_the_large(y, p), abs=1e-9)
    assert test["calibration_slope"] == pytest.approx(metrics.calibration_slope(y, p), abs=1e-9)
    assert test["ece"] == pytest.approx(metrics.expected_calibration_error(y, p), abs=1e-12)
    ci = metrics.bootstrap_ci(y, p, metrics.auroc, n_boot=N_BOOT, seed=SEED)
    assert (test["auroc_lower"], test["auroc_upper"]) == pytest.approx((ci.lower, ci.upper), abs=1e-12)
    assert test["auroc_lower"] < test["auroc"] < test["auroc_upper"]
    brier_ci = metrics.bootstrap_ci(y, p, metrics.brier_score, n_boot=N_BOOT, seed=SEED, stratify=False)
    assert (test["brier_lower"], test["brier_upper"]) == pytest.approx((brier_ci.lower, brier_ci.upper), abs=1e-12)
    recal = metrics.logistic_recalibration(y, p)
    assert test["calibration_slope_upper"] - test["calibration_slope"] == pytest.approx(1.959964 * recal.slope_se)
    pd.testing.assert_frame_equal(evaluation.thresholds, metrics.threshold_table(y, p, [0.2, 0.3, 0.4, 0.5, 0.6]))
    expected_curve = metrics.decision_curve(y, p, eval_params().decision_curve.grid())
    pd.testing.assert_frame_equal(evaluation.decision_curves[CHAMPION], expected_curve)


def test_every_candidate_is_scored_and_the_champion_matches_its_candidate(evaluation, data, honest) -> None:
    candidates = evaluation.metrics["test"]["candidates"]
    assert sorted(candidates) == ["logreg", "xgboost"]
    assert candidates["logreg"]["auroc"] == evaluation.metrics["test"]["auroc"]  # logreg is the champion
    assert set(candidates["logreg"]) == set(candidates["xgboost"])
    features = build_features(data["test"], honest["champion"].feature_spec)
    y = build_target(data["test"], honest["champion"].feature_spec)
    p = honest["candidates"]["xgboost"].estimator.predict_proba(features)[:, 1]
    ci = metrics.bootstrap_ci(y, p, metrics.auprc, n_boot=N_BOOT, seed=SEED)
    xgboost = candidates["xgboost"]
    assert (xgboost["auprc"], xgboost["auprc_lower"], xgboost["auprc_upper"]) == pytest.approx(
        (ci.estimate, ci.lower, ci.upper), abs=1e-12
    )
    assert xgboost["calibration_slope"] == pytest.approx(metrics.calibration_slope(y, p), abs=1e-9)
    for numbers in candidates.values():
        assert numbers["auroc_lower"] <= numbers["auroc"] <= numbers["auroc_upper"]
        assert numbers["auprc_lower"] <= numbers["auprc"] <= numbers["auprc_upper"]
        assert {"brier", "scaled_brier", "calibration_in_the_large", "calibration_slope", "ece"} <= set(numbers)
    assert set(evaluation.calibration_curves["model"]) == {"champion", "logreg", "xgboost", "oracle"}


def test_champion_from_another_training_run_is_refused(data, honest, cohort) -> None:
    other = {name: c for name, c in honest["candidates"].items() if name != "logreg"}
    with pytest.raises(PipelineError, match="different training runs"):
        run(data["test"], honest["champion"], other, data["truth"], cohort)


# --------------------------------------------------------------------------------------------------------------
# oracle and leakage
# --------------------------------------------------------------------------------------------------------------


def test_oracle_and_gap_with_a_paired_interval(evaluation, data, honest) -> None:
    y, p = champion_scores(data, honest)
    oracle_p = data["truth"]["p_response_acute"].to_numpy()[400:]
    assert evaluation.metrics["oracle"]["auroc"] == pytest.approx(metrics.auroc(y, oracle_p), abs=1e-12)
    assert evaluation.metrics["oracle"]["brier"] == pytest.approx(metrics.brier_score(y, oracle_p), abs=1e-12)
    gap = metrics.paired_bootstrap_difference(y, p, oracle_p, metrics.auroc, n_boot=N_BOOT, seed=SEED)
    numbers = evaluation.metrics["gap"]
    assert (numbers["auroc"], numbers["auroc_lower"], numbers["auroc_upper"]) == pytest.approx(
        (gap.estimate, gap.lower, gap.upper), abs=1e-12
    )
    assert numbers["auroc_lower"] <= 0  # the honest model does not beat the truth
    assert evaluation.report["oracle"]["leakage_check"]["passed"] is True


def test_the_predictors_only_reference_the_labels_and_internal_validation(data, honest, cohort) -> None:
    """The second reference is scored like the first on the same labels; label disagreement with the generator's
    outcome is counted; the train stage's internal validation is copied beside the test figures."""
    y, p = champion_scores(data, honest)
    truth = data["truth"].copy()
    truth["p_response_acute_predictors"] = 0.5 * truth["p_response_acute"] + 0.2  # a flatter reference
    generated = pd.concat([data["train"], data["test"]])["response_acute"].astype(bool).to_numpy().copy()
    generated[[400, 401, 450]] = ~generated[[400, 401, 450]]  # three test labels changed by "cleaning"
    truth["response_acute"] = generated
    internal = {
        "method": "Harrell", "repetitions": 20, "repetitions_used": 19, "n": 400, "events": 150,
        "auroc": {"apparent": 0.7, "optimism": 0.02, "corrected": 0.68, "corrected_lower": 0.63,
                  "corrected_upper": 0.73},
    }  # fmt: skip
    result = evaluate_task(
        "acute", ACUTE, data["test"], champion=honest["champion"], candidates=honest["candidates"], truth=truth,
        cohort=cohort, params=eval_params(oracle_predictors={"acute": "p_response_acute_predictors"}), seed=SEED,
        internal=internal,
    )  # fmt: skip
    reference = truth["p_response_acute_predictors"].to_numpy()[400:]
    numbers = result.metrics["oracle_predictors"]
    assert numbers["auroc"] == pytest.approx(metrics.auroc(y, reference), abs=1e-12)
    assert numbers["brier"] == pytest.approx(metrics.brier_score(y, reference), abs=1e-12)
    gap = metrics.paired_bootstrap_difference(y, p, reference, metrics.auroc, n_boot=N_BOOT, seed=SEED)
    assert result.metrics["gap_predictors"]["auroc"] == pytest.approx(gap.estimate, abs=1e-12)
    assert result.metrics["gap_predictors"]["auroc_lower"] == pytest.approx(gap.lower, abs=1e-12)
    champion = honest["champion"].info.candidate
    candidates = result.metrics["test"]["candidates"]
    assert candidates[champion]["predictors_gap_auroc"] == pytest.approx(gap.estimate, abs=1e-12)
    assert all("predictors_gap_auroc_lower" in row for row in candidates.values())
    assert result.metrics["labels"] == {"n": len(y), "agree": pytest.approx(1 - 3 / len(y)), "disagree": 3}
    assert result.metrics["internal_validation"]["auroc"] == internal["auroc"]
    assert result.metrics["internal_validation"]["repetitions_used"] == 19
    assert "method" not in result.metrics["internal_validation"]  # text stays in evaluation.json
    assert result.report["internal_validation"]["method"] == "Harrell"
    assert result.report["oracle_predictors"]["column"] == "p_response_acute_predictors"


def test_without_the_second_reference_and_internal_validation_nothing_is_invented(evaluation) -> None:
    assert "oracle_predictors" not in evaluation.metrics  # the fixture's truth has no such column
    assert evaluation.report["oracle_predictors"]["available"] is False
    assert "internal_validation" not in evaluation.metrics


def test_a_model_trained_with_the_outcome_as_a_feature_is_caught(contract, data, cohort, tmp_path) -> None:
    predictors = task_predictors(ACUTE, contract)
    leaky_spec = FeatureSpec(
        task="acute",
        target="response_acute",
        columns=(
            *FeatureSpec.from_columns("acute", "response_acute", predictors).columns,
            FeatureColumn(name="response_acute", kind="binary"),  # the outcome itself, leaked into the features
        ),
    )
    X, y = build_features(data["train"], leaky_spec), build_target(data["train"], leaky_spec)
    trained = train_task("acute", "response_acute", X, y, params=tiny_train_params(), seed=SEED)
    champion = _save_model(tmp_path, trained, leaky_spec, trained.champion.name)
    candidates = load_candidates(tmp_path / "candidates")
    with pytest.raises(PipelineError, match=r"possible leakage.*beat the oracle") as caught:
        run(data["test"], champion, candidates, data["truth"], cohort)
    assert "nothing was written" in str(caught.value)


def test_missing_oracle_column_is_reported_not_fatal(data, honest, cohort, tmp_path) -> None:
    truth = data["truth"].drop(columns="p_response_acute")
    result = run(data["test"], honest["champion"], honest["candidates"], truth, cohort)
    assert "oracle" not in result.metrics
    assert "gap" not in result.metrics
    assert result.report["oracle"]["available"] is False
    assert "p_response_acute" in result.report["oracle"]["reason"]
    assert result.report["oracle"]["leakage_check"]["passed"] is None
    write_outputs(result, tmp_path / "evaluation")
    assert (tmp_path / "evaluation/plots/roc/oracle.csv").read_text() == "fpr,tpr\n"


def test_test_patients_missing_from_the_truth_stop_the_stage(data, honest, cohort) -> None:
    truth = data["truth"].iloc[:450]  # only some of the test patients
    with pytest.raises(PipelineError, match="no 'p_response_acute' in the synthetic ground truth"):
        run(data["test"], honest["champion"], honest["candidates"], truth, cohort)


# --------------------------------------------------------------------------------------------------------------
# subgroups
# --------------------------------------------------------------------------------------------------------------


def test_small_subgroup_cells_are_suppressed(evaluation, written) -> None:
    table = evaluation.subgroups
    tiny = table[(table["group"] == "site") & (table["level"] == TINY_SITE)].iloc[0]
    assert bool(tiny["suppressed"])
    assert pd.isna(tiny["n"])
    assert math.isnan(tiny["auroc"])
    assert set(table["group"]) == {"overall", "sex", "age_band", "route", "site", "psychotherapy", "postpartum_onset"}
    overall = table[table["group"] == "overall"].iloc[0]
    assert overall["n"] == evaluation.metrics["test"]["n"]
    visible = table[~table["suppressed"]]
    assert (visible["n"] >= 10).all()
    assert (visible["events"] >= 10).all()
    on_disk = pd.read_csv(written[0] / "subgroups.csv")
    row = on_disk[(on_disk["group"] == "site") & (on_disk["level"] == TINY_SITE)].iloc[0]
    assert pd.isna(row["n"])
    assert pd.isna(row["events"])


def test_lowering_min_cell_warns(data, honest) -> None:
    y, p = champion_scores(data, honest)
    params = eval_params(subgroups={"columns": ["site"], "age_bands": [18], "min_cell": 2}).subgroups
    with pytest.warns(UserWarning, match="min_cell=2"):
        table = evaluate.subgroup_performance(data["test"], y, p, params)
    tiny = table[table["level"] == TINY_SITE].iloc[0]
    assert not tiny["suppressed"]  # six patients, two responders: shown at min_cell 2
    assert tiny["n"] == 6


# --------------------------------------------------------------------------------------------------------------
# external validation
# --------------------------------------------------------------------------------------------------------------


def test_external_validation_counts_and_signs(evaluation, cohort, honest) -> None:
    numbers = evaluation.metrics["external"]
    report = evaluation.report["external_validation"]
    assert report["available"] is True
    assert (numbers["n"], numbers["events"]) == (27, 6)
    real = cohort[cohort["cohort"] == "ds005917"]
    known = real["response_acute"].notna().to_numpy()
    p = honest["champion"].predict(build_features(real, honest["champion"].feature_spec))
    y = real.loc[known, "response_acute"].astype(bool).to_numpy(dtype=int)
    assert numbers["auroc"] == pytest.approx(metrics.auroc(y, p[known])) == 1.0
    assert numbers["auroc_lower"] <= numbers["auroc"]
    rho = metrics.spearman_ci(p[known], real.loc[known, "madrs_pct_change_acute"].to_numpy(dtype=float))
    assert numbers["spearman_rho"] == pytest.approx(rho.estimate) == -1.0  # higher p, larger drop: negative
    assert numbers["spearman_n"] == 27
    assert numbers["observed_minus_expected"] == pytest.approx(y.mean() - p[known].mean())
    assert numbers["calibration_in_the_large"] == pytest.approx(metrics.calibration_in_the_large(y, p[known]))
    control = numbers["negative_control"]
    assert (control["n"], control["events"]) == (26, 1)
    assert math.isnan(control["auroc_lower"])  # one responder: no interval
    assert control["spearman_n"] == 26
    assert "age" in report["features_observed"]
    assert {"n_failed_trials", "crp_mg_l", "anxious_depression"} <= set(report["features_entirely_missing"])
    assert "n_sessions" not in report["features_observed"] + report["features_entirely_missing"]  # excluded
    assert report["missing_value_handling"]["method"] == "median_imputation_with_indicators"
    assert "27 patients with 6 responders" in report["limitations"]
    assert "negative, the expected direction" in report["limitations"]


def test_external_validation_unavailable_when_the_cohort_lacks_the_target(contract, cohort, honest) -> None:
    spec = honest["champion"].feature_spec.model_copy(update={"target": "response_end"})
    bundle = Bundle(honest["champion"].path, honest["champion"].estimator, spec, honest["champion"].info)
    numbers, report = external_validation(cohort, bundle, eval_params(), SEED)
    assert numbers == {}
    assert report["available"] is False
    assert "response_end" in report["reason"]
    _, report = external_validation(cohort[cohort["cohort"] == "synthetic"], honest["champion"], eval_params(), SEED)
    assert report == {"available": False, "reason": "the clean cohort has no 'ds005917' patients"}


def test_every_other_cohort_with_the_target_is_an_external_validation(data, honest, cohort) -> None:
    clinic = data["test"].assign(cohort="clinic_b", patient_id="clin-" + data["test"]["patient_id"].astype(str))
    evaluation = run(data["test"], honest["champion"], honest["candidates"], data["truth"],
                     pd.concat([cohort, clinic], ignore_index=True))  # fmt: skip
    numbers = evaluation.metrics["external_cohorts"]["clinic_b"]
    y, p = champion_scores(data, honest)  # the same patients under other ids
    assert (numbers["n"], numbers["events"]) == (y.size, int(y.sum()))
    assert numbers["auroc"] == pytest.approx(metrics.auroc(y, p), abs=1e-12)
    assert evaluation.report["external_cohorts"]["clinic_b"]["cohort"] == "clinic_b"
    assert evaluation.metrics["external"]["n"] == 27  # the configured cohort is still reported on its own
    assert "synthetic" not in evaluation.metrics["external_cohorts"]  # the development cohort never validates itself


def test_a_development_cohort_is_never_its_own_external_validation(cohort, honest) -> None:
    numbers, report = external_validation(cohort, honest["champion"], eval_params(), SEED, development=("ds005917",))
    assert numbers == {}
    assert report == {"available": False, "reason": "ds005917 is the development cohort of this model"}


def test_without_a_test_split_only_internal_and_external_validation_remain(
    data, honest, cohort, evaluation, tmp_path
) -> None:
    """The small-cohort protocol: an empty test split gives no test numbers, header-only tables, no figure."""
    evaluation_with_test = evaluation
    internal = {"auroc": {"apparent": 0.8, "optimism": 0.1, "corrected": 0.7}, "n": 27, "events": 6}
    evaluation = evaluate_task(
        "acute", ACUTE, data["test"].iloc[:0], champion=honest["champion"], candidates=honest["candidates"],
        truth=data["truth"], cohort=cohort[cohort["cohort"] == "ds005917"], params=eval_params(), seed=SEED,
        internal=internal, development=("synthetic",),
    )  # fmt: skip
    assert evaluation.metrics["test"] == {"n": 0, "events": 0}
    assert evaluation.metrics["internal_validation"]["auroc"]["corrected"] == 0.7
    assert evaluation.metrics["external"]["n"] == 27
    assert not {"oracle", "gap"} & set(evaluation.metrics)
    assert evaluation.report["oracle"]["available"] is False
    assert evaluation.report["test"]["available"] is False
    write_outputs(evaluation, tmp_path / "evaluation")
    for name in ("thresholds.csv", "subgroups.csv", "calibration_curves.csv", "plots/roc/champion.csv"):
        frame = pd.read_csv(tmp_path / "evaluation" / name)
        assert frame.empty
        assert len(frame.columns) >= 2, name  # the header stays
    assert not list((tmp_path / "evaluation" / "figures").iterdir())
    # the same columns as a real subgroup table, so a reader of either file sees one schema
    written = pd.read_csv(tmp_path / "evaluation" / "subgroups.csv").columns.tolist()
    assert written == evaluation_with_test.subgroups.columns.tolist()


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


def test_json_ready_and_flatten() -> None:
    nested = {"a": {"b": np.float64("nan"), "c": np.int64(3), "d": {"e": 0.5}}}
    assert json_ready(nested) == {"a": {"b": None, "c": 3, "d": {"e": 0.5}}}
    assert flatten_metrics(json_ready(nested)) == {"a.c": 3.0, "a.d.e": 0.5}


# --------------------------------------------------------------------------------------------------------------
# dvc.yaml agrees with the stage
# --------------------------------------------------------------------------------------------------------------


def test_dvc_yaml_declares_the_stage_its_metrics_and_plots_for_every_task(written) -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["evaluate"]
    assert stage["foreach"] == "${tasks}"
    assert stage["do"]["cmd"] == "python -m pipeline evaluate ${key}"
    assert stage["do"]["params"] == [p.replace("{task}", "${key}") for p in evaluate.PARAMS_USED]
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
    assert {p.name for p in (folder / "figures").iterdir()} == set(evaluate.FIGURES)


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

    evaluate.main("acute")

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
        evaluate.subgroup_performance(data["test"], y, p, params)


def test_every_task_s_subgroup_table_has_postpartum_onset_and_the_65_plus_band() -> None:
    """Issue 18: postpartum onset and age >= 65 in every task's table (the subgroup params are shared by all tasks),
    with the small-cell suppression applied to them like to any other group."""
    raw = read_params_file(REPO_ROOT / "params.yaml")
    params = EvaluateParams.model_validate(raw["evaluate"])
    rng = np.random.default_rng(11)
    n = 600
    test = pd.DataFrame(
        {
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(18, 76, n).astype(float),
            "route": rng.choice(["iv_racemic", "intranasal_esketamine"], n),
            "site": rng.choice(["a", "b"], n),
            "psychotherapy": rng.choice(["none", "structured_kap"], n),
            "postpartum_onset": np.r_[np.ones(6, dtype=bool), np.zeros(n - 6, dtype=bool)],  # 6 < min_cell
        }
    )
    y = rng.random(n) < 0.4
    table = evaluate.subgroup_performance(test, y, np.full(n, 0.4), params.subgroups)
    assert "65+" in set(table.loc[table["group"] == "age_band", "level"])
    postpartum = table[table["group"] == "postpartum_onset"].set_index("level")
    assert set(postpartum.index) == {"False", "True"}
    assert postpartum.loc["True", "suppressed"]  # 6 patients: suppressed, and its complement with it
    assert postpartum.loc["False", "suppressed"]
    assert set(TasksParams.model_validate(raw["tasks"]).root) >= {"durability", "safety_first_session", "anxiety"}
