"""The test split, the truth references and the leakage check, subgroups (pipeline.evaluate.core, .performance)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import metrics
from pipeline.errors import PipelineError
from pipeline.evaluate import performance
from pipeline.evaluate.core import evaluate_task
from pipeline.evaluate.main import load_candidates, write_outputs
from pipeline.evaluate.types import CHAMPION, EvaluateParams
from pipeline.features import FeatureColumn, FeatureSpec, build_features, build_target
from pipeline.modelling.training import train_task
from pipeline.params import read_params_file
from pipeline.tasks import TasksParams, task_predictors
from tests.conftest import REPO_ROOT
from tests.evaluate.conftest import (
    ACUTE,
    N_BOOT,
    SEED,
    TINY_SITE,
    champion_scores,
    eval_params,
    run,
    save_model,
    tiny_train_params,
)

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
    champion = save_model(tmp_path, trained, leaky_spec, trained.champion.name)
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
        table = performance.subgroup_performance(data["test"], y, p, params)
    tiny = table[table["level"] == TINY_SITE].iloc[0]
    assert not tiny["suppressed"]  # six patients, two responders: shown at min_cell 2
    assert tiny["n"] == 6


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
    table = performance.subgroup_performance(test, y, np.full(n, 0.4), params.subgroups)
    assert "65+" in set(table.loc[table["group"] == "age_band", "level"])
    postpartum = table[table["group"] == "postpartum_onset"].set_index("level")
    assert set(postpartum.index) == {"False", "True"}
    assert postpartum.loc["True", "suppressed"]  # 6 patients: suppressed, and its complement with it
    assert postpartum.loc["False", "suppressed"]
    assert set(TasksParams.model_validate(raw["tasks"]).root) >= {"durability", "safety_first_session", "anxiety"}
