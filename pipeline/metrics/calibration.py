"""Calibration: observed minus expected, logistic recalibration (intercept and slope), calibration curve and
expected calibration error, Wilson intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics.inputs import (
    PROB_CLIP,
    BinStrategy,
    FloatArray,
    _both_classes,
    _check_level,
    _check_positive_int,
    _logit,
    _ratio,
    _validate,
)

# Newton–Raphson settings for the recalibration fits. Logistic log-likelihoods are concave, so Newton converges
# quadratically from (0, 1) in a handful of steps when the MLE exists; 50 steps that do not converge mean it does
# not (separation) and the estimate is reported as NaN.
_NEWTON_MAX_ITER = 50
_NEWTON_TOL = 1e-10


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
