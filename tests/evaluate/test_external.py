"""External validation on the real cohorts (pipeline.evaluate.external)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline import metrics
from pipeline.evaluate.core import evaluate_task
from pipeline.evaluate.external import external_validation
from pipeline.evaluate.main import write_outputs
from pipeline.features import build_features
from pipeline.modelling.bundle import Bundle
from tests.evaluate.conftest import ACUTE, SEED, champion_scores, eval_params, run

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
