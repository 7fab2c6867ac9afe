"""Evaluation metrics for clinical prediction models with a binary outcome.

Pure functions: arrays or frames in, floats, frozen dataclasses or DataFrames out. No I/O, no global state; every
random step takes an explicit seed. The evaluate stage and the model card use these functions; the definitions
follow the clinical-prediction literature rather than the machine-learning defaults where the two differ.

Conventions used throughout
---------------------------
* ``y`` is the observed outcome coded 0/1 (1 = response); ``p`` is the predicted probability of ``y = 1``.
* Bad input (different lengths, missing values, a non-binary outcome, a probability outside [0, 1]) raises
  :class:`~pipeline.errors.PipelineError` naming the argument and the first offending position. Bad settings
  (``n_bins``, ``level``, thresholds, ``min_cell``…) raise :class:`~pipeline.errors.ConfigError`.
* A metric that is *undefined* for valid data (AUROC when one class is absent, PPV when nobody is flagged, a
  calibration slope when the recalibration model has no finite maximum-likelihood estimate) is ``NaN``, never an
  error, so that a bootstrap or a subgroup table can count and skip it.
* Logit-based quantities clip probabilities to ``[PROB_CLIP, 1 - PROB_CLIP]`` (1e-6, logits ±13.8) before taking
  logits: a prediction of exactly 0 or 1 would otherwise give an infinite logit, and one such patient could
  dominate the recalibration fit. Metrics on the probability scale (Brier, O − E, ECE, net benefit) are unclipped.
* A patient is *flagged* (test positive) at threshold ``t`` when ``p >= t``.

References
----------
* Steyerberg EW, Vickers AJ, Cook NR, et al. Assessing the performance of prediction models: a framework for
  traditional and novel measures. Epidemiology 2010;21:128-38.
* Van Calster B, McLernon DJ, van Smeden M, et al. Calibration: the Achilles heel of predictive analytics.
  BMC Med 2019;17:230. (Calibration intercept with logit(p) as offset; slope from logit P(y=1) = a + b·logit(p).)
* Vickers AJ, Elkin EB. Decision curve analysis. Med Decis Making 2006;26:565-74. (Net benefit.)
* Riley RD, Ensor J, Snell KIE, et al. Calculating the sample size required for developing a clinical prediction
  model. BMJ 2020;368:m441; Riley RD, Snell KIE, Ensor J, et al. Stat Med 2019;38:1276-96 (Part II).
* Riley RD, Van Calster B, Collins GS. A note on estimating the Cox-Snell R² from a reported C statistic (AUROC)
  to inform sample size calculations for developing a prediction model with a binary outcome. Stat Med
  2021;40:859-64.
* Wilson EB. Probable inference, the law of succession, and statistical inference. JASA 1927;22:209-12.
* Bonett DG, Wright TA. Sample size requirements for estimating Pearson, Kendall and Spearman correlations.
  Psychometrika 2000;65:23-8. (Standard error of Fisher's z for Spearman's rho.)
* Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement. BMJ 2024;385:e078378.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.errors import ConfigError, PipelineError
from pipeline.sample_size import RileySampleSize, r2_cox_snell_from_c_statistic, riley_sample_size  # moved there

__all__ = [
    "DEFAULT_MIN_CELL",
    "PROB_CLIP",
    "BootstrapCI",
    "CorrelationCI",
    "LogisticRecalibration",
    "PairedBootstrapCI",
    "RileySampleSize",
    "auprc",
    "auroc",
    "bootstrap_ci",
    "brier_score",
    "calibration_curve",
    "calibration_in_the_large",
    "calibration_slope",
    "decision_curve",
    "expected_calibration_error",
    "logistic_recalibration",
    "net_benefit",
    "observed_minus_expected",
    "paired_bootstrap_difference",
    "performance_summary",
    "r2_cox_snell_from_c_statistic",
    "riley_sample_size",
    "scaled_brier_score",
    "spearman_ci",
    "subgroup_table",
    "threshold_table",
    "wilson_ci",
]

FloatArray = NDArray[np.float64]
#: A metric as the bootstrap sees it: validated ``(y, p)`` float arrays in, one float out (NaN = undefined).
Metric = Callable[[FloatArray, FloatArray], float]
BinStrategy = Literal["uniform", "quantile"]

#: Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before a logit is taken (logit(1e-6) ≈ -13.8).
PROB_CLIP = 1e-6
#: Small-cell suppression threshold (seismometer ``censor_min_count``); lower values only for synthetic data.
DEFAULT_MIN_CELL = 10

# Newton–Raphson settings for the recalibration fits. Logistic log-likelihoods are concave, so Newton converges
# quadratically from (0, 1) in a handful of steps when the MLE exists; 50 steps that do not converge mean it does
# not (separation) and the estimate is reported as NaN.
_NEWTON_MAX_ITER = 50
_NEWTON_TOL = 1e-10
# Bootstrap index matrices are built in chunks of at most this many cells, so memory stays bounded (~32 MB of
# int64) whatever n_boot × n is.
_BOOT_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------------------


def _to_float_1d(values: ArrayLike, name: str) -> FloatArray:
    """One-dimensional float64 copy of ``values``; rejects text and other non-numeric data."""
    if isinstance(values, pd.Series | pd.Index):
        if not (pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)):
            raise PipelineError(f"'{name}' must be numeric, got dtype {values.dtype}", column=name)
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    raw = np.asarray(values)
    if raw.ndim != 1:
        raise PipelineError(f"'{name}' must be one-dimensional, got shape {raw.shape}", column=name)
    if raw.dtype.kind not in "biuf":
        raise PipelineError(f"'{name}' must be numeric, got dtype {raw.dtype}", column=name)
    return raw.astype(np.float64)


def _first_bad(mask: NDArray[np.bool_]) -> int:
    return int(np.argmax(mask))


def _check_finite(arr: FloatArray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = _first_bad(bad)
        raise PipelineError(
            f"'{name}' has {int(bad.sum())} missing or non-finite value(s); the first is at position {i} "
            f"(0-based): {arr[i]}",
            row=i,
            column=name,
            hint="drop or impute rows with a missing outcome or prediction before evaluating",
        )


def _check_numeric(values: ArrayLike, name: str) -> FloatArray:
    arr = _to_float_1d(values, name)
    if arr.size == 0:
        raise PipelineError(f"'{name}' is empty", column=name, hint="evaluation needs at least one patient")
    _check_finite(arr, name)
    return arr


def _check_same_length(*named: tuple[str, FloatArray]) -> None:
    lengths = {name: arr.size for name, arr in named}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"'{name}' has {size}" for name, size in lengths.items())
        raise PipelineError(f"inputs must have one value per patient, but {detail}")


def _check_outcome(values: ArrayLike, name: str = "y") -> FloatArray:
    y = _check_numeric(values, name)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = _first_bad(bad)
        raise PipelineError(
            f"'{name}' must be a binary outcome coded 0/1; position {i} (0-based) is {y[i]} "
            f"({int(bad.sum())} value(s) not 0/1)",
            row=i,
            column=name,
            hint="code the outcome as 1 = event (response) and 0 = no event",
        )
    return y


def _check_probability(values: ArrayLike, name: str = "p") -> FloatArray:
    p = _check_numeric(values, name)
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = _first_bad(bad)
        raise PipelineError(
            f"'{name}' must be a probability in [0, 1]; position {i} (0-based) is {p[i]} "
            f"({int(bad.sum())} value(s) outside [0, 1])",
            row=i,
            column=name,
            hint="pass predicted probabilities (e.g. predict_proba(...)[:, 1]), not scores, logits or labels",
        )
    return p


def _validate(y: ArrayLike, p: ArrayLike, *, y_name: str = "y", p_name: str = "p") -> tuple[FloatArray, FloatArray]:
    """Checked float copies of an outcome and a probability vector of equal length."""
    y_arr = _check_outcome(y, y_name)
    p_arr = _check_probability(p, p_name)
    _check_same_length((y_name, y_arr), (p_name, p_arr))
    return y_arr, p_arr


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be strictly between 0 and 1, got {level}", hint="use e.g. 0.95")


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"'{name}' must be an integer >= {minimum}, got {value!r}")


def _check_thresholds(thresholds: ArrayLike, name: str = "thresholds") -> FloatArray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.ndim != 1 or t.size == 0:
        raise ConfigError(f"'{name}' must be a non-empty 1-D list of probabilities")
    if not np.all(np.isfinite(t)) or np.any((t < 0) | (t > 1)):
        raise ConfigError(f"'{name}' must lie in [0, 1], got {t.tolist()}")
    return t


def _ratio(num: ArrayLike, den: ArrayLike) -> FloatArray:
    """Elementwise num / den with NaN (not inf, not an error) where den == 0 or either side is NaN."""
    num_arr, den_arr = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.full(num_arr.shape, np.nan)
    np.divide(num_arr, den_arr, out=out, where=den_arr != 0)
    return out


def _logit(p: FloatArray, clip: float = PROB_CLIP) -> FloatArray:
    return special.logit(np.clip(p, clip, 1.0 - clip))


def _both_classes(y: FloatArray) -> bool:
    events = y.sum()
    return 0 < events < y.size


# --------------------------------------------------------------------------------------------------------------
# Discrimination and overall performance
# --------------------------------------------------------------------------------------------------------------


def _auroc(y: FloatArray, p: FloatArray) -> float:
    if not _both_classes(y):
        return math.nan
    return float(roc_auc_score(y, p))


def auroc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (C statistic): P(p_event > p_non-event), ties counting 1/2.

    scikit-learn's ``roc_auc_score``. NaN when only one outcome class is present (the statistic compares events
    with non-events, so it is undefined without both).
    """
    return _auroc(*_validate(y, p))


def _auprc(y: FloatArray, p: FloatArray) -> float:
    if y.sum() == 0:
        return math.nan
    return float(average_precision_score(y, p))


def auprc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision, AP = Σ_k (R_k − R_{k−1})·P_k.

    scikit-learn's ``average_precision_score`` (step-wise, no interpolation). Its no-skill value is the
    prevalence, so report it next to the event rate. NaN when there are no events (recall is undefined).
    """
    return _auprc(*_validate(y, p))


def _brier(y: FloatArray, p: FloatArray) -> float:
    return float(np.mean((p - y) ** 2))


def brier_score(y: ArrayLike, p: ArrayLike) -> float:
    """Brier score, mean of (p − y)²: 0 is perfect; a constant forecast of the prevalence φ scores φ(1 − φ)."""
    return _brier(*_validate(y, p))


def _scaled_brier(y: FloatArray, p: FloatArray) -> float:
    prevalence = y.mean()
    null = prevalence * (1.0 - prevalence)
    if null == 0:
        return math.nan
    return float(1.0 - _brier(y, p) / null)


def scaled_brier_score(y: ArrayLike, p: ArrayLike) -> float:
    """Scaled Brier score (index of prediction accuracy), 1 − Brier / Brier_null.

    Brier_null = φ(1 − φ) is the Brier score of forecasting the observed prevalence φ = mean(y) of the same data
    for everyone. 1 is perfect, 0 is no better than the prevalence, negative is worse. NaN when one class is
    absent (Brier_null = 0).
    """
    return _scaled_brier(*_validate(y, p))


# --------------------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------------------


def _observed_minus_expected(y: FloatArray, p: FloatArray) -> float:
    return float(y.mean() - p.mean())


def observed_minus_expected(y: ArrayLike, p: ArrayLike) -> float:
    """Calibration-in-the-large on the risk scale: mean(y) − mean(p), observed minus expected event rate.

    Positive: the model under-predicts on average; negative: it over-predicts.
    """
    return _observed_minus_expected(*_validate(y, p))


@dataclass(frozen=True)
class _LogisticFit:
    coef: FloatArray
    cov: FloatArray
    converged: bool


def _mle_does_not_exist(y: FloatArray, x: FloatArray | None) -> bool:
    """True when ``logit P(y=1) = a [+ b·x] (+ offset)`` has no finite maximum-likelihood estimate.

    Intercept only: iff one outcome class is absent (the offset does not change this). Intercept and slope: iff
    the data are completely or quasi-completely separated (Albert & Anderson 1984), which for one covariate means
    a cut-point puts every event on one side and every non-event on the other, ties allowed:
    max(x | y=0) <= min(x | y=1) or max(x | y=1) <= min(x | y=0). This also covers a constant x (slope not
    identified). Checked exactly up front, because Newton–Raphson on separated data drifts towards infinity
    while the log-likelihood flattens, and a step-size rule can then stop at an arbitrary, order-dependent value.
    """
    if not _both_classes(y):
        return True
    if x is None:
        return False
    events, nonevents = x[y == 1], x[y == 0]
    return bool(nonevents.max() <= events.min() or events.max() <= nonevents.min())


def _fit_logistic(y: FloatArray, x: FloatArray | None, offset: FloatArray) -> _LogisticFit:
    """Unpenalised maximum-likelihood logistic regression ``logit P(y=1) = a [+ b·x] + offset``.

    Newton–Raphson with step halving. Starts at a = 0 (and b = 1 when x is the logit itself), the values for a
    perfectly calibrated model, so well-calibrated data converge in two or three steps. Data without a finite
    MLE (see :func:`_mle_does_not_exist`), a singular information matrix, or no convergence within
    ``_NEWTON_MAX_ITER`` steps give NaN estimates with ``converged=False``.
    """
    n = y.size
    design = np.ones((n, 1)) if x is None else np.column_stack([np.ones(n), x])
    nan_fit = _LogisticFit(np.full(design.shape[1], np.nan), np.full((design.shape[1],) * 2, np.nan), False)
    if _mle_does_not_exist(y, x):
        return nan_fit
    coef = np.zeros(design.shape[1])
    if x is not None:
        coef[1] = 1.0

    def loglik(eta: FloatArray) -> float:
        return float(np.sum(y * special.log_expit(eta) + (1.0 - y) * special.log_expit(-eta)))

    eta = design @ coef + offset
    current = loglik(eta)
    for _ in range(_NEWTON_MAX_ITER):
        mu = special.expit(eta)
        gradient = design.T @ (y - mu)
        hessian = design.T @ (design * (mu * (1.0 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return nan_fit
        if not np.all(np.isfinite(step)):
            return nan_fit
        # Step halving keeps each update an ascent step; with a concave likelihood it is rarely needed.
        for _halving in range(30):
            candidate = coef + step
            cand_eta = design @ candidate + offset
            cand_ll = loglik(cand_eta)
            if cand_ll >= current - 1e-12 * (1.0 + abs(current)):
                break
            step = step / 2.0
        coef, eta, current = candidate, cand_eta, cand_ll
        if np.max(np.abs(step)) < _NEWTON_TOL * (1.0 + np.max(np.abs(coef))):
            mu = special.expit(eta)
            info = design.T @ (design * (mu * (1.0 - mu))[:, None])
            try:
                cov = np.linalg.inv(info)
            except np.linalg.LinAlgError:
                return nan_fit
            return _LogisticFit(coef, cov, True)
    return nan_fit


@dataclass(frozen=True)
class LogisticRecalibration:
    """Logistic recalibration of predicted probabilities (Van Calster et al. 2019), fitted by unpenalised ML.

    Attributes:
        calibration_intercept: ``a`` in ``logit P(y=1) = a + logit(p)`` (logit(p) as an offset, slope fixed to
            1): calibration-in-the-large on the log-odds scale. 0 is ideal; > 0 means risks are under-estimated.
        calibration_intercept_se: its model-based (inverse-information) standard error.
        slope: ``b`` in ``logit P(y=1) = a + b·logit(p)``. 1 is ideal; < 1 means predictions are too extreme
            (typical of overfitting), > 1 too moderate.
        slope_se: its standard error.
        intercept: ``a`` in that same two-parameter model. Not a calibration-in-the-large measure on its own (it
            depends on b); reported because the recalibrated model needs it.
        intercept_se: its standard error.
        n: number of patients.
        converged: False when either fit had no finite MLE (e.g. one outcome class, separation); the affected
            estimates are then NaN.
    """

    calibration_intercept: float
    calibration_intercept_se: float
    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    n: int
    converged: bool


def _logistic_recalibration(y: FloatArray, p: FloatArray, clip: float = PROB_CLIP) -> LogisticRecalibration:
    lp = _logit(p, clip)
    citl = _fit_logistic(y, None, lp)
    full = _fit_logistic(y, lp, np.zeros_like(lp))
    return LogisticRecalibration(
        calibration_intercept=float(citl.coef[0]),
        calibration_intercept_se=float(math.sqrt(citl.cov[0, 0])) if citl.converged else math.nan,
        slope=float(full.coef[1]),
        slope_se=float(math.sqrt(full.cov[1, 1])) if full.converged else math.nan,
        intercept=float(full.coef[0]),
        intercept_se=float(math.sqrt(full.cov[0, 0])) if full.converged else math.nan,
        n=int(y.size),
        converged=citl.converged and full.converged,
    )


def logistic_recalibration(y: ArrayLike, p: ArrayLike, *, clip: float = PROB_CLIP) -> LogisticRecalibration:
    """Calibration intercept (slope fixed to 1), calibration slope and the recalibration intercept.

    Two unpenalised logistic regressions of ``y`` on ``logit(p)`` (p clipped to ``[clip, 1 − clip]`` first),
    fitted by Newton–Raphson — not scikit-learn's ``LogisticRegression``, whose default L2 penalty would shrink
    the slope towards 0. See :class:`LogisticRecalibration` for the definitions.
    """
    if not 0 < clip < 0.5:
        raise ConfigError(f"'clip' must be in (0, 0.5), got {clip}")
    return _logistic_recalibration(*_validate(y, p), clip=clip)


def _calibration_in_the_large(y: FloatArray, p: FloatArray) -> float:
    return float(_fit_logistic(y, None, _logit(p)).coef[0])


def calibration_in_the_large(y: ArrayLike, p: ArrayLike) -> float:
    """Calibration intercept: ``a`` in ``logit P(y=1) = a + logit(p)`` (offset, slope fixed to 1). Ideal 0.

    The log-odds-scale counterpart of :func:`observed_minus_expected`; NaN when the MLE does not exist (one
    outcome class).
    """
    return _calibration_in_the_large(*_validate(y, p))


def _calibration_slope(y: FloatArray, p: FloatArray) -> float:
    lp = _logit(p)
    return float(_fit_logistic(y, lp, np.zeros_like(lp)).coef[1])


def calibration_slope(y: ArrayLike, p: ArrayLike) -> float:
    """Calibration slope: ``b`` in ``logit P(y=1) = a + b·logit(p)``, unpenalised ML. Ideal 1.

    NaN when the MLE does not exist (one outcome class, separation) or all predictions are equal.
    """
    return _calibration_slope(*_validate(y, p))


def _check_bins(n_bins: int, strategy: str) -> None:
    _check_positive_int(n_bins, "n_bins")
    if strategy not in ("uniform", "quantile"):
        raise ConfigError(f"bin strategy must be 'uniform' or 'quantile', got {strategy!r}")


def _bin_ids(p: FloatArray, n_bins: int, strategy: BinStrategy) -> tuple[NDArray[np.intp], FloatArray]:
    """Bin index per patient and the bin edges.

    Bins are right-closed, (e_k, e_{k+1}], with the first bin also holding its left edge — the convention of
    scikit-learn's ``calibration_curve``. Quantile edges are computed from ``p`` itself; tied predictions stay
    in one bin (so results do not depend on row order), which can leave some quantile bins empty; empty bins are
    dropped by the callers.
    """
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
    return np.searchsorted(edges[1:-1], p, side="left"), edges


def expected_calibration_error(
    y: ArrayLike, p: ArrayLike, *, n_bins: int = 10, strategy: BinStrategy = "uniform"
) -> float:
    """Expected calibration error, ECE = Σ_k (n_k / n)·|mean(y)_k − mean(p)_k| over non-empty bins.

    ``strategy="uniform"`` (default) uses ``n_bins`` equal-width bins on [0, 1], the usual definition (Naeini et al.
    2015; Guo et al. 2017), so values are comparable across models; ``"quantile"`` uses equal-count bins of
    ``p``. ECE depends on the binning and is biased upwards in small samples: report it beside, not instead of,
    the calibration slope and intercept.
    """
    _check_bins(n_bins, strategy)
    y_arr, p_arr = _validate(y, p)
    ids, _ = _bin_ids(p_arr, n_bins, strategy)
    n_k = np.bincount(ids, minlength=n_bins)
    gap = np.abs(np.bincount(ids, weights=y_arr - p_arr, minlength=n_bins))  # n_k·|ȳ_k − p̄_k|
    return float(gap[n_k > 0].sum() / y_arr.size)


def wilson_ci(events: ArrayLike, n: ArrayLike, *, level: float = 0.95) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval for a binomial proportion (vectorised); NaN where n = 0.

    centre = (p̂ + z²/2n) / (1 + z²/n), half-width = z·sqrt(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n), z = Φ⁻¹((1+level)/2).
    Unlike the Wald interval it stays inside [0, 1] and keeps near-nominal coverage for small n and extreme p̂.
    """
    _check_level(level)
    e = np.asarray(events, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    if np.any(e < 0) or np.any(e > m):
        raise PipelineError("Wilson interval needs 0 <= events <= n")
    z = stats.norm.ppf(0.5 + level / 2.0)
    phat = _ratio(e, m)
    z2n = _ratio(z * z, m)
    denom = 1.0 + z2n
    centre = (phat + z2n / 2.0) / denom
    half = z * np.sqrt(phat * (1.0 - phat) / m + z2n / (4.0 * m)) / denom
    return centre - half, centre + half


def calibration_curve(
    y: ArrayLike, p: ArrayLike, *, n_bins: int = 10, strategy: BinStrategy = "quantile", level: float = 0.95
) -> pd.DataFrame:
    """Binned calibration curve: one row per non-empty bin.

    Default ``strategy="quantile"``: equal-count bins of ``p`` (edges at its quantiles), so every point rests on
    about n / n_bins patients; ``"uniform"`` gives equal-width bins on [0, 1]. Bins are right-closed as in
    scikit-learn's ``calibration_curve`` (whose ``prob_pred``/``prob_true`` equal ``mean_predicted``/``observed``).

    Columns: ``bin`` (0-based), ``p_lower``/``p_upper`` (bin edges), ``n``, ``events``, ``mean_predicted``,
    ``observed`` (event fraction), ``ci_lower``/``ci_upper`` (Wilson interval at ``level`` for ``observed``).
    Counts are not suppressed here: apply small-cell rules before publishing bins from real patients.
    """
    _check_bins(n_bins, strategy)
    _check_level(level)
    y_arr, p_arr = _validate(y, p)
    ids, edges = _bin_ids(p_arr, n_bins, strategy)
    n_k = np.bincount(ids, minlength=n_bins)
    events = np.bincount(ids, weights=y_arr, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p_arr, minlength=n_bins)
    keep = n_k > 0
    lower, upper = wilson_ci(events[keep], n_k[keep], level=level)
    return pd.DataFrame(
        {
            "bin": np.flatnonzero(keep),
            "p_lower": edges[:-1][keep],
            "p_upper": edges[1:][keep],
            "n": n_k[keep],
            "events": events[keep].astype(np.int64),
            "mean_predicted": sum_p[keep] / n_k[keep],
            "observed": events[keep] / n_k[keep],
            "ci_lower": lower,
            "ci_upper": upper,
        }
    )


# --------------------------------------------------------------------------------------------------------------
# Clinical utility at thresholds
# --------------------------------------------------------------------------------------------------------------


def _counts_at(y: FloatArray, p: FloatArray, t: FloatArray) -> tuple[NDArray[np.int64], ...]:
    """TP, FP, TN, FN at each threshold, flagging p >= t; O((n + k) log n) by binary search on sorted scores."""
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    tp = pos.size - np.searchsorted(pos, t, side="left")
    fp = neg.size - np.searchsorted(neg, t, side="left")
    return tp, fp, neg.size - fp, pos.size - tp


def _net_benefit(tp: ArrayLike, fp: ArrayLike, n: int, t: FloatArray) -> FloatArray:
    odds = _ratio(t, 1.0 - t)  # NaN at t = 1, where treating nobody-but-certain cases has no defined trade-off
    return np.asarray(tp, dtype=np.float64) / n - np.asarray(fp, dtype=np.float64) / n * odds


def threshold_table(y: ArrayLike, p: ArrayLike, thresholds: ArrayLike) -> pd.DataFrame:
    """Classification and clinical-utility metrics at each threshold (seismometer's vocabulary).

    A patient is flagged when ``p >= t``. Columns:

    * ``threshold``, ``n``, ``tp``, ``fp``, ``tn``, ``fn``, ``flagged`` = (TP + FP) / n;
    * ``sensitivity`` = TP/(TP+FN), ``specificity`` = TN/(TN+FP), ``ppv`` = TP/(TP+FP), ``npv`` = TN/(TN+FN);
    * ``nne`` (number needed to evaluate) = 1/PPV: flagged patients per true event found;
    * ``lr_positive`` = sensitivity/(1 − specificity), ``lr_negative`` = (1 − sensitivity)/specificity;
    * ``net_benefit`` = TP/n − FP/n · t/(1 − t) (Vickers & Elkin 2006), in true positives per patient.

    Every ratio is NaN where its denominator is 0 (e.g. PPV and NNE when nobody is flagged, LR+ when specificity
    is 1, net benefit at t = 1); this is not an error.
    """
    y_arr, p_arr = _validate(y, p)
    t = _check_thresholds(thresholds)
    tp, fp, tn, fn = _counts_at(y_arr, p_arr, t)
    n = y_arr.size
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    ppv = _ratio(tp, tp + fp)
    return pd.DataFrame(
        {
            "threshold": t,
            "n": n,
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "flagged": (tp + fp) / n,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ppv": ppv,
            "npv": _ratio(tn, tn + fn),
            "nne": _ratio(1.0, ppv),
            "lr_positive": _ratio(sensitivity, 1.0 - specificity),
            "lr_negative": _ratio(1.0 - sensitivity, specificity),
            "net_benefit": _net_benefit(tp, fp, n, t),
        }
    )


def net_benefit(y: ArrayLike, p: ArrayLike, threshold: float) -> float:
    """Net benefit of treating patients with ``p >= threshold``: TP/n − FP/n · t/(1 − t); NaN at t = 1."""
    return float(threshold_table(y, p, [threshold])["net_benefit"].iloc[0])


def decision_curve(y: ArrayLike, p: ArrayLike, thresholds: ArrayLike | None = None) -> pd.DataFrame:
    """Decision curve: net benefit of the model, of treating everyone and of treating nobody, per threshold.

    Treat-all: φ − (1 − φ)·t/(1 − t) with φ = mean(y) (everyone flagged: TP = events, FP = non-events).
    Treat-none: 0. Default grid: 0.01, 0.02, …, 0.99. Columns ``threshold``, ``net_benefit_model``,
    ``net_benefit_treat_all``, ``net_benefit_treat_none``. Only thresholds that are clinically reasonable for the
    decision should be read off the curve.
    """
    y_arr, p_arr = _validate(y, p)
    grid = np.round(np.arange(1, 100) / 100.0, 2) if thresholds is None else _check_thresholds(thresholds)
    tp, fp, _, _ = _counts_at(y_arr, p_arr, grid)
    n = y_arr.size
    events = int(y_arr.sum())
    return pd.DataFrame(
        {
            "threshold": grid,
            "net_benefit_model": _net_benefit(tp, fp, n, grid),
            "net_benefit_treat_all": _net_benefit(
                np.full(grid.shape, events), np.full(grid.shape, n - events), n, grid
            ),
            "net_benefit_treat_none": np.zeros(grid.shape),
        }
    )


# --------------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a bootstrap percentile interval.

    Attributes:
        estimate: the metric on the full data (not the bootstrap mean).
        lower, upper: the (1 − level)/2 and (1 + level)/2 quantiles of the bootstrap replicates (NaN when no
            replicate was usable).
        n_boot_used: replicates where the metric was defined (finite); the others were skipped.
        n_boot: replicates drawn.
        level: nominal coverage, e.g. 0.95.
    """

    estimate: float
    lower: float
    upper: float
    n_boot_used: int
    n_boot: int
    level: float


@dataclass(frozen=True)
class PairedBootstrapCI(BootstrapCI):
    """A difference metric(p1) − metric(p2) on the same patients, with its paired percentile interval.

    Attributes:
        share_positive: share of usable bootstrap differences that are > 0 (a difference of exactly 0 counts as
            not positive), e.g. how often the model beat the comparator across resamples.
    """

    share_positive: float


def _auroc_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    """AUROC for each row of resampling counts (weights): weighted Mann-Whitney, ties counting 1/2.

    AUROC = Σ_i Σ_j w_i w_j [1(p_i > p_j) + ½·1(p_i = p_j)] / (W_events · W_non-events) over events i and
    non-events j. After one sort, each tie group g contributes W_events(g)·(W_non-events below g +
    ½·W_non-events(g)), so a whole chunk of resamples costs a few vectorised passes over the (chunk, n) matrix.
    All terms are sums of integers and halves, so the result equals ``roc_auc_score`` on the resample exactly up
    to floating-point rounding of the final division.
    """
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    is_event = y[order] == 1
    starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
    w = counts[:, order]
    w_event = np.where(is_event, w, 0.0)
    w_nonevent = np.where(is_event, 0.0, w)
    if starts.size < p.size:  # tie groups: pool their weights (skipped for untied scores, the common case)
        w_event = np.add.reduceat(w_event, starts, axis=1)
        w_nonevent = np.add.reduceat(w_nonevent, starts, axis=1)
    below = np.cumsum(w_nonevent, axis=1) - w_nonevent
    num = np.sum(w_event * (below + 0.5 * w_nonevent), axis=1)
    return _ratio(num, w_event.sum(axis=1) * w_nonevent.sum(axis=1))


def _auprc_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    """Average precision for each row of resampling counts, as ``average_precision_score`` defines it.

    AP = Σ_t (R_t − R_{t−1}) · P_t over the distinct score thresholds t (highest first), where a tie group
    enters as a whole. With weights w (resample counts), cumulative weighted TP and FP at the end of each tie
    group give P_t and R_t for all resamples at once. NaN where a resample has no events.
    """
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    weights = counts[:, order]
    tp = np.cumsum(weights * y_sorted, axis=1)
    fp = np.cumsum(weights * (1.0 - y_sorted), axis=1)
    ends = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])
    tp_end, fp_end = tp[:, ends], fp[:, ends]
    total_pos = tp_end[:, -1]
    gained = np.diff(tp_end, axis=1, prepend=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp_end + fp_end > 0, tp_end / (tp_end + fp_end), 0.0)
        ap = (gained * precision).sum(axis=1) / total_pos
    return np.where(total_pos > 0, ap, np.nan)


def _brier_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    return counts @ ((p - y) ** 2) / y.size


def _scaled_brier_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    prevalence = counts @ y / y.size
    return 1.0 - _ratio(_brier_batch(y, p, counts), prevalence * (1.0 - prevalence))


def _oe_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    return counts @ (y - p) / y.size


# Public metric -> the same computation without re-validating its (already checked) input: used inside loops.
_UNCHECKED: dict[Callable[..., float], Metric] = {
    auroc: _auroc,
    auprc: _auprc,
    brier_score: _brier,
    scaled_brier_score: _scaled_brier,
    observed_minus_expected: _observed_minus_expected,
    calibration_in_the_large: _calibration_in_the_large,
    calibration_slope: _calibration_slope,
}
# Public metric -> vectorised version over a (replicates, n) matrix of resampling counts.
_BATCHED: dict[Callable[..., float], Callable[[FloatArray, FloatArray, FloatArray], FloatArray]] = {
    auroc: _auroc_batch,
    auprc: _auprc_batch,
    brier_score: _brier_batch,
    scaled_brier_score: _scaled_brier_batch,
    observed_minus_expected: _oe_batch,
}


def _resample_chunks(y: FloatArray, n_boot: int, seed: int, stratify: bool) -> Iterator[NDArray[np.intp]]:
    """Yield (chunk, n) matrices of row indices, n_boot rows in total, from one seeded generator."""
    rng = np.random.default_rng(seed)
    n = y.size
    strata = [np.flatnonzero(y == 1), np.flatnonzero(y == 0)] if stratify else [np.arange(n)]
    strata = [s for s in strata if s.size > 0]
    chunk = max(1, _BOOT_CHUNK_CELLS // n)
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        yield np.concatenate([s[rng.integers(0, s.size, size=(rows, s.size))] for s in strata], axis=1)
        done += rows


def _replicates(
    metric: Callable[..., float], y: FloatArray, scores: Sequence[FloatArray], *, n_boot: int, seed: int, stratify: bool
) -> list[FloatArray]:
    """Metric values on n_boot resamples, for each score vector on the *same* resamples (NaN = undefined)."""
    batched = _BATCHED.get(metric)
    scalar = _UNCHECKED.get(metric, metric)
    out: list[list[FloatArray]] = [[] for _ in scores]
    n = y.size
    for idx in _resample_chunks(y, n_boot, seed, stratify):
        if batched is not None:
            rows = idx.shape[0]
            flat = (idx + (np.arange(rows) * n)[:, None]).ravel()
            counts = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
            for k, s in enumerate(scores):
                out[k].append(np.asarray(batched(y, s, counts), dtype=np.float64))
        else:
            for k, s in enumerate(scores):
                out[k].append(np.array([scalar(y[row], s[row]) for row in idx], dtype=np.float64))
    return [np.concatenate(parts) for parts in out]


def _check_boot_args(n_boot: int, level: float, seed: int) -> None:
    _check_positive_int(n_boot, "n_boot")
    _check_level(level)
    _check_positive_int(seed, "seed", minimum=0)


def _percentiles(values: FloatArray, level: float) -> tuple[float, float, FloatArray]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, finite
    lower, upper = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lower), float(upper), finite


def bootstrap_ci(
    y: ArrayLike,
    p: ArrayLike,
    metric: Callable[..., float] = auroc,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    stratify: bool = True,
) -> BootstrapCI:
    """Seeded nonparametric bootstrap percentile interval for ``metric(y, p)``.

    Patients are resampled with replacement. With ``stratify=True`` (default) events and non-events are resampled
    separately, each to its observed count, so every resample has both classes and the observed prevalence: the
    interval is then conditional on the prevalence, which slightly narrows it for prevalence-dependent metrics
    (Brier, O − E) and avoids resamples where discrimination is undefined. Replicates where the metric is NaN
    (undefined) are skipped and counted in ``n_boot_used``.

    ``metric`` is any ``f(y, p) -> float``; this module's AUROC, Brier, scaled Brier and O − E are computed for
    all resamples at once (vectorised); other metrics are called once per resample. The same seed gives the same
    resamples for every metric and for :func:`paired_bootstrap_difference`.
    """
    _check_boot_args(n_boot, level, seed)
    y_arr, p_arr = _validate(y, p)
    scalar = _UNCHECKED.get(metric, metric)
    (values,) = _replicates(metric, y_arr, [p_arr], n_boot=n_boot, seed=seed, stratify=stratify)
    lower, upper, finite = _percentiles(values, level)
    return BootstrapCI(float(scalar(y_arr, p_arr)), lower, upper, int(finite.size), n_boot, level)


def paired_bootstrap_difference(
    y: ArrayLike,
    p1: ArrayLike,
    p2: ArrayLike,
    metric: Callable[..., float] = auroc,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    stratify: bool = True,
) -> PairedBootstrapCI:
    """Paired bootstrap for ``metric(y, p1) − metric(y, p2)`` with both scores on the same patients.

    Each resample of patients is scored with both ``p1`` and ``p2``, so the interval accounts for the correlation
    between the two (e.g. model AUROC − oracle AUROC). Same resampling scheme as :func:`bootstrap_ci`; a
    replicate is skipped when either metric is undefined. ``share_positive`` is the share of differences > 0.
    """
    _check_boot_args(n_boot, level, seed)
    y_arr, p1_arr = _validate(y, p1, p_name="p1")
    p2_arr = _check_probability(p2, "p2")
    _check_same_length(("y", y_arr), ("p2", p2_arr))
    scalar = _UNCHECKED.get(metric, metric)
    first, second = _replicates(metric, y_arr, [p1_arr, p2_arr], n_boot=n_boot, seed=seed, stratify=stratify)
    lower, upper, finite = _percentiles(first - second, level)
    share = float(np.mean(finite > 0)) if finite.size else math.nan
    estimate = float(scalar(y_arr, p1_arr) - scalar(y_arr, p2_arr))
    return PairedBootstrapCI(estimate, lower, upper, int(finite.size), n_boot, level, share)


# --------------------------------------------------------------------------------------------------------------
# Summary and subgroup (fairness) table
# --------------------------------------------------------------------------------------------------------------


def performance_summary(y: ArrayLike, p: ArrayLike, *, n_bins: int = 10) -> dict[str, float]:
    """The headline metrics in one flat dict (for ``metrics.json`` and the model card), point estimates only.

    Keys: n, events, prevalence, mean_predicted, auroc, auprc, brier, scaled_brier, observed_minus_expected,
    calibration_intercept, calibration_slope, recalibration_intercept, ece (``n_bins`` equal-width bins).
    """
    y_arr, p_arr = _validate(y, p)
    recal = _logistic_recalibration(y_arr, p_arr)
    return {
        "n": float(y_arr.size),
        "events": float(y_arr.sum()),
        "prevalence": float(y_arr.mean()),
        "mean_predicted": float(p_arr.mean()),
        "auroc": _auroc(y_arr, p_arr),
        "auprc": _auprc(y_arr, p_arr),
        "brier": _brier(y_arr, p_arr),
        "scaled_brier": _scaled_brier(y_arr, p_arr),
        "observed_minus_expected": _observed_minus_expected(y_arr, p_arr),
        "calibration_intercept": recal.calibration_intercept,
        "calibration_slope": recal.slope,
        "recalibration_intercept": recal.intercept,
        "ece": expected_calibration_error(y_arr, p_arr, n_bins=n_bins, strategy="uniform"),
    }


_SUBGROUP_VALUES = ("n", "events", "event_rate", "mean_predicted", "auroc", "o_minus_e", "o_e_ratio")
_MISSING_LEVEL = "(missing)"


def _subgroup_row(y: FloatArray, p: FloatArray) -> dict[str, float]:
    mean_p = float(p.mean())
    return {
        "n": y.size,
        "events": int(y.sum()),
        "event_rate": float(y.mean()),
        "mean_predicted": mean_p,
        "auroc": _auroc(y, p),
        "o_minus_e": float(y.mean()) - mean_p,
        "o_e_ratio": float(_ratio(y.mean(), mean_p)),
    }


def subgroup_table(
    frame: pd.DataFrame,
    groups: str | Sequence[str],
    *,
    y: str = "y",
    p: str = "p",
    min_cell: int = DEFAULT_MIN_CELL,
    suppress_small_event_counts: bool = True,
) -> pd.DataFrame:
    """Per-subgroup performance with ratios to the overall population and small-cell suppression.

    One ``overall`` row, then one row per level of each grouping column (missing values form the level
    ``"(missing)"``: patients whose group is unknown are a subgroup too). Columns:

    * ``group`` (the grouping column, or ``"overall"``), ``level`` (as text);
    * ``n``, ``events`` (nullable integers), ``event_rate``, ``mean_predicted``;
    * ``auroc`` (NaN when the level has only one outcome class);
    * ``o_minus_e`` = mean(y) − mean(p) (calibration-in-the-large) and ``o_e_ratio`` = mean(y) / mean(p);
    * ``event_rate_ratio``, ``auroc_ratio``: the level's value divided by the overall value (seismometer's
      fairness convention; 1 = same as overall). O − E gets no ratio: a ratio of two differences that can both be
      near 0 is unstable; compare ``o_minus_e`` directly or use ``o_e_ratio``;
    * ``suppressed`` (bool) and ``suppression_reason``.

    Small-cell suppression (seismometer ``censor_min_count``): a row is suppressed when ``n < min_cell`` or, with
    ``suppress_small_event_counts`` (default), when events or non-events ``< min_cell`` (the event count is itself
    a cell). If exactly one level of a grouping column is suppressed, the smallest other level is suppressed too
    (reason ``"secondary"``), since otherwise its counts could be recovered by subtraction from the overall row.
    Suppressed rows keep their ``group``/``level`` but every number is missing (``<NA>``/NaN); read them as "fewer
    than ``min_cell``". ``min_cell`` below 10 triggers a warning: only for data that do not identify real
    individuals (e.g. synthetic data).
    """
    if isinstance(min_cell, bool) or not isinstance(min_cell, int | np.integer) or min_cell < 0:
        raise ConfigError(f"'min_cell' must be a non-negative integer, got {min_cell!r}")
    if min_cell < DEFAULT_MIN_CELL:
        warnings.warn(
            f"small-cell suppression threshold min_cell={min_cell} is below {DEFAULT_MIN_CELL}: use this only for "
            "data that do not identify real individuals (e.g. synthetic data)",
            UserWarning,
            stacklevel=2,
        )
    group_cols = [groups] if isinstance(groups, str) else list(groups)
    for column in [y, p, *group_cols]:
        if column not in frame.columns:
            raise PipelineError(f"column '{column}' not found; have {list(frame.columns)}", column=column)
    y_arr, p_arr = _validate(frame[y], frame[p], y_name=y, p_name=p)

    records: list[dict[str, object]] = [{"group": "overall", "level": "all", **_subgroup_row(y_arr, p_arr)}]
    for column in group_cols:
        # Sorted levels (category order for a categorical column), then the missing level last.
        codes, uniques = pd.factorize(frame[column], sort=True, use_na_sentinel=True)
        levels = [(code, str(value)) for code, value in enumerate(uniques)]
        if (codes < 0).any():
            levels.append((-1, _MISSING_LEVEL))
        for code, level in levels:
            mask = codes == code
            records.append({"group": column, "level": level, **_subgroup_row(y_arr[mask], p_arr[mask])})
    table = pd.DataFrame.from_records(records)

    reason = np.full(len(table), "", dtype=object)
    small_n = table["n"].to_numpy() < min_cell
    reason[small_n] = f"n<{min_cell}"
    if suppress_small_event_counts:
        small_events = ~small_n & (table["events"].to_numpy() < min_cell)
        small_nonevents = ~small_n & ~small_events & ((table["n"] - table["events"]).to_numpy() < min_cell)
        reason[small_events] = f"events<{min_cell}"
        reason[small_nonevents] = f"non-events<{min_cell}"
    for column in group_cols:
        rows = np.flatnonzero(table["group"].to_numpy() == column)
        primary = rows[reason[rows] != ""]
        others = rows[reason[rows] == ""]
        if primary.size == 1 and others.size > 0:
            reason[others[np.argmin(table["n"].to_numpy()[others])]] = "secondary"

    overall = table.iloc[0]
    table["event_rate_ratio"] = _ratio(table["event_rate"], overall["event_rate"])
    table["auroc_ratio"] = _ratio(table["auroc"], overall["auroc"])
    suppressed = reason != ""
    table["n"] = table["n"].astype("Int64")
    table["events"] = table["events"].astype("Int64")
    for column in [*_SUBGROUP_VALUES, "event_rate_ratio", "auroc_ratio"]:
        table.loc[suppressed, column] = pd.NA if column in ("n", "events") else np.nan
    table["suppressed"] = suppressed
    table["suppression_reason"] = pd.Series(reason, dtype="string")
    return table


# --------------------------------------------------------------------------------------------------------------
# AUROC with few events: DeLong's variance and leave-one-out stability
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeLongCI:
    """AUROC with DeLong's standard error and an interval computed on the logit scale.

    Attributes:
        estimate: the AUROC (Mann-Whitney, ties 1/2).
        se: DeLong et al. (Biometrics 1988) standard error of the AUROC.
        lower, upper: expit(logit(AUROC) ∓ z·SE / (AUROC(1 − AUROC))): the delta-method interval on the logit
            scale stays inside (0, 1), which matters with few events (Qin & Hotilovac, Stat Methods Med Res 2008);
            NaN when a class has fewer than two patients or the AUROC is 0 or 1.
        loo_min, loo_max: the smallest and largest AUROC after leaving out one patient at a time, a plain measure
            of how much a single patient moves the estimate.
    """

    estimate: float
    se: float
    lower: float
    upper: float
    loo_min: float
    loo_max: float
    level: float


def _placements(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray]:
    events, non_events = p[y == 1], p[y == 0]
    compare = (events[:, None] > non_events[None, :]) + 0.5 * (events[:, None] == non_events[None, :])
    return compare.mean(axis=1), compare.mean(axis=0)


def delong_ci(y: ArrayLike, p: ArrayLike, *, level: float = 0.95) -> DeLongCI:
    """AUROC with DeLong's variance (placement values), its logit-scale interval and its leave-one-out range."""
    _check_level(level)
    y_arr, p_arr = _validate(y, p)
    n_events = int(y_arr.sum())
    n_non = int(y_arr.size - n_events)
    if min(n_events, n_non) < 2:
        estimate = _auroc(y_arr, p_arr) if _both_classes(y_arr) else math.nan
        return DeLongCI(estimate, math.nan, math.nan, math.nan, math.nan, math.nan, level)
    v10, v01 = _placements(y_arr, p_arr)
    estimate = float(v10.mean())
    se = math.sqrt(v10.var(ddof=1) / n_events + v01.var(ddof=1) / n_non)
    lower = upper = math.nan
    if 0.0 < estimate < 1.0 and se > 0:
        z = float(stats.norm.ppf(0.5 + level / 2.0))
        centre = math.log(estimate / (1.0 - estimate))
        half = z * se / (estimate * (1.0 - estimate))
        lower, upper = float(special.expit(centre - half)), float(special.expit(centre + half))
    keep = np.ones(y_arr.size, dtype=bool)
    loo = []
    for i in range(y_arr.size):
        keep[i] = False
        loo.append(_auroc(y_arr[keep], p_arr[keep]))
        keep[i] = True
    return DeLongCI(estimate, se, lower, upper, float(np.min(loo)), float(np.max(loo)), level)


# --------------------------------------------------------------------------------------------------------------
# External validation against a continuous outcome
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationCI:
    """A correlation with a Fisher-z confidence interval.

    Attributes:
        estimate: Spearman's rho.
        lower, upper: tanh(atanh(rho) ∓ z·SE), NaN when n < 4 or rho is undefined.
        p_value: two-sided test of rho = 0 (scipy's t approximation).
        n: number of pairs.
        level: nominal coverage.
        se_method: the standard error used for atanh(rho).
    """

    estimate: float
    lower: float
    upper: float
    p_value: float
    n: int
    level: float
    se_method: str


def spearman_ci(
    x: ArrayLike,
    y: ArrayLike,
    *,
    level: float = 0.95,
    se_method: Literal["bonett-wright", "fieller", "fisher"] = "bonett-wright",
) -> CorrelationCI:
    """Spearman's rank correlation with a Fisher-z interval, e.g. predicted probability vs percent MADRS change.

    The interval is tanh(atanh(rho) ± z_{(1+level)/2}·SE) with SE of atanh(rho):

    * ``"bonett-wright"`` (default): sqrt((1 + rho²/2) / (n − 3)) (Bonett & Wright 2000, recommended for rho);
    * ``"fieller"``: sqrt(1.06 / (n − 3)) (Fieller, Hartley & Pearson 1957);
    * ``"fisher"``: sqrt(1 / (n − 3)), the Pearson formula (too narrow for Spearman's rho).

    Mind the sign: if the change is (follow-up − baseline)/baseline, a useful model has a *negative* rho.
    """
    _check_level(level)
    if se_method not in ("bonett-wright", "fieller", "fisher"):
        raise ConfigError(f"se_method must be 'bonett-wright', 'fieller' or 'fisher', got {se_method!r}")
    x_arr = _check_numeric(x, "x")
    y_arr = _check_numeric(y, "y")
    _check_same_length(("x", x_arr), ("y", y_arr))
    n = int(x_arr.size)
    if n < 3 or np.ptp(x_arr) == 0 or np.ptp(y_arr) == 0:
        # Fewer than three pairs or a constant variable: rho is undefined or degenerate.
        return CorrelationCI(math.nan, math.nan, math.nan, math.nan, n, level, se_method)
    result = stats.spearmanr(x_arr, y_arr)
    rho, p_value = float(result.statistic), float(result.pvalue)
    if n < 4:
        return CorrelationCI(rho, math.nan, math.nan, p_value, n, level, se_method)
    factor = {"bonett-wright": 1.0 + rho * rho / 2.0, "fieller": 1.06, "fisher": 1.0}[se_method]
    se = math.sqrt(factor / (n - 3))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    centre = math.atanh(min(max(rho, -1.0 + 1e-15), 1.0 - 1e-15))  # |rho| = 1 would give an infinite z
    return CorrelationCI(rho, math.tanh(centre - z * se), math.tanh(centre + z * se), p_value, n, level, se_method)
