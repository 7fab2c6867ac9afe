"""Clinical utility at probability thresholds: the threshold table, net benefit and the decision curve."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from pipeline.metrics.inputs import FloatArray, _check_thresholds, _ratio, _validate

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
