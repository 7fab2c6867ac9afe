"""Candidate estimators: construction, hyperparameter search, calibration choice, CV metrics, final fit.

Pure: arrays in, fitted estimators and numbers out. Everything is decided on the training split by
cross-validation; the test split is never read here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

from pipeline import metrics
from pipeline.errors import ConfigError
from pipeline.modelling.calibration import PROB_EPS, CalibratedModel, calibrate, out_of_fold
from pipeline.modelling.calibration import folds as calibration_folds
from pipeline.modelling.design import SplineDesign
from pipeline.modelling.params import CandidateName, CandidateParams, TrainParams


def make_estimator(name: CandidateName, seed: int, *, interactions: Any = ()) -> BaseEstimator:
    """A fresh, unfitted candidate. Grid keys in params are the estimator's own parameter names."""
    if name == "logreg":
        # the interpretable baseline: median imputation with missingness indicators, scaling, L2 logistic
        return Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(max_iter=5000)),
            ]
        )
    if name == "logreg_spline":
        # the same L2 logistic model on restricted cubic splines and declared products (pipeline/modelling/design.py)
        return Pipeline(
            [
                ("design", SplineDesign(interactions=tuple(tuple(pair) for pair in interactions))),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(max_iter=5000)),
            ]
        )
    if name == "xgboost":
        # missing values handled natively; one thread per fit, parallelism comes from the search
        return XGBClassifier(
            tree_method="hist", n_jobs=1, random_state=seed, eval_metric="logloss", objective="binary:logistic"
        )
    if name == "hist_gb":
        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False)
    raise ConfigError(f"unknown candidate '{name}'")  # pragma: no cover (Literal guards it)


# pipeline step of each grid key of the pipeline candidates (the others take their own parameter names)
_DESIGN_KEYS = frozenset({"n_knots", "spike_share"})


def _search_space(name: CandidateName, grid: dict[str, list]) -> dict[str, list]:
    if name not in ("logreg", "logreg_spline"):
        return dict(grid)
    return {f"{'design' if key in _DESIGN_KEYS else 'model'}__{key}": values for key, values in grid.items()}


def check_grid(name: CandidateName, grid: dict[str, list], seed: int) -> None:
    """Unknown hyperparameter names fail before any fitting, naming the param."""
    valid = make_estimator(name, seed).get_params()
    unknown = [key for key in _search_space(name, grid) if key not in valid]
    if unknown:
        raise ConfigError(f"train.candidates.{name}.grid: unknown hyperparameter(s) {unknown}")


@dataclass
class CandidateResult:
    name: str
    best_params: dict[str, Any]
    calibration: str
    oof: np.ndarray  # calibrated out-of-fold probabilities on the training split
    cv: dict[str, float]
    calibration_log_loss: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    raw_oof: np.ndarray | None = None  # before calibration: what the shipped calibrator is fitted on
    interactions: tuple[tuple[str, str], ...] = ()


def tune_candidate(
    name: CandidateName, params: CandidateParams, X: pd.DataFrame, y: np.ndarray, *, folds: int, seed: int, n_jobs: int
) -> dict[str, Any]:
    """Hyperparameters by cross-validated log loss on the training split (random search, or the whole grid)."""
    space = _search_space(name, params.grid)
    grid_size = math.prod(len(v) for v in space.values())
    estimator = make_estimator(name, seed, interactions=params.interactions)
    common = {"scoring": "neg_log_loss", "cv": _cv(folds, seed), "n_jobs": n_jobs, "refit": False}
    if params.search_iterations >= grid_size:
        search = GridSearchCV(estimator, space, **common)
    else:
        search = RandomizedSearchCV(estimator, space, n_iter=params.search_iterations, random_state=seed, **common)
    search.fit(X, y)
    return dict(search.best_params_)


def _cv(cv_folds: int, seed: int) -> Any:
    return calibration_folds(cv_folds, seed)


def choose_calibration(
    oof: np.ndarray, y: np.ndarray, methods: list[str], *, folds: int, seed: int
) -> tuple[str, np.ndarray, dict[str, float]]:
    """Pick the calibration with the lowest cross-validated log loss of its calibrated out-of-fold predictions.

    Each method's calibrator is fitted on the other folds' out-of-fold predictions and applied to the held-out
    fold, so the comparison itself is cross-validated. Ties keep the simpler method (listed first).
    """
    scores: dict[str, float] = {}
    calibrated: dict[str, np.ndarray] = {}
    for method in methods:
        out = np.empty_like(oof)
        for fit_idx, apply_idx in _cv(folds, seed + 1).split(oof.reshape(-1, 1), y):
            # the same fit and apply as the shipped CalibratedModel (pipeline.modelling.calibration)
            out[apply_idx] = calibrate(method, oof[fit_idx], y[fit_idx], oof[apply_idx])
        out = np.clip(out, PROB_EPS, 1 - PROB_EPS)
        calibrated[method] = out
        scores[method] = float(log_loss(y, out))
    best = min(methods, key=lambda m: (round(scores[m], 10), methods.index(m)))
    return best, calibrated[best], scores


def cv_metrics(y: np.ndarray, p: np.ndarray, *, n_boot: int, seed: int) -> dict[str, float]:
    ci = metrics.bootstrap_ci(y, p, metrics.auroc, n_boot=n_boot, seed=seed)
    return {
        "cv_auroc": ci.estimate,
        "cv_auroc_lower": ci.lower,
        "cv_auroc_upper": ci.upper,
        "cv_log_loss": float(log_loss(y, p)),
        "cv_brier": float(brier_score_loss(y, p)),
        "cv_calibration_slope": metrics.calibration_slope(y, p),
        "cv_calibration_in_the_large": metrics.calibration_in_the_large(y, p),
    }


def evaluate_candidate(
    name: CandidateName, params: CandidateParams, train: TrainParams, X: pd.DataFrame, y: np.ndarray, *, seed: int
) -> CandidateResult:
    """Tune, get out-of-fold predictions, choose calibration, and summarise the CV performance."""
    started = time.perf_counter()
    best = tune_candidate(name, params, X, y, folds=train.cv_folds, seed=seed, n_jobs=train.n_jobs)
    interactions = tuple(tuple(pair) for pair in params.interactions)
    estimator = make_estimator(name, seed, interactions=interactions).set_params(**best)
    raw_oof = out_of_fold(estimator, X, y, n_splits=train.cv_folds, seed=seed, n_jobs=train.n_jobs)
    method, oof, scores = choose_calibration(
        raw_oof, y, list(train.calibration_methods), folds=train.cv_folds, seed=seed
    )
    result = CandidateResult(
        name=name,
        best_params=best,
        calibration=method,
        oof=oof,
        cv=cv_metrics(y, oof, n_boot=train.cv_bootstrap_repetitions, seed=seed),
        calibration_log_loss=scores,
        raw_oof=raw_oof,
        interactions=interactions,  # type: ignore[arg-type]
    )
    result.seconds = time.perf_counter() - started
    return result


def fit_final(
    result: CandidateResult,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    folds: int,
    seed: int,
    groups: np.ndarray | None = None,
    n_jobs: int = 1,
) -> BaseEstimator:
    """Refit the chosen candidate on all of ``X`` with its calibration: the one procedure the shipped model, the
    bootstrap refits and the selection's CV share.

    The calibrator is fitted on out-of-fold probabilities over the same shuffled, stratified folds (``folds``,
    ``seed``) the selection used; on the training split itself they are the selection's own out-of-fold
    probabilities (``result.raw_oof``), so the shipped calibrator is exactly the one the CV metrics describe.
    ``groups`` (bootstrap samples) keeps the copies of a patient in one fold.
    """
    estimator = make_estimator(result.name, seed, interactions=result.interactions).set_params(  # type: ignore[arg-type]
        **result.best_params
    )
    if result.calibration == "none":
        return estimator.fit(X, y)
    reuse = groups is None and result.raw_oof is not None and len(result.raw_oof) == len(y)
    model = CalibratedModel(estimator, method=result.calibration, cv_folds=folds, seed=seed)
    return model.fit(X, y, oof=result.raw_oof if reuse else None, groups=groups, n_jobs=n_jobs)
