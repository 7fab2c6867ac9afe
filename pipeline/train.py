"""Stage ``train@<task>``: tune, calibrate and select a classifier per task; validate the champion internally;
track it in MLflow; save it.

Pure core (no I/O): :func:`make_estimator`, :func:`tune_candidate`, :func:`choose_calibration`,
:func:`fit_final`, :func:`select_champion`, :func:`internal_validation`. ``main`` reads the task's split, runs every
candidate, logs one MLflow run per task with a nested run per candidate, registers the champion as ``trd-<task>``
(moving the ``champion`` alias only when the gate in params passes), and saves the same model to ``models/<task>/``.

Everything is decided on the training split by cross-validation: hyperparameters (search scored by log loss),
calibration (none / sigmoid / isotonic, by cross-validated log loss of calibrated out-of-fold predictions, with the
calibrator of :mod:`pipeline.calibration` that the shipped model also uses) and the champion (``train.selection``:
a rule declared in params, by default the simplest candidate within one standard error of the best). The
champion's whole fitting procedure is then validated on all the training data by Harrell's bootstrap optimism
correction (:func:`internal_validation`). The test split is never read here.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
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
from pipeline.calibration import PROB_EPS, CalibratedModel, CalibrationName, calibrate, out_of_fold
from pipeline.calibration import folds as calibration_folds
from pipeline.design import SplineDesign
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.params import Frozen
from pipeline.protocol import (
    DEFAULT_COHORT,
    SMALL_COHORT_PROTOCOL,
    SampleSizeParams,
    adapt_folds,
    registered_model_name,
    sample_size_gate,
    small_cohort_selection,
)

log = logging.getLogger(__name__)

CandidateName = Literal["logreg", "logreg_spline", "xgboost", "hist_gb"]
SelectionMetric = Literal["log_loss", "brier"]
SelectionRule = Literal["best", "one_se"]
# the metrics internal validation corrects for optimism (risk scale)
VALIDATED_METRICS = ("auroc", "calibration_slope", "calibration_in_the_large", "brier")


class CandidateParams(Frozen):
    search_iterations: int = Field(ge=1, le=500, description="Random-search budget (whole grid if smaller).")
    grid: dict[str, list[float | int | str]] = Field(min_length=1)
    interactions: list[tuple[str, str]] = Field(
        default_factory=list, description="logreg_spline only: pairs of canonical features whose products enter."
    )


class GateParams(Frozen):
    min_cv_auroc_lower: float = Field(ge=0.0, le=1.0, description="Lower 95 % bound of the CV AUROC.")
    calibration_slope: tuple[float, float] = Field(description="Allowed range of the CV calibration slope.")

    @model_validator(mode="after")
    def _ordered(self) -> GateParams:
        if not self.calibration_slope[0] < self.calibration_slope[1]:
            raise ValueError("calibration_slope must be [low, high] with low < high")
        return self


class RiskBandParams(Frozen):
    name: str
    upper: float = Field(gt=0.0, le=1.0)


class SelectionParams(Frozen):
    """How the champion is chosen from the candidates' cross-validated predictions (declared before any test data)."""

    metric: SelectionMetric = Field(description="Per-patient loss of the calibrated out-of-fold predictions.")
    rule: SelectionRule = Field(description="best: lowest mean loss; one_se: simplest within se_multiplier SE.")
    se_multiplier: float = Field(default=1.0, ge=0.0, le=5.0, description="Width of the tie band, in paired SEs.")
    simplicity_order: list[CandidateName] = Field(min_length=1, description="Simplest first; ties go to the first.")

    @model_validator(mode="after")
    def _distinct(self) -> SelectionParams:
        if len(set(self.simplicity_order)) != len(self.simplicity_order):
            raise ValueError("simplicity_order lists a candidate twice")
        return self


class InternalValidationParams(Frozen):
    bootstrap_repetitions: int = Field(ge=20, le=2000, description="Harrell bootstrap refits of the champion.")
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0)


class TrainParams(Frozen):
    cv_folds: int = Field(ge=2, le=20)
    selection: SelectionParams
    calibration_methods: list[CalibrationName] = Field(min_length=1)
    cv_bootstrap_repetitions: int = Field(ge=50, le=10000, description="For the CV AUROC interval (gate).")
    n_jobs: int = Field(ge=1, le=64)
    candidates: dict[CandidateName, CandidateParams] = Field(min_length=1)
    internal_validation: InternalValidationParams
    sample_size: SampleSizeParams = Field(default_factory=SampleSizeParams)
    # a cross-validation fold with fewer events (or non-events) than this gives no usable calibration or AUROC:
    # a small cohort gets fewer folds, down to 2, and is refused below that
    min_fold_events: int = Field(default=3, ge=1, le=50)
    gate: GateParams
    risk_bands: list[RiskBandParams] = Field(min_length=1)

    @model_validator(mode="after")
    def _bands(self) -> TrainParams:
        uppers = [b.upper for b in self.risk_bands]
        if uppers != sorted(uppers) or len(set(uppers)) != len(uppers) or uppers[-1] != 1.0:
            raise ValueError("risk_bands must have increasing 'upper' values ending at 1.0")
        return self

    @model_validator(mode="after")
    def _selection(self) -> TrainParams:
        unordered = sorted(set(self.candidates) - set(self.selection.simplicity_order))
        if unordered:
            raise ValueError(f"selection.simplicity_order must list every candidate (missing: {unordered})")
        with_pairs = sorted(n for n, c in self.candidates.items() if c.interactions and n != "logreg_spline")
        if with_pairs:
            raise ValueError(f"only logreg_spline takes interactions (not {with_pairs})")
        return self


# --------------------------------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------------------------------


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
        # the same L2 logistic model on restricted cubic splines and declared products (pipeline/design.py)
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
            # the same fit and apply as the shipped CalibratedModel (pipeline.calibration)
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


def _per_patient_loss(metric: SelectionMetric, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_EPS, 1 - PROB_EPS)
    if metric == "brier":
        return (p - y) ** 2
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def selection_table(results: list[CandidateResult], y: np.ndarray, selection: SelectionParams) -> dict[str, Any]:
    """Each candidate's mean CV loss, its margin over the best and the paired SE of that margin, and the champion.

    The margin's SE is that of the mean per-patient difference in loss between the candidate's and the best
    candidate's calibrated out-of-fold predictions (the same patients, so the comparison is paired). Under
    ``one_se`` the champion is the first candidate in ``simplicity_order`` whose margin is at most
    ``se_multiplier`` SEs; under ``best`` it is the lowest loss (ties: the simpler).
    """
    order = {name: i for i, name in enumerate(selection.simplicity_order)}
    losses = {r.name: _per_patient_loss(selection.metric, y, r.oof) for r in results}
    means = {name: float(loss.mean()) for name, loss in losses.items()}
    best = min(means, key=lambda name: (means[name], order[name]))
    rows: dict[str, dict[str, Any]] = {}
    for name, loss in losses.items():
        diff = loss - losses[best]
        se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
        margin = means[name] - means[best]
        within = margin <= selection.se_multiplier * se + 1e-12
        rows[name] = {
            "mean_loss": means[name],
            "margin": margin,
            "margin_se": se,
            "margin_in_se": margin / se if se > 0 else (0.0 if margin == 0 else None),  # None: JSON has no inf
            "eligible": bool(within) if selection.rule == "one_se" else name == best,
            "simplicity_rank": order[name] + 1,
        }
    eligible = [name for name in rows if rows[name]["eligible"]]
    champion = min(eligible, key=lambda name: order[name])
    return {
        "metric": selection.metric,
        "rule": selection.rule,
        "se_multiplier": selection.se_multiplier,
        "simplicity_order": list(selection.simplicity_order),
        "best_by_metric": best,
        "champion": champion,
        "candidates": rows,
    }


def select_champion(results: list[CandidateResult], y: np.ndarray, selection: SelectionParams) -> CandidateResult:
    """The candidate the declared rule picks (see :func:`selection_table`)."""
    name = selection_table(results, y, selection)["champion"]
    return next(r for r in results if r.name == name)


# --------------------------------------------------------------------------------------------------------------
# internal validation: Harrell's bootstrap optimism correction of the champion's whole fitting procedure
# --------------------------------------------------------------------------------------------------------------


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
    from joblib import Parallel, delayed  # noqa: PLC0415 (scikit-learn's dependency)

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


def selection_rule_text(selection: SelectionParams) -> str:
    """The declared selection rule in words (MLflow tag, model card)."""
    order = " < ".join(selection.simplicity_order)
    if selection.rule == "best":
        return f"lowest cross-validated {selection.metric} (ties: the simpler, in the order {order})"
    return (
        f"the simplest candidate (order {order}) whose cross-validated {selection.metric} is within "
        f"{selection.se_multiplier:g} paired standard error(s) of the lowest"
    )


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested params -> dotted keys, for MLflow params."""
    if isinstance(value, dict):
        return dict(itertools.chain.from_iterable(flatten(f"{prefix}.{k}", v).items() for k, v in value.items()))
    return {prefix: value}


# --------------------------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------------------------

PARAMS_USED = ("base.seed", "tasks.{task}", "train")


@dataclass
class TrainedTask:
    """Everything the stage produces for one task, before anything is written."""

    task: str
    target: str
    results: list[CandidateResult]
    champion: CandidateResult
    estimator: BaseEstimator
    candidate_estimators: dict[str, BaseEstimator]  # every candidate refitted, for comparison on the test split
    example: pd.DataFrame  # a few feature rows, no identifiers (MLflow input example)
    n_train: int
    events_train: int
    selection: dict[str, Any] = field(default_factory=dict)  # selection_table: the rule, margins, SEs
    internal: dict[str, Any] = field(default_factory=dict)  # internal_validation of the champion
    protocol: dict[str, Any] = field(default_factory=dict)  # folds used, small-cohort rule, sample-size check


def train_task(
    task_name: str,
    target: str,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    params: TrainParams,
    seed: int,
    small_cohort: bool = False,
) -> TrainedTask:
    """Pure core of the stage: every candidate by CV, the champion, and its final fit.

    Folds adapt to the smaller outcome class (:func:`adapt_folds`); ``small_cohort`` (no held-out test split,
    split.json's protocol) prefers logistic regression (:func:`small_cohort_selection`).
    """
    for name, candidate in params.candidates.items():
        check_grid(name, candidate.grid, seed)
    folds = adapt_folds(y, params)
    if folds < params.cv_folds:
        log.warning("%s: %d cross-validation folds instead of %d (train.min_fold_events)", task_name, folds,
                    params.cv_folds)  # fmt: skip
    declared_folds = params.cv_folds
    update: dict[str, Any] = {"cv_folds": folds}
    if small_cohort:
        update["selection"] = small_cohort_selection(params.selection)
    params = params.model_copy(update=update)
    results = []
    failed: dict[str, str] = {}
    for name, candidate in params.candidates.items():
        try:
            result = evaluate_candidate(name, candidate, params, X, y, seed=seed)
        except ValueError as exc:
            # e.g. hist_gb cannot bin a column that is constant or empty in a fold of a small cohort: the candidate
            # leaves the race (recorded in cv_metrics.json), the others go on
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            failed[name] = lines[-1][:300] if lines else type(exc).__name__  # sklearn's last line is the cause
            log.warning("%s/%s: cannot be fitted on this cohort, left out of the selection: %s", task_name, name,
                        failed[name])  # fmt: skip
            continue
        log.info(
            "%s/%s: CV AUROC %.3f [%.3f, %.3f], log loss %.4f, calibration %s (%.1f s)",
            task_name, name, result.cv["cv_auroc"], result.cv["cv_auroc_lower"], result.cv["cv_auroc_upper"],
            result.cv["cv_log_loss"], result.calibration, result.seconds,
        )  # fmt: skip
        results.append(result)
    if not results:
        raise PipelineError(
            f"no candidate could be fitted on {len(y)} patients: {failed}",
            hint="add patients or pool cohorts (split.training_cohort takes a list)",
            exit_code=ExitCode.CONFIG,
        )
    selection = selection_table(results, y, params.selection)
    champion = next(r for r in results if r.name == selection["champion"])
    log.info(
        "%s: champion %s by %s (%s, best by %s: %s; margins in SE: %s)", task_name, champion.name,
        params.selection.rule, params.selection.metric, params.selection.metric, selection["best_by_metric"],
        ", ".join(f"{k} {v['margin_in_se'] or 0:.2f}" for k, v in selection["candidates"].items()),
    )  # fmt: skip
    fitted = {r.name: fit_final(r, X, y, folds=params.cv_folds, seed=seed) for r in results}
    internal = internal_validation(champion, fitted[champion.name], X, y, params=params, seed=seed)
    log.info(
        "%s: optimism-corrected AUROC %.3f [%.3f, %.3f], slope %.2f, from %d bootstrap refits (%.1f s)", task_name,
        internal["auroc"]["corrected"], internal["auroc"]["corrected_lower"], internal["auroc"]["corrected_upper"],
        internal["calibration_slope"]["corrected"], internal["repetitions_used"], internal["seconds"],
    )  # fmt: skip
    return TrainedTask(
        task=task_name,
        target=target,
        results=results,
        champion=champion,
        estimator=fitted[champion.name],
        candidate_estimators=fitted,
        example=X.head(5).reset_index(drop=True),
        n_train=len(y),
        events_train=int(y.sum()),
        selection=selection,
        internal=internal,
        protocol={
            "cv_folds": folds,
            "cv_folds_declared": declared_folds,
            "small_cohort": small_cohort,
            "selection_rule": selection_rule_text(params.selection),
            "candidates_failed": failed,
        },
    )


def cv_report(trained: TrainedTask, params: TrainParams) -> dict[str, Any]:
    """The DVC metrics file of the stage: CV performance of every candidate, the selection with its margins, the
    champion's name and its bootstrap internal validation."""
    return {
        "task": trained.task,
        "champion": trained.champion.name,
        "selection": trained.selection,
        "n_train": trained.n_train,
        "events_train": trained.events_train,
        "candidates": {
            r.name: {
                **r.cv,
                "calibration": r.calibration,
                "best_params": r.best_params,
                **({"interactions": [list(pair) for pair in r.interactions]} if r.interactions else {}),
            }
            for r in trained.results
        },
        # the champion's procedure validated on all the training data (evaluate puts it beside the test split)
        "internal_validation": {k: v for k, v in trained.internal.items() if k != "seconds"},
        "protocol": trained.protocol,
    }


def save_candidates(trained: TrainedTask, folder: Any) -> None:
    """Every candidate's final fit (skops, hash-checked on load) so evaluate can compare them on the test split."""
    from pipeline.io import atomic_folder  # noqa: PLC0415
    from pipeline.model import dump_estimator  # noqa: PLC0415

    with atomic_folder(folder) as staging:
        index = {}
        for name, estimator in trained.candidate_estimators.items():
            digest = dump_estimator(estimator, staging / f"{name}.skops")
            result = next(r for r in trained.results if r.name == name)
            index[name] = {"file": f"{name}.skops", "sha256": digest, "calibration": result.calibration}
        (staging / "candidates.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class TrainingInputs:
    """What the train stage reads: params, the task's feature spec and its training split as features/target."""

    task: Any
    params: TrainParams
    seed: int
    spec: Any
    train_path: Path
    X: pd.DataFrame
    y: np.ndarray
    cohorts: tuple[str, ...] = (DEFAULT_COHORT,)  # development cohort(s), from the rows themselves
    small_cohort: bool = False  # split.json: no held-out test split


def load_training_inputs(task_name: str, paths: Any) -> TrainingInputs:
    """Read params.yaml and the task's training split (also used by benchmarks/bench_train.py)."""
    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.features import FeatureSpec, build_features, build_target  # noqa: PLC0415
    from pipeline.io import read_parquet  # noqa: PLC0415
    from pipeline.params import BaseParams, parse_section, read_params_file  # noqa: PLC0415
    from pipeline.tasks import TasksParams, task_predictors  # noqa: PLC0415

    raw = read_params_file(paths.params_file)
    seed = parse_section(BaseParams, raw, "base", paths.params_file).seed
    task = parse_section(TasksParams, raw, "tasks", paths.params_file).get(task_name)
    params = parse_section(TrainParams, raw, "train", paths.params_file)
    contract = load_contract(paths.cohort_schema)
    spec = FeatureSpec.from_columns(task_name, task.target, task_predictors(task, contract, task_name))
    train_path = paths.processed_dir / task_name / "train.parquet"
    cohort = contract.coerce(read_parquet(train_path, "training split"))
    split_file = train_path.parent / "split.json"
    protocol = json.loads(split_file.read_text(encoding="utf-8")).get("protocol") if split_file.is_file() else None
    cohorts = tuple(sorted(cohort["cohort"].dropna().astype(str).unique())) or (DEFAULT_COHORT,)
    return TrainingInputs(
        task, params, seed, spec, train_path, build_features(cohort, spec), build_target(cohort, spec),
        cohorts=cohorts, small_cohort=protocol == SMALL_COHORT_PROTOCOL,
    )  # fmt: skip


def main(task_name: str) -> None:
    from pipeline import __version__  # noqa: PLC0415
    from pipeline.features import training_ranges  # noqa: PLC0415
    from pipeline.io import write_json  # noqa: PLC0415
    from pipeline.model import feature_signature, save_bundle, sha256_file  # noqa: PLC0415
    from pipeline.paths import ProjectPaths  # noqa: PLC0415

    paths = ProjectPaths.discover()
    inputs = load_training_inputs(task_name, paths)
    params, X, y = inputs.params, inputs.X, inputs.y
    log.info("%s: %d training patients, %d with the outcome, %d features", task_name, len(y), y.sum(), X.shape[1])
    registered_name = registered_model_name(task_name, inputs.cohorts)
    # before any fitting: the Riley minimum for this many candidate parameters (exit 6 below it, unless overridden)
    check = sample_size_gate(y, X.shape[1], params.sample_size, task=task_name, cohort="+".join(inputs.cohorts))
    trained = train_task(
        task_name, inputs.task.target, X, y, params=params, seed=inputs.seed, small_cohort=inputs.small_cohort
    )
    trained.protocol |= {
        "development_cohorts": list(inputs.cohorts),
        "registered_model_name": registered_name,
        "sample_size": check.as_dict() | {"override": params.sample_size.override},
        "underpowered": not check.passed,
    }

    info_fields = {
        "task": task_name,
        "target": inputs.task.target,
        "candidate": trained.champion.name,
        "calibration": trained.champion.calibration,
        "risk_bands": [b.model_dump() for b in params.risk_bands],
        "training_data_sha256": sha256_file(inputs.train_path),
        "n_train": trained.n_train,
        "registered_model_name": registered_name,
        "package_version": __version__,
        # applicability, stored so that the scorer needs no params.yaml: the task's minimum data for a score
        # (checked against its predictors when the inputs were loaded) and the training split's numeric ranges
        "scoring_rule": inputs.task.scoring.model_dump(),
        "training_ranges": training_ranges(X, inputs.spec),
        # what the probability is of, and who the model is for: the scorer's wording and eligibility check
        "outcome": inputs.task.outcome.model_dump(),
        "population": inputs.task.population.model_dump() if inputs.task.population else None,
    }
    model_dir = paths.models_dir / task_name
    save_bundle(
        model_dir,
        estimator=trained.estimator,
        feature_spec=inputs.spec,
        info_fields=info_fields,
        signature=feature_signature(inputs.spec.feature_names),
        input_example=trained.example,
    )
    write_json(cv_report(trained, params), paths.reports_dir / task_name / "cv_metrics.json")
    save_candidates(trained, paths.models_dir / "candidates" / task_name)
    log_to_mlflow(
        trained, params, paths.root, model_dir, features=X, train_path=inputs.train_path, seed=inputs.seed,
        description=inputs.task.description,
    )  # fmt: skip


def log_to_mlflow(
    trained: TrainedTask,
    params: TrainParams,
    root: Any,
    model_dir: Any,
    *,
    features: pd.DataFrame,
    train_path: Any,
    seed: int,
    description: str = "",
) -> dict[str, Any]:
    """One run per task, a nested run per candidate; the saved model logged once, registered, gated."""
    import mlflow  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415

    from pipeline import tracking  # noqa: PLC0415
    from pipeline.model import ESTIMATOR_FILE, MANIFEST_FILE, log_saved_model, sha256_file  # noqa: PLC0415

    name = trained.protocol.get("registered_model_name") or f"trd-{trained.task}"
    tracking.configure(root, name)
    reasons = tracking.gate_decision(
        trained.champion.cv, params.gate.min_cv_auroc_lower, tuple(params.gate.calibration_slope)
    )
    if trained.protocol.get("underpowered"):  # trained only because of the override: never the champion
        reasons.append("below the Riley minimum sample size (trained with train.sample_size.override)")
    with mlflow.start_run(run_name=f"train-{trained.task}", tags={**tracking.run_tags(root), "task": trained.task}):
        mlflow.log_params(
            {
                "seed": seed,
                "target": trained.target,
                "n_features": trained.example.shape[1],
                **flatten("train", params.model_dump(exclude={"candidates"})),
            }
        )
        # lineage without data: the digest and schema of the training features, never the rows or their ids
        with warnings.catch_warnings():
            # MLflow 3.17 registers its local-file source class twice and warns that the path is ambiguous
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            features_digest = mlflow.data.from_pandas(
                features, source=str(train_path.relative_to(root)), name=f"{trained.task}-train"
            )
        mlflow.log_input(features_digest, context="training")
        mlflow.set_tag("training_data_sha256", sha256_file(train_path))
        for path, digest in tracking.dvc_lock_hashes(root, "split").items():
            mlflow.set_tag(f"dvc_md5.{path}", digest)
        rows = trained.selection.get("candidates", {})
        for result in trained.results:
            with mlflow.start_run(
                run_name=result.name, nested=True, tags={**tracking.run_tags(root), "candidate": result.name}
            ):
                mlflow.log_params({f"hp.{k}": v for k, v in result.best_params.items()})
                mlflow.log_param("calibration", result.calibration)
                mlflow.log_metrics({**result.cv, "fit_seconds": result.seconds})
                mlflow.log_metrics({f"calibration_log_loss.{k}": v for k, v in result.calibration_log_loss.items()})
                numbers = {
                    k: float(v) for k, v in rows.get(result.name, {}).items() if k != "eligible" and v is not None
                }
                mlflow.log_metrics({f"selection.{k}": v for k, v in numbers.items() if math.isfinite(v)})
                mlflow.set_tag("selection_eligible", str(rows.get(result.name, {}).get("eligible")))
        mlflow.log_metrics({f"champion.{k}": v for k, v in trained.champion.cv.items()})
        mlflow.set_tags(
            {
                "development_cohorts": ",".join(trained.protocol.get("development_cohorts", [])),
                "small_cohort_protocol": str(trained.protocol.get("small_cohort", False)),
                "underpowered": str(trained.protocol.get("underpowered", False)),
            }
        )
        sizes = trained.protocol.get("sample_size", {})
        mlflow.log_metrics(
            {f"sample_size.{k}": float(v) for k, v in sizes.items() if isinstance(v, int | float) and v is not None}
        )
        mlflow.set_tag("champion", trained.champion.name)
        # the declared rule and how close the race was: a reviewer sees whether the champion won by noise
        mlflow.set_tags(
            {
                "selection_rule": selection_rule_text(params.selection),
                "selection_best_by_metric": str(trained.selection.get("best_by_metric")),
                "selection_margins": "; ".join(
                    f"{name} +{row['margin']:.4f} ({row['margin_in_se'] or 0:.2f} SE)" for name, row in rows.items()
                ),
            }
        )
        internal = {
            f"internal_validation.{name}.{key}": value
            for name in VALIDATED_METRICS
            for key, value in trained.internal.get(name, {}).items()
            if math.isfinite(value)
        }
        mlflow.log_metrics(internal)
        if trained.internal:
            mlflow.log_metric("internal_validation.repetitions_used", trained.internal["repetitions_used"])
        version = log_saved_model(model_dir, registered_name=name)
        MlflowClient().set_model_version_tag(
            name, version, "estimator_sha256", sha256_file(model_dir / "artifacts" / ESTIMATOR_FILE)
        )
        # identifies the whole model (every file the scorer reads); `trd score` prints the same hash
        manifest_sha256 = sha256_file(model_dir / "artifacts" / MANIFEST_FILE)
        mlflow.set_tag("model_manifest_sha256", manifest_sha256)
        MlflowClient().set_model_version_tag(name, version, "model_manifest_sha256", manifest_sha256)
        decision = tracking.promote_if_gated(name, version, reasons)
        tracking.describe_model(name, version, trained, description)
        mlflow.set_tags(
            {
                "gate_passed": str(decision["gate_passed"]),
                "gate_reasons": "; ".join(reasons) or "passed",  # why the alias did (not) move, on the run too
                "registered_version": version,
            }
        )
    return decision
