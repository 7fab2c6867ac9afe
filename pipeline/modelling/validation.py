"""Internal validation: Harrell's bootstrap optimism correction of the champion's whole fitting procedure."""

from __future__ import annotations

import math
import time
import warnings
import zlib
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator

from pipeline import metrics
from pipeline.modelling.candidates import CandidateResult, fit_final
from pipeline.modelling.params import VALIDATED_METRICS, TrainParams


def _validated(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "auroc": metrics.auroc(y, p),
        "calibration_slope": metrics.calibration_slope(y, p),
        "calibration_in_the_large": metrics.calibration_in_the_large(y, p),
        "brier": metrics.brier_score(y, p),
    }


def _bootstrap_once(
    champion: CandidateResult, X: pd.DataFrame, y: np.ndarray, index: np.ndarray, *, folds: int, seed: int
) -> tuple[dict[str, float], dict[str, float]] | None:
    """Refit on one bootstrap sample; its performance on that sample and on the original data (None: failed)."""
    Xb, yb = X.iloc[index].reset_index(drop=True), y[index]
    if np.bincount(yb, minlength=2).min() < folds:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample may make the odd fit converge slowly; it is counted if it fails
        try:
            model = fit_final(champion, Xb, yb, folds=folds, seed=seed, groups=index)
            return _validated(yb, model.predict_proba(Xb)[:, 1]), _validated(y, model.predict_proba(X)[:, 1])
        except (ValueError, ArithmeticError):
            return None


def internal_validation(
    champion: CandidateResult,
    estimator: BaseEstimator,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    params: TrainParams,
    seed: int,
) -> dict[str, Any]:
    """Bootstrap optimism correction (Harrell; Steyerberg, Clinical Prediction Models, ch. 17) of AUROC,
    calibration slope, calibration-in-the-large and Brier, using all the development data.

    Each repetition draws n patients with replacement, refits the champion's procedure on them (its fixed
    hyperparameters, and its calibrator refitted out of fold with a patient's copies kept in one fold), and
    records performance on that sample (apparent) and on the original patients (test). Optimism = mean(apparent
    − test); corrected = the shipped model's apparent performance − optimism. The interval is the location-shifted
    percentile interval (Noma et al., Stat Med 2021;40:5691): the percentile interval of the shipped model's
    apparent performance over the same bootstrap samples, shifted by the optimism (it carries the sampling
    variability of the performance, not that of the optimism estimate). Hyperparameter search, calibration choice
    and champion selection are not repeated inside the bootstrap, so the correction is, if anything, too small.
    """
    started = time.perf_counter()
    settings = params.internal_validation
    n = len(y)
    streams = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(b"internal_validation"),))
    indices = [np.random.default_rng(s).integers(0, n, n) for s in streams.spawn(settings.bootstrap_repetitions)]

    runs = Parallel(n_jobs=params.n_jobs)(
        delayed(_bootstrap_once)(champion, X, y, index, folds=params.cv_folds, seed=seed) for index in indices
    )
    done = [r for r in runs if r is not None]
    p_apparent = estimator.predict_proba(X)[:, 1]
    apparent = _validated(y, p_apparent)
    resampled = [_validated(y[index], p_apparent[index]) for index in indices]
    alpha = (1.0 - settings.confidence_level) / 2.0
    out: dict[str, Any] = {
        "method": "Harrell bootstrap optimism correction; location-shifted percentile interval",
        "repetitions": settings.bootstrap_repetitions,
        "repetitions_used": len(done),
        "repetitions_failed": settings.bootstrap_repetitions - len(done),
        "confidence_level": settings.confidence_level,
        "n": n,
        "events": int(y.sum()),
    }
    for name in VALIDATED_METRICS:
        boot = np.array([b[name] for b, _ in done], dtype="float64")
        test = np.array([t[name] for _, t in done], dtype="float64")
        finite = np.isfinite(boot) & np.isfinite(test)
        optimism = float(np.mean(boot[finite] - test[finite])) if finite.any() else math.nan
        corrected = apparent[name] - optimism
        spread = np.array([r[name] for r in resampled], dtype="float64")
        spread = spread[np.isfinite(spread)]
        lower, upper = (
            (float(np.quantile(spread, alpha)) - optimism, float(np.quantile(spread, 1 - alpha)) - optimism)
            if spread.size >= 2
            else (math.nan, math.nan)
        )
        out[name] = {
            "apparent": apparent[name],
            "optimism": optimism,
            "corrected": corrected,
            "corrected_lower": lower,
            "corrected_upper": upper,
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
