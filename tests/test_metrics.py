"""Tests for pipeline.metrics: against scikit-learn/scipy where they have the metric, hand arithmetic otherwise."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, special, stats
from sklearn.calibration import calibration_curve as sk_calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, confusion_matrix, roc_auc_score

from pipeline import metrics as m
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.metrics import bootstrap

# A small hand-checkable data set used by several tests.
Y4 = np.array([0, 0, 1, 1])
P4 = np.array([0.1, 0.4, 0.35, 0.8])


def simulate(n: int, seed: int, *, slope: float = 1.2, shift: float = -0.2) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from the predicted probabilities themselves: y ~ Bernoulli(p), a perfectly calibrated p."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(shift, slope, n)
    p = special.expit(lp)
    return rng.binomial(1, p).astype(float), p


# ----------------------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------------------

SCALAR_METRICS = [
    m.auroc,
    m.auprc,
    m.brier_score,
    m.scaled_brier_score,
    m.observed_minus_expected,
    m.calibration_in_the_large,
    m.calibration_slope,
    m.expected_calibration_error,
    m.logistic_recalibration,
    m.calibration_curve,
    m.performance_summary,
]


@pytest.mark.parametrize("metric", SCALAR_METRICS, ids=lambda f: f.__name__)
def test_every_metric_rejects_mismatched_lengths(metric) -> None:
    with pytest.raises(PipelineError, match=r"'y' has 4, 'p' has 3"):
        metric(Y4, P4[:3])


@pytest.mark.parametrize(
    ("y", "p", "column", "row", "pattern"),
    [
        ([0, 1, 2, 0], P4, "y", 2, r"binary outcome coded 0/1; position 2 \(0-based\) is 2\.0"),
        ([0, 1, 0.5, 0], P4, "y", 2, r"binary outcome"),
        ([0, 1, np.nan, 0], P4, "y", 2, r"missing or non-finite"),
        (Y4, [0.1, 1.2, 0.3, 0.4], "p", 1, r"probability in \[0, 1\]; position 1 \(0-based\) is 1\.2"),
        (Y4, [0.1, -0.01, 0.3, 0.4], "p", 1, r"outside \[0, 1\]"),
        (Y4, [0.1, 0.2, 0.3, np.inf], "p", 3, r"non-finite"),
        (Y4, [np.nan, 0.2, 0.3, 0.4], "p", 0, r"missing"),
    ],
)
def test_bad_values_are_reported_with_their_position(y, p, column, row, pattern) -> None:
    with pytest.raises(PipelineError, match=pattern) as info:
        m.auroc(y, p)
    assert info.value.column == column
    assert info.value.row == row
    assert info.value.exit_code == ExitCode.INPUT


def test_text_empty_and_two_dimensional_inputs_are_rejected() -> None:
    with pytest.raises(PipelineError, match="must be numeric"):
        m.brier_score(np.array(["0", "1"]), [0.2, 0.3])
    with pytest.raises(PipelineError, match="must be numeric"):
        m.brier_score(pd.Series(["no", "yes"]), [0.2, 0.3])
    with pytest.raises(PipelineError, match="empty"):
        m.brier_score([], [])
    with pytest.raises(PipelineError, match="one-dimensional"):
        m.brier_score(np.zeros((2, 2)), np.zeros((2, 2)))


def test_pandas_nullable_missing_value_is_caught() -> None:
    y = pd.Series([0, 1, pd.NA, 1], dtype="Int64")
    with pytest.raises(PipelineError, match="position 2"):
        m.brier_score(y, P4)


def test_pandas_and_boolean_inputs_are_accepted() -> None:
    y_bool = pd.Series(Y4.astype(bool))
    assert m.auroc(y_bool, pd.Series(P4)) == pytest.approx(m.auroc(Y4, P4))


@pytest.mark.parametrize(
    "call",
    [
        lambda: m.threshold_table(Y4, P4, [0.2, 1.5]),
        lambda: m.threshold_table(Y4, P4, []),
        lambda: m.decision_curve(Y4, P4, [np.nan]),
        lambda: m.expected_calibration_error(Y4, P4, n_bins=0),
        lambda: m.expected_calibration_error(Y4, P4, strategy="equal"),
        lambda: m.calibration_curve(Y4, P4, level=1.0),
        lambda: m.bootstrap_ci(Y4, P4, n_boot=0),
        lambda: m.bootstrap_ci(Y4, P4, seed=-1),
        lambda: m.bootstrap_ci(Y4, P4, level=95),
        lambda: m.logistic_recalibration(Y4, P4, clip=0.0),
        lambda: m.spearman_ci([1, 2, 3, 4], [1, 2, 3, 4], se_method="pearson"),
        lambda: m.subgroup_table(pd.DataFrame({"y": Y4, "p": P4, "g": 1}), "g", min_cell=-1),
    ],
)
def test_bad_settings_raise_config_error(call) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.exit_code == ExitCode.CONFIG


def test_paired_bootstrap_checks_the_second_score() -> None:
    with pytest.raises(PipelineError) as info:
        m.paired_bootstrap_difference(Y4, P4, [0.1, 0.2, 1.3, 0.4], n_boot=10)
    assert info.value.column == "p2"
    with pytest.raises(PipelineError, match="'p2' has 3"):
        m.paired_bootstrap_difference(Y4, P4, [0.1, 0.2, 0.3], n_boot=10)


# ----------------------------------------------------------------------------------------------------------------
# Discrimination and overall performance
# ----------------------------------------------------------------------------------------------------------------


def test_auroc_hand_case() -> None:
    # Event/non-event pairs (0.35, 0.1) win, (0.35, 0.4) lose, (0.8, 0.1) and (0.8, 0.4) win: 3 of 4 pairs.
    assert m.auroc(Y4, P4) == pytest.approx(0.75)
    # A tie counts 1/2.
    assert m.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_discrimination_matches_scikit_learn_with_ties() -> None:
    y, p = simulate(500, seed=1)
    p = np.round(p, 2)  # many ties
    assert m.auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m.auprc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_discrimination_is_nan_not_an_error_when_a_class_is_missing() -> None:
    assert math.isnan(m.auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(m.auroc([0, 0], [0.2, 0.5]))
    assert math.isnan(m.auprc([0, 0], [0.2, 0.5]))
    assert math.isnan(m.scaled_brier_score([1, 1], [0.2, 0.5]))


def test_brier_and_scaled_brier_hand_case() -> None:
    # (0.1² + 0.4² + 0.65² + 0.2²) / 4 = (0.01 + 0.16 + 0.4225 + 0.04) / 4 = 0.158125
    assert m.brier_score(Y4, P4) == pytest.approx(0.158125)
    # Null Brier = φ(1 − φ) = 0.25, so the scaled Brier is 1 − 0.158125 / 0.25 = 0.3675.
    assert m.scaled_brier_score(Y4, P4) == pytest.approx(0.3675)


def test_scaled_brier_is_zero_for_the_prevalence_forecast_and_one_for_a_perfect_one() -> None:
    y = np.array([0, 1, 1, 0, 0, 0, 1, 0])
    assert m.scaled_brier_score(y, np.full(8, y.mean())) == pytest.approx(0.0, abs=1e-12)
    assert m.scaled_brier_score(y, y) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_metrics_do_not_depend_on_row_order(data) -> None:
    n = data.draw(st.integers(4, 40))
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=float)
    assume(0 < y.sum() < n)
    value = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.25, 0.5, 1.0]))  # include ties and 0/1
    p = np.array(data.draw(st.lists(value, min_size=n, max_size=n)))
    perm = np.array(data.draw(st.permutations(range(n))))
    for metric in (m.auroc, m.auprc, m.brier_score, m.scaled_brier_score, m.observed_minus_expected):
        assert metric(y[perm], p[perm]) == pytest.approx(metric(y, p), abs=1e-12)
    for strategy in ("uniform", "quantile"):
        assert m.expected_calibration_error(y[perm], p[perm], strategy=strategy) == pytest.approx(
            m.expected_calibration_error(y, p, strategy=strategy), abs=1e-12
        )
    pd.testing.assert_frame_equal(m.threshold_table(y[perm], p[perm], [0.2, 0.5]), m.threshold_table(y, p, [0.2, 0.5]))
    a, b = m.calibration_slope(y[perm], p[perm]), m.calibration_slope(y, p)
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_auroc_flips_with_the_outcome_and_with_the_score(data) -> None:
    n = data.draw(st.integers(2, 30))
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=float)
    assume(0 < y.sum() < n)
    p = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]), min_size=n, max_size=n)))
    value = m.auroc(y, p)
    assert 0 <= value <= 1
    assert m.auroc(1 - y, p) == pytest.approx(1 - value)
    assert m.auroc(y, 1 - p) == pytest.approx(1 - value)


# ----------------------------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------------------------


def test_observed_minus_expected_hand_case() -> None:
    # mean(y) = 0.5, mean(p) = (0.1 + 0.4 + 0.35 + 0.8) / 4 = 0.4125, so O − E = 0.0875.
    assert m.observed_minus_expected(Y4, P4) == pytest.approx(0.0875)


def _negative_loglik(params: np.ndarray, y: np.ndarray, lp: np.ndarray) -> float:
    eta = params[0] + params[1] * lp
    return -float(np.sum(y * special.log_expit(eta) + (1 - y) * special.log_expit(-eta)))


def test_recalibration_matches_an_independent_unpenalised_fit() -> None:
    y, p = simulate(400, seed=2)
    p_model = special.expit(1.4 * special.logit(p) - 0.3)  # deliberately miscalibrated
    fit = m.logistic_recalibration(y, p_model)
    lp = special.logit(p_model)
    ref = optimize.minimize(_negative_loglik, x0=[0.0, 1.0], args=(y, lp), method="BFGS", options={"gtol": 1e-9}).x
    assert fit.intercept == pytest.approx(ref[0], abs=1e-5)
    assert fit.slope == pytest.approx(ref[1], abs=1e-5)
    # scikit-learn agrees once its penalty is switched off (C = inf); its default C = 1 would shrink the slope.
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(lp[:, None], y)
    assert fit.slope == pytest.approx(sk.coef_[0, 0], abs=1e-5)
    assert LogisticRegression().fit(lp[:, None], y).coef_[0, 0] < fit.slope
    assert fit.converged


def test_recalibration_solves_the_score_equations_and_reports_inverse_information_se() -> None:
    y, p = simulate(300, seed=3)
    p_model = np.clip(p * 0.8, 0, 1)
    fit = m.logistic_recalibration(y, p_model)
    lp = special.logit(p_model)
    # Offset model: Σ (y − expit(a + lp)) = 0, i.e. the recalibrated risks reproduce the event count.
    assert np.sum(y - special.expit(fit.calibration_intercept + lp)) == pytest.approx(0, abs=1e-7)
    # Two-parameter model: Σ (y − μ) = 0 and Σ (y − μ)·lp = 0.
    mu = special.expit(fit.intercept + fit.slope * lp)
    assert np.sum(y - mu) == pytest.approx(0, abs=1e-7)
    assert np.sum((y - mu) * lp) == pytest.approx(0, abs=1e-7)
    design = np.column_stack([np.ones_like(lp), lp])
    cov = np.linalg.inv(design.T @ (design * (mu * (1 - mu))[:, None]))
    assert fit.slope_se == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-6)
    assert fit.intercept_se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-6)
    mu0 = special.expit(fit.calibration_intercept + lp)
    assert fit.calibration_intercept_se == pytest.approx(1 / math.sqrt(np.sum(mu0 * (1 - mu0))), rel=1e-6)
    # The scalar helpers return the same numbers.
    assert m.calibration_slope(y, p_model) == pytest.approx(fit.slope)
    assert m.calibration_in_the_large(y, p_model) == pytest.approx(fit.calibration_intercept)


def test_perfectly_calibrated_score_has_slope_one_and_intercept_zero() -> None:
    n = 20_000
    y, p = simulate(n, seed=4)
    lp = special.logit(p)
    # Tolerances from the sample size: 4 standard errors from the Fisher information at the true (a, b) = (0, 1).
    w = p * (1 - p)
    design = np.column_stack([np.ones(n), lp])
    se = np.sqrt(np.diag(np.linalg.inv(design.T @ (design * w[:, None]))))
    fit = m.logistic_recalibration(y, p)
    assert abs(fit.slope - 1) < 4 * se[1]
    assert abs(fit.intercept) < 4 * se[0]
    assert abs(fit.calibration_intercept) < 4 / math.sqrt(w.sum())
    assert abs(m.observed_minus_expected(y, p)) < 4 * math.sqrt(w.sum()) / n
    # ECE of a calibrated score is only binning noise: a few hundredths at most with 2,000 per bin.
    assert m.expected_calibration_error(y, p) < 0.02


@pytest.fixture(scope="module")
def calibrated_large() -> tuple[np.ndarray, np.ndarray]:
    return simulate(50_000, seed=5, slope=1.5, shift=0.0)


def test_squared_probabilities_underpredict_and_are_too_extreme(calibrated_large) -> None:
    y, p = calibrated_large
    fit = m.logistic_recalibration(y, p**2)
    assert fit.calibration_intercept > 0.5  # p² < p: risks under-estimated, so the intercept is positive
    assert m.observed_minus_expected(y, p**2) > 0.1
    assert fit.slope < 0.9  # p² stretches low risks towards 0: predictions too extreme


def test_shifted_logit_moves_the_intercept_not_the_slope(calibrated_large) -> None:
    y, p = calibrated_large
    fit = m.logistic_recalibration(y, special.expit(special.logit(p) - 1.0))
    assert fit.calibration_intercept == pytest.approx(1.0, abs=5 * fit.calibration_intercept_se)
    assert fit.slope == pytest.approx(1.0, abs=5 * fit.slope_se)


def test_overfitted_logit_halves_the_slope(calibrated_large) -> None:
    y, p = calibrated_large
    fit = m.logistic_recalibration(y, special.expit(2.0 * special.logit(p)))
    assert fit.slope == pytest.approx(0.5, abs=5 * fit.slope_se)
    assert fit.calibration_intercept == pytest.approx(0.0, abs=5 * fit.calibration_intercept_se)


def test_recalibration_is_nan_when_no_finite_estimate_exists() -> None:
    p = np.linspace(0.05, 0.95, 20)
    separated = (p > 0.5).astype(float)  # perfect separation: the slope MLE is infinite
    fit = m.logistic_recalibration(separated, p)
    assert not fit.converged
    assert math.isnan(fit.slope)
    # Quasi-complete separation (found by the row-order property test): the single p = 1 patient is an event and
    # the tied p = 0 patients are mixed, so the slope MLE is infinite; it must be NaN in any row order.
    quasi_y, quasi_p = np.array([0, 0, 1, 1, 1]), np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    assert math.isnan(m.calibration_slope(quasi_y, quasi_p))
    assert math.isnan(m.calibration_slope(quasi_y[[0, 1, 2, 4, 3]], quasi_p[[0, 1, 2, 4, 3]]))
    assert math.isnan(m.calibration_slope(np.ones(20), p))  # one class
    assert math.isnan(m.calibration_slope([0, 1, 0, 1], [0.3] * 4))  # constant prediction: slope not identified
    assert math.isfinite(m.calibration_in_the_large([0, 1, 0, 1], [0.3] * 4))


def test_probabilities_of_exactly_zero_or_one_are_clipped() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.0, 0.3, 0.6, 1.0, 0.7, 0.2])
    clipped = np.clip(p, m.PROB_CLIP, 1 - m.PROB_CLIP)
    assert m.calibration_slope(y, p) == pytest.approx(m.calibration_slope(y, clipped), rel=1e-12)
    assert math.isfinite(m.calibration_slope(y, p))
    # Probability-scale metrics use the unclipped value.
    assert m.brier_score(y, p) != m.brier_score(y, clipped)


def test_ece_hand_case() -> None:
    # Two equal-width bins. [0, 0.5]: p̄ = (0.05 + 0.15)/2 = 0.1, ȳ = 0.5, weight 2/4 → 0.5·0.4 = 0.2.
    # (0.5, 1]: p̄ = 0.9, ȳ = 0.5, weight 2/4 → 0.2. ECE = 0.4.
    y = [0, 1, 1, 0]
    p = [0.05, 0.15, 0.85, 0.95]
    assert m.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.4)
    # One bin: |mean(y) − mean(p)| = |0.5 − 0.5| = 0.
    assert m.expected_calibration_error(y, p, n_bins=1) == pytest.approx(0.0)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibration_curve_matches_scikit_learn(strategy) -> None:
    y, p = simulate(700, seed=6)
    curve = m.calibration_curve(y, p, n_bins=8, strategy=strategy)
    prob_true, prob_pred = sk_calibration_curve(y, p, n_bins=8, strategy=strategy)
    np.testing.assert_allclose(curve["observed"], prob_true, atol=1e-12)
    np.testing.assert_allclose(curve["mean_predicted"], prob_pred, atol=1e-12)
    assert curve["n"].sum() == 700
    assert curve["events"].sum() == y.sum()
    # ECE is the n-weighted mean gap of the same bins.
    gap = np.sum(curve["n"] * np.abs(curve["observed"] - curve["mean_predicted"])) / 700
    assert m.expected_calibration_error(y, p, n_bins=8, strategy=strategy) == pytest.approx(gap)


def test_calibration_curve_quantile_bins_are_about_equal_sized_and_ties_stay_together() -> None:
    y, p = simulate(1000, seed=7)
    curve = m.calibration_curve(y, p, n_bins=10)
    assert curve["n"].between(99, 101).all()
    tied = m.calibration_curve([0, 1, 0, 1, 1, 0], [0.2, 0.2, 0.2, 0.2, 0.9, 0.9], n_bins=3)
    assert tied["n"].tolist() == [4, 2]  # the four tied 0.2s cannot be split across bins; empty bins dropped


def test_wilson_interval_hand_case_and_scipy() -> None:
    # 8/10, z = 1.959964: centre = (0.8 + z²/20)/(1 + z²/10) = 0.99208/1.38415 = 0.71675,
    # half = z·sqrt(0.016 + z²/400)/1.38415 = 1.95996·0.16001/1.38415 = 0.22658 → (0.4902, 0.9433).
    lower, upper = m.wilson_ci([8], [10])
    assert lower[0] == pytest.approx(0.4902, abs=1e-4)
    assert upper[0] == pytest.approx(0.9433, abs=1e-4)
    for k, n in [(0, 7), (3, 7), (7, 7), (40, 123)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
        lo, hi = m.wilson_ci(k, n, level=0.9)
        assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high), abs=1e-12)
    lo, hi = m.wilson_ci([0], [0])
    assert math.isnan(lo[0])
    assert math.isnan(hi[0])


def test_calibration_curve_ci_brackets_the_observed_fraction() -> None:
    y, p = simulate(300, seed=8)
    curve = m.calibration_curve(y, p, n_bins=5)
    assert (curve["ci_lower"] <= curve["observed"]).all()
    assert (curve["observed"] <= curve["ci_upper"]).all()


# ----------------------------------------------------------------------------------------------------------------
# Threshold table, net benefit, decision curve
# ----------------------------------------------------------------------------------------------------------------

Y6 = np.array([1, 1, 0, 0, 1, 0])
P6 = np.array([0.9, 0.6, 0.55, 0.2, 0.3, 0.7])


def test_threshold_table_hand_case() -> None:
    # t = 0.25 flags everyone but the 0.2 patient (a non-event): TP = 3, FP = 2, TN = 1, FN = 0.
    row = m.threshold_table(Y6, P6, [0.25]).iloc[0]
    assert (row.tp, row.fp, row.tn, row.fn) == (3, 2, 1, 0)
    assert row.sensitivity == pytest.approx(1.0)  # 3/3
    assert row.specificity == pytest.approx(1 / 3)  # 1/3
    assert row.ppv == pytest.approx(0.6)  # 3/5
    assert row.npv == pytest.approx(1.0)  # 1/1
    assert row.nne == pytest.approx(5 / 3)  # 1/0.6
    assert row.lr_positive == pytest.approx(1.5)  # 1 / (1 − 1/3)
    assert row.lr_negative == pytest.approx(0.0)  # (1 − 1) / (1/3)
    assert row.flagged == pytest.approx(5 / 6)
    # Net benefit = 3/6 − 2/6 · 0.25/0.75 = 0.5 − 1/9 = 0.388889.
    assert row.net_benefit == pytest.approx(0.5 - 1 / 9)
    assert m.net_benefit(Y6, P6, 0.25) == pytest.approx(0.5 - 1 / 9)


def test_a_prediction_equal_to_the_threshold_is_flagged() -> None:
    row = m.threshold_table(Y6, P6, [0.6]).iloc[0]
    assert (row.tp, row.fp) == (2, 1)  # 0.9 and 0.6 (events), 0.7 (non-event)


def test_threshold_table_matches_confusion_matrix() -> None:
    y, p = simulate(400, seed=9)
    thresholds = [0.0, 0.1, 0.33, 0.5, 0.8, 1.0]
    table = m.threshold_table(y, p, thresholds)
    for t, row in zip(thresholds, table.itertuples(), strict=True):
        tn, fp, fn, tp = confusion_matrix(y, p >= t, labels=[0, 1]).ravel()
        assert (row.tp, row.fp, row.tn, row.fn) == (tp, fp, tn, fn)


def test_undefined_ratios_are_nan_not_errors() -> None:
    table = m.threshold_table(Y6, P6, [0.95, 1.0, 0.0])
    above_all = table.iloc[0]  # nobody flagged
    assert math.isnan(above_all.ppv)
    assert math.isnan(above_all.nne)
    assert math.isnan(above_all.lr_positive)  # specificity 1 → 1 − spec = 0
    assert above_all.net_benefit == 0.0
    assert math.isnan(table.iloc[1].net_benefit)  # t = 1: t/(1 − t) undefined
    everyone = table.iloc[2]
    assert math.isnan(everyone.npv)  # nobody test-negative
    assert math.isnan(everyone.lr_negative)  # specificity 0


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_threshold_counts_add_up_and_sensitivity_falls_with_the_threshold(data) -> None:
    n = data.draw(st.integers(2, 40))
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=float)
    p = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    t = np.sort(np.array(data.draw(st.lists(st.floats(0, 1), min_size=1, max_size=10))))
    table = m.threshold_table(y, p, t)
    assert ((table.tp + table.fp + table.tn + table.fn) == n).all()
    assert ((table.tp + table.fn) == y.sum()).all()
    assert (np.diff(table.tp) <= 0).all()
    assert (np.diff(table.fp) <= 0).all()


def test_decision_curve_treat_all_formula() -> None:
    curve = m.decision_curve(Y6, P6, [0.2, 0.5])
    # φ = 3/6. Treat all at t = 0.2: 0.5 − 0.5·(0.2/0.8) = 0.375; at t = 0.5: 0.5 − 0.5·1 = 0.
    np.testing.assert_allclose(curve["net_benefit_treat_all"], [0.375, 0.0])
    assert (curve["net_benefit_treat_none"] == 0).all()
    # Model at t = 0.2 flags everyone (min p = 0.2), so it equals treat-all.
    assert curve["net_benefit_model"].iloc[0] == pytest.approx(0.375)
    # At t = 0.5: TP = 2 (0.9, 0.6), FP = 2 (0.55, 0.7): 2/6 − 2/6·1 = 0.
    assert curve["net_benefit_model"].iloc[1] == pytest.approx(0.0)


def test_decision_curve_default_grid_and_agreement_with_threshold_table() -> None:
    y, p = simulate(300, seed=10)
    curve = m.decision_curve(y, p)
    assert len(curve) == 99
    assert curve["threshold"].iloc[0] == pytest.approx(0.01)
    assert curve["threshold"].iloc[-1] == pytest.approx(0.99)
    table = m.threshold_table(y, p, curve["threshold"])
    np.testing.assert_allclose(curve["net_benefit_model"], table["net_benefit"])


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fast", "reference"),
    [
        (m.auroc, roc_auc_score),
        (m.brier_score, brier_score_loss),
        (m.scaled_brier_score, lambda y, p: 1 - np.mean((p - y) ** 2) / (y.mean() * (1 - y.mean()))),
        (m.observed_minus_expected, lambda y, p: y.mean() - p.mean()),
    ],
    ids=["auroc", "brier", "scaled_brier", "o_minus_e"],
)
@pytest.mark.parametrize("stratify", [True, False])
def test_vectorised_bootstrap_equals_the_per_resample_loop(fast, reference, stratify) -> None:
    y, p = simulate(150, seed=11)
    p = np.round(p, 2)  # ties exercise the tie handling of the vectorised AUROC
    a = m.bootstrap_ci(y, p, fast, n_boot=200, seed=3, stratify=stratify)
    b = m.bootstrap_ci(y, p, reference, n_boot=200, seed=3, stratify=stratify)
    assert a.estimate == pytest.approx(b.estimate, abs=1e-12)
    assert a.lower == pytest.approx(b.lower, abs=1e-12)
    assert a.upper == pytest.approx(b.upper, abs=1e-12)
    assert a.n_boot_used == b.n_boot_used


def test_bootstrap_is_seeded() -> None:
    y, p = simulate(200, seed=12)
    assert m.bootstrap_ci(y, p, n_boot=300, seed=1) == m.bootstrap_ci(y, p, n_boot=300, seed=1)
    assert m.bootstrap_ci(y, p, n_boot=300, seed=1) != m.bootstrap_ci(y, p, n_boot=300, seed=2)


def test_stratified_resamples_always_have_both_classes() -> None:
    # One event in 20: an unstratified resample misses it with probability (19/20)^20 ≈ 0.36.
    y = np.zeros(20)
    y[3] = 1
    p = np.linspace(0.05, 0.6, 20)
    stratified = m.bootstrap_ci(y, p, n_boot=500, seed=0)
    plain = m.bootstrap_ci(y, p, n_boot=500, seed=0, stratify=False)
    assert stratified.n_boot_used == 500
    assert 0.5 * 500 < plain.n_boot_used < 0.8 * 500  # AUROC undefined resamples are skipped and counted
    assert plain.n_boot == 500


def test_bootstrap_with_an_always_undefined_metric_returns_nan_bounds() -> None:
    result = m.bootstrap_ci(Y4, P4, lambda y, p: math.nan, n_boot=20)
    assert result.n_boot_used == 0
    assert math.isnan(result.lower)
    assert math.isnan(result.upper)


def test_bootstrap_accepts_other_metrics_through_the_loop() -> None:
    y, p = simulate(300, seed=13)
    result = m.bootstrap_ci(y, p, m.calibration_slope, n_boot=100, seed=0)
    assert result.lower < result.estimate < result.upper
    assert result.estimate == pytest.approx(m.calibration_slope(y, p))


def test_bootstrap_auroc_ci_covers_the_true_auroc_about_95_percent_of_the_time() -> None:
    # Binormal scores: non-events N(0, 1), events N(μ, 1), so the true AUROC is Φ(μ/√2) exactly.
    mu, n, reps = 1.0, 200, 100
    true_auroc = stats.norm.cdf(mu / math.sqrt(2))
    rng = np.random.default_rng(2024)
    covered = 0
    for rep in range(reps):
        y = rng.binomial(1, 0.4, n).astype(float)
        p = special.expit(rng.normal(mu * y, 1.0))
        ci = m.bootstrap_ci(y, p, n_boot=500, seed=rep)
        covered += ci.lower <= true_auroc <= ci.upper
    # Coverage count ~ Binomial(100, 0.95): mean 95, SD 2.2. 88 is 3 SD below; 100 would flag intervals that are
    # too wide (probability 0.6 % under nominal coverage).
    assert 88 <= covered <= 99, covered


def test_paired_difference_of_a_score_with_itself_is_exactly_zero() -> None:
    y, p = simulate(250, seed=14)
    for metric in (m.auroc, m.brier_score, m.calibration_slope):
        result = m.paired_bootstrap_difference(y, p, p, metric, n_boot=100, seed=0)
        assert (result.estimate, result.lower, result.upper) == (0.0, 0.0, 0.0)
        assert result.share_positive == 0.0
        assert result.n_boot_used == 100


def test_paired_difference_model_versus_oracle() -> None:
    y, oracle = simulate(600, seed=15)
    rng = np.random.default_rng(1015)  # not simulate's seed: the noise must be independent of the truth
    model = np.clip(oracle + rng.normal(0, 0.15, oracle.size), 0, 1)  # a noisier version of the truth
    diff = m.paired_bootstrap_difference(y, oracle, model, n_boot=400, seed=1)
    assert diff.estimate == pytest.approx(m.auroc(y, oracle) - m.auroc(y, model))
    assert diff.lower < diff.estimate < diff.upper
    assert diff.lower > 0  # the oracle discriminates better, and pairing makes that visible
    assert diff.share_positive > 0.975
    # Swapping the scores mirrors the interval.
    swapped = m.paired_bootstrap_difference(y, model, oracle, n_boot=400, seed=1)
    assert swapped.lower == pytest.approx(-diff.upper)
    assert swapped.upper == pytest.approx(-diff.lower)
    assert swapped.share_positive == pytest.approx(1 - diff.share_positive)
    # The paired interval is narrower than the two marginal intervals combined would suggest.
    a = m.bootstrap_ci(y, oracle, n_boot=400, seed=1)
    b = m.bootstrap_ci(y, model, n_boot=400, seed=1)
    assert diff.upper - diff.lower < (a.upper - a.lower) + (b.upper - b.lower)


def test_bootstrap_handles_more_cells_than_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    y, p = simulate(120, seed=16)
    whole = m.bootstrap_ci(y, p, n_boot=50, seed=4)
    monkeypatch.setattr(bootstrap, "_BOOT_CHUNK_CELLS", 120 * 7)  # chunks of 7 resamples
    chunked = m.bootstrap_ci(y, p, n_boot=50, seed=4)
    assert chunked.n_boot_used == 50
    assert abs(chunked.lower - whole.lower) < 0.05  # different draws, same distribution


# ----------------------------------------------------------------------------------------------------------------
# Summary and subgroup table
# ----------------------------------------------------------------------------------------------------------------


def test_performance_summary_agrees_with_the_single_metrics() -> None:
    y, p = simulate(300, seed=17)
    summary = m.performance_summary(y, p)
    assert summary["auroc"] == m.auroc(y, p)
    assert summary["calibration_slope"] == pytest.approx(m.calibration_slope(y, p))
    assert summary["n"] == 300
    assert summary["events"] == y.sum()
    assert all(isinstance(value, float) for value in summary.values())


def _cohort(seed: int = 18) -> pd.DataFrame:
    y, p = simulate(400, seed=seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"y": y, "p": p, "sex": rng.choice(["F", "M"], 400)})
    frame["route"] = "iv"
    frame.loc[:199, "route"] = "intranasal"
    frame.loc[200:204, "route"] = "oral"  # 5 patients: below min_cell
    frame.loc[205:206, "route"] = None  # 2 with unknown route
    return frame


def test_subgroup_values_and_ratios() -> None:
    frame = _cohort()
    table = m.subgroup_table(frame, "sex")
    overall = table.iloc[0]
    assert (overall.group, overall.level, overall.n) == ("overall", "all", 400)
    female = table[table.level == "F"].iloc[0]
    sub = frame[frame.sex == "F"]
    assert female.n == len(sub)
    assert female.events == sub.y.sum()
    assert female.auroc == pytest.approx(roc_auc_score(sub.y, sub.p))
    assert female.o_minus_e == pytest.approx(sub.y.mean() - sub.p.mean())
    assert female.o_e_ratio == pytest.approx(sub.y.mean() / sub.p.mean())
    assert female.auroc_ratio == pytest.approx(female.auroc / overall.auroc)
    assert female.event_rate_ratio == pytest.approx(female.event_rate / overall.event_rate)
    assert not table.suppressed.any()


def test_small_cells_are_suppressed_including_the_secondary_cell() -> None:
    table = m.subgroup_table(_cohort(), "route")
    by_level = table.set_index("level")
    assert by_level.loc["oral", "suppression_reason"] == "n<10"
    assert by_level.loc["(missing)", "suppression_reason"] == "n<10"
    # Two primary cells: their sum (7) can be recovered by subtraction but not either count, so no secondary cell.
    assert not by_level.loc["iv", "suppressed"]
    for level in ("oral", "(missing)"):
        row = by_level.loc[level]
        assert row.suppressed
        assert pd.isna(row.n)
        assert pd.isna(row.events)
        assert np.isnan([row.event_rate, row.auroc, row.o_minus_e, row.auroc_ratio]).all()
    assert table["n"].dtype == "Int64"


def test_a_single_small_cell_forces_secondary_suppression() -> None:
    frame = _cohort()
    frame.loc[205:206, "route"] = "iv"  # only "oral" is now below min_cell
    by_level = m.subgroup_table(frame, "route").set_index("level")
    assert by_level.loc["oral", "suppression_reason"] == "n<10"
    # Otherwise oral's n = overall − intranasal − iv; the smaller remaining level is hidden as well.
    smaller = "iv" if (frame.route == "iv").sum() < (frame.route == "intranasal").sum() else "intranasal"
    assert by_level.loc[smaller, "suppression_reason"] == "secondary"
    assert pd.isna(by_level.loc[smaller, "n"])


def test_small_event_counts_are_suppressed_unless_switched_off() -> None:
    frame = pd.DataFrame({"y": [1] * 3 + [0] * 40 + [1] * 30 + [0] * 30, "p": 0.4, "g": ["a"] * 43 + ["b"] * 60})
    table = m.subgroup_table(frame, "g").set_index("level")
    assert table.loc["a", "suppression_reason"] == "events<10"
    assert table.loc["b", "suppression_reason"] == "secondary"
    lenient = m.subgroup_table(frame, "g", suppress_small_event_counts=False).set_index("level")
    assert lenient.loc["a", "events"] == 3
    assert not lenient.suppressed.any()


def test_min_cell_below_ten_warns_and_then_shows_small_cells() -> None:
    frame = _cohort()
    with pytest.warns(UserWarning, match="only for data that do not identify real individuals"):
        table = m.subgroup_table(frame, "route", min_cell=1, suppress_small_event_counts=False)
    assert table.set_index("level").loc["oral", "n"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.subgroup_table(frame, "route", min_cell=10)


def test_single_class_subgroup_has_nan_auroc() -> None:
    frame = pd.DataFrame({"y": [1, 1, 1, 0, 1, 0], "p": [0.3, 0.6, 0.7, 0.2, 0.9, 0.4], "g": list("aaabbb")})
    with pytest.warns(UserWarning, match="min_cell=0"):
        table = m.subgroup_table(frame, "g", min_cell=0)
    by_level = table.set_index("level")
    assert np.isnan(by_level.loc["a", "auroc"])
    assert by_level.loc["b", "auroc"] == pytest.approx(1.0)  # event 0.9 vs non-events 0.2, 0.4


def test_several_grouping_columns_share_one_overall_row() -> None:
    table = m.subgroup_table(_cohort(), ["sex", "route"])
    assert table.group.tolist().count("overall") == 1
    assert set(table.group) == {"overall", "sex", "route"}
    assert table[table.group == "route"].level.tolist() == ["intranasal", "iv", "oral", "(missing)"]


def test_subgroup_table_input_errors() -> None:
    with pytest.raises(PipelineError, match="column 'site' not found"):
        m.subgroup_table(_cohort(), "site")
    frame = _cohort().rename(columns={"y": "responder"})
    frame.loc[7, "responder"] = 3
    with pytest.raises(PipelineError) as info:
        m.subgroup_table(frame, "sex", y="responder")
    assert info.value.column == "responder"
    assert info.value.row == 7


# ----------------------------------------------------------------------------------------------------------------
# Spearman with a Fisher-z interval
# ----------------------------------------------------------------------------------------------------------------


def test_spearman_hand_case() -> None:
    # Ranks of y = 2, 1, 4, 3, 5 against 1..5: d = (−1, 1, −1, 1, 0), Σd² = 4, rho = 1 − 6·4/(5·24) = 0.8.
    # Bonett-Wright SE = sqrt((1 + 0.32)/2) = 0.81240; atanh(0.8) = 1.09861; 1.95996·0.81240 = 1.59228;
    # CI = tanh(1.09861 ∓ 1.59228) = (−0.45712, 0.99084).
    result = m.spearman_ci([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result.estimate == pytest.approx(0.8)
    assert result.lower == pytest.approx(-0.45712, abs=1e-4)
    assert result.upper == pytest.approx(0.99084, abs=1e-4)
    assert result.n == 5


def test_spearman_matches_scipy_and_the_se_options_nest() -> None:
    rng = np.random.default_rng(19)
    p = rng.uniform(size=60)
    change = -40 * p + rng.normal(0, 15, 60)  # percent MADRS change falls as predicted response rises
    ref = stats.spearmanr(p, change)
    widths = {}
    for method in ("fisher", "fieller", "bonett-wright"):
        result = m.spearman_ci(p, change, se_method=method)
        assert result.estimate == pytest.approx(ref.statistic)
        assert result.p_value == pytest.approx(ref.pvalue)
        assert result.lower < result.estimate < result.upper < 0
        widths[method] = result.upper - result.lower
    assert widths["fisher"] < widths["fieller"]  # SE factor 1 < 1.06
    assert widths["fisher"] < widths["bonett-wright"]  # factor 1 + rho²/2 > 1


def test_spearman_degenerate_inputs() -> None:
    assert math.isnan(m.spearman_ci([1, 2, 3, 4], [5, 5, 5, 5]).estimate)
    three = m.spearman_ci([1, 2, 3], [1, 3, 2])
    assert math.isnan(three.lower)  # n − 3 = 0: no Fisher-z interval
    with pytest.raises(PipelineError, match="'x' has 4, 'y' has 3"):
        m.spearman_ci([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(PipelineError, match="missing"):
        m.spearman_ci([1, 2, np.nan, 4], [1, 2, 3, 4])


# ----------------------------------------------------------------------------------------------------------------
# Riley minimum sample size
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r2", "parameters", "prevalence", "sizes", "epp"),
    [
        # pmsampsize's own tests (cran/pmsampsize tests/testthat/test_bin.R): n for criteria 1, 2, 3 and final.
        (0.288, 24, 0.174, (623, 668, 221, 668), (4.52, 4.84, 1.6, 4.84)),
        (0.55, 24, 0.174, (255, 532, 221, 532), (1.85, 3.86, 1.6, 3.86)),
        (0.288, 36, 0.174, (934, 1002, 221, 1002), (4.51, 4.84, 1.07, 4.84)),
        (0.288, 24, 0.25, (623, 583, 289, 623), (6.49, 6.07, 3.01, 6.49)),
    ],
)
def test_riley_reproduces_pmsampsize(r2, parameters, prevalence, sizes, epp) -> None:
    result = m.riley_sample_size(parameters=parameters, prevalence=prevalence, r2_cs=r2)
    assert (result.n_shrinkage, result.n_r2_difference, result.n_overall_risk, result.n) == sizes
    assert result.epp == pytest.approx(epp[3], abs=0.005)
    assert result.n_shrinkage * prevalence / parameters == pytest.approx(epp[0], abs=0.005)
    assert result.events == pytest.approx(result.n * prevalence)


def test_riley_hand_case_for_a_balanced_outcome() -> None:
    # φ = 0.5: lnL_null/n = ln 0.5, maxR²cs = 1 − 0.5² = 0.75. R²cs = 0.121, P = 10:
    # n₁ = 10 / (−0.1·ln(1 − 0.121/0.9)) = 10 / 0.014438 = 692.6 → 693.
    # S₂ = 0.121 / (0.121 + 0.05·0.75) = 0.763; n₂ = 10 / (−0.237·ln(1 − 0.121/0.763)) = 244.6 → 245.
    # n₃ = (1.96/0.05)²·0.25 = 384.16 → 385.
    result = m.riley_sample_size(parameters=10, prevalence=0.5, r2_cs=0.121)
    assert result.max_r2_cs == pytest.approx(0.75)
    assert result.shrinkage_criterion2 == pytest.approx(0.763)
    assert (result.n_shrinkage, result.n_r2_difference, result.n_overall_risk, result.n) == (693, 245, 385, 693)
    assert result.expected_shrinkage == pytest.approx(0.9)


# docs/literature.md §7c: anticipated C → (R²cs, n for 10, 20, 30 parameters), φ = 0.5.
LITERATURE_TABLE = {
    0.65: (0.069, (1250, 2500, 3750)),
    0.70: (0.121, (693, 1385, 2077)),
    0.75: (0.186, (434, 867, 1300)),
}


@pytest.mark.parametrize("c_statistic", sorted(LITERATURE_TABLE))
def test_riley_reproduces_the_literature_table_from_the_c_statistic(c_statistic) -> None:
    r2_table, sizes = LITERATURE_TABLE[c_statistic]
    for parameters, expected in zip((10, 20, 30), sizes, strict=True):
        result = m.riley_sample_size(parameters=parameters, prevalence=0.5, c_statistic=c_statistic)
        # The table's R²cs came from a 10⁶-patient simulation and is printed to 3 decimals; ours is its exact
        # population limit, so allow 0.0015 on R² and 0.5 % (a handful of patients) on n.
        assert result.r2_cs == pytest.approx(r2_table, abs=0.0015)
        assert result.n == pytest.approx(expected, rel=0.005)
        assert result.events == pytest.approx(result.n * 0.5)


def test_c_statistic_conversion_matches_a_simulation_like_pmsampsize() -> None:
    # pmsampsize's cstat2rsq: LP ~ N(0, 1) in non-events, N(√2·Φ⁻¹(C), 1) in events, logistic fit, 1 − exp(−LR/n).
    c, prevalence, n = 0.72, 0.3, 200_000
    rng = np.random.default_rng(20)
    events = int(prevalence * n)
    lp = np.r_[rng.normal(0, 1, n - events), rng.normal(math.sqrt(2) * stats.norm.ppf(c), 1, events)]
    y = np.r_[np.zeros(n - events), np.ones(events)]
    fit = LogisticRegression(C=np.inf, tol=1e-10).fit(lp[:, None], y)
    eta = fit.intercept_[0] + fit.coef_[0, 0] * lp
    loglik = np.sum(y * special.log_expit(eta) + (1 - y) * special.log_expit(-eta))
    null = events * math.log(prevalence) + (n - events) * math.log(1 - prevalence)
    simulated = 1 - math.exp(-2 * (loglik - null) / n)
    assert m.r2_cox_snell_from_c_statistic(c, prevalence) == pytest.approx(simulated, abs=0.003)


def test_c_statistic_conversion_properties() -> None:
    values = [m.r2_cox_snell_from_c_statistic(c, 0.3) for c in (0.55, 0.65, 0.75, 0.85, 0.95)]
    assert np.all(np.diff(values) > 0)
    assert m.r2_cox_snell_from_c_statistic(0.7, 0.2) == pytest.approx(m.r2_cox_snell_from_c_statistic(0.7, 0.8))


def test_riley_rounding_switch_and_bad_inputs() -> None:
    exact = m.riley_sample_size(parameters=24, prevalence=0.174, r2_cs=0.288, pmsampsize_rounding=False)
    assert exact.max_r2_cs == pytest.approx(0.60321, abs=1e-4)  # 1 − exp(2·(−0.46219)), before rounding to 0.60
    assert exact.shrinkage_criterion2 != round(exact.shrinkage_criterion2, 3)
    with pytest.raises(ConfigError, match="exactly one"):
        m.riley_sample_size(parameters=10, prevalence=0.5)
    with pytest.raises(ConfigError, match="exactly one"):
        m.riley_sample_size(parameters=10, prevalence=0.5, r2_cs=0.1, c_statistic=0.7)
    with pytest.raises(ConfigError, match="Nagelkerke"):
        m.riley_sample_size(parameters=10, prevalence=0.5, r2_cs=0.8)  # above maxR²cs = 0.75
    with pytest.raises(ConfigError, match="prevalence"):
        m.riley_sample_size(parameters=10, prevalence=1.2, r2_cs=0.1)
    with pytest.raises(ConfigError, match="C statistic"):
        m.riley_sample_size(parameters=10, prevalence=0.5, c_statistic=0.4)
    with pytest.raises(ConfigError, match="parameters"):
        m.riley_sample_size(parameters=0, prevalence=0.5, r2_cs=0.1)


def test_batched_auprc_equals_sklearn_on_resamples_with_ties() -> None:
    """The vectorised bootstrap path for AUPRC must equal average_precision_score on each resample."""
    from sklearn.metrics import average_precision_score

    from pipeline.metrics.bootstrap import _auprc_batch

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(5, 60))
        y = (rng.random(n) < 0.4).astype(float)
        p = np.round(rng.random(n), int(rng.integers(1, 3)))  # coarse rounding makes ties
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(4)]).astype(float)
        batched = _auprc_batch(y, p, counts)
        for row, weights in zip(batched, counts, strict=True):
            resample = np.repeat(np.arange(n), weights.astype(int))
            if y[resample].sum() == 0:
                assert np.isnan(row)
            else:
                assert row == pytest.approx(average_precision_score(y[resample], p[resample]), abs=1e-12)


def test_delong_by_hand_and_its_leave_one_out_range() -> None:
    """Placements: events 0.9 -> 1, 0.4 -> 2/3; non-events 0.5 -> 1/2, 0.2 -> 1, 0.1 -> 1. AUROC 5/6,
    variance (1/18)/2 + (1/12)/3 = 1/18. Leaving out the event 0.9 gives 2/3, the event 0.4 gives 1."""
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.5, 0.2, 0.1])
    result = m.delong_ci(y, p, level=0.95)
    assert result.estimate == pytest.approx(5 / 6, abs=1e-12)
    assert result.se == pytest.approx(math.sqrt(1 / 18), abs=1e-12)
    centre, half = math.log(5), 1.959963984540054 * math.sqrt(1 / 18) / (5 / 36)
    expected = (special.expit(centre - half), special.expit(centre + half))
    assert (result.lower, result.upper) == pytest.approx(expected, abs=1e-9)
    assert (result.loo_min, result.loo_max) == pytest.approx((2 / 3, 1.0), abs=1e-12)


def test_delong_refuses_an_interval_with_a_single_event() -> None:
    result = m.delong_ci(np.array([1, 0, 0, 0]), np.array([0.3, 0.1, 0.5, 0.2]))
    assert result.estimate == pytest.approx(2 / 3)
    assert math.isnan(result.lower)
    assert math.isnan(result.upper)
    assert math.isnan(result.se)
