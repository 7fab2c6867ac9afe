"""Discrimination and overall accuracy: AUROC, AUPRC, Brier scores; DeLong's AUROC interval for few events."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.metrics.inputs import FloatArray, _both_classes, _check_level, _validate

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
