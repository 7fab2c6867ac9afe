"""Stage ``train@<task>``: tune, calibrate and select a classifier per task; track it in MLflow; save it.

Pure core (no I/O): :func:`make_estimator`, :func:`tune_candidate`, :func:`choose_calibration`,
:func:`fit_final`, :func:`select_champion`. ``main`` reads the task's split, runs every candidate, logs one
MLflow run per task with a nested run per candidate, registers the champion as ``trd-<task>`` (moving the
``champion`` alias only when the gate in params passes), and saves the same model to ``models/<task>/``.

Everything is decided on the training split by cross-validation: hyperparameters (search scored by log loss),
calibration (none / sigmoid / isotonic, by cross-validated log loss of calibrated out-of-fold predictions) and
the champion (by ``train.selection_metric``). The test split is never read here.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

from pipeline import metrics
from pipeline.errors import ConfigError
from pipeline.params import Frozen

log = logging.getLogger(__name__)

CandidateName = Literal["logreg", "xgboost", "hist_gb"]
CalibrationName = Literal["none", "sigmoid", "isotonic"]
SelectionMetric = Literal["log_loss", "brier", "auroc"]
PROB_EPS = 1e-6


class CandidateParams(Frozen):
    search_iterations: int = Field(ge=1, le=500, description="Random-search budget (whole grid if smaller).")
    grid: dict[str, list[float | int | str]] = Field(min_length=1)


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


class TrainParams(Frozen):
    cv_folds: int = Field(ge=2, le=20)
    selection_metric: SelectionMetric
    calibration_methods: list[CalibrationName] = Field(min_length=1)
    cv_bootstrap_repetitions: int = Field(ge=50, le=10000, description="For the CV AUROC interval (gate).")
    n_jobs: int = Field(ge=1, le=64)
    candidates: dict[CandidateName, CandidateParams] = Field(min_length=1)
    gate: GateParams
    risk_bands: list[RiskBandParams] = Field(min_length=1)

    @model_validator(mode="after")
    def _bands(self) -> TrainParams:
        uppers = [b.upper for b in self.risk_bands]
        if uppers != sorted(uppers) or len(set(uppers)) != len(uppers) or uppers[-1] != 1.0:
            raise ValueError("risk_bands must have increasing 'upper' values ending at 1.0")
        return self


# --------------------------------------------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------------------------------------------


def make_estimator(name: CandidateName, seed: int) -> BaseEstimator:
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
    if name == "xgboost":
        # missing values handled natively; one thread per fit, parallelism comes from the search
        return XGBClassifier(
            tree_method="hist", n_jobs=1, random_state=seed, eval_metric="logloss", objective="binary:logistic"
        )
    if name == "hist_gb":
        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False)
    raise ConfigError(f"unknown candidate '{name}'")  # pragma: no cover (Literal guards it)


def _search_space(name: CandidateName, grid: dict[str, list]) -> dict[str, list]:
    prefix = "model__" if name == "logreg" else ""
    return {f"{prefix}{key}": values for key, values in grid.items()}


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


def _folds(cv_folds: int, seed: int) -> StratifiedKFold:
    return StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)


def tune_candidate(
    name: CandidateName, params: CandidateParams, X: pd.DataFrame, y: np.ndarray, *, folds: int, seed: int, n_jobs: int
) -> dict[str, Any]:
    """Hyperparameters by cross-validated log loss on the training split (random search, or the whole grid)."""
    space = _search_space(name, params.grid)
    grid_size = math.prod(len(v) for v in space.values())
    estimator = make_estimator(name, seed)
    common = {"scoring": "neg_log_loss", "cv": _folds(folds, seed), "n_jobs": n_jobs, "refit": False}
    if params.search_iterations >= grid_size:
        search = GridSearchCV(estimator, space, **common)
    else:
        search = RandomizedSearchCV(estimator, space, n_iter=params.search_iterations, random_state=seed, **common)
    search.fit(X, y)
    return dict(search.best_params_)


def _calibrate(method: str, p_fit: np.ndarray, y_fit: np.ndarray, p_apply: np.ndarray) -> np.ndarray:
    """Fit a 1-D calibrator on (p_fit, y_fit) and apply it to p_apply (what CalibratedClassifierCV does)."""
    if method == "none":
        return p_apply
    if method == "sigmoid":
        model = LogisticRegression(C=1e6).fit(_logit(p_fit)[:, None], y_fit)  # Platt scaling on the logit
        return model.predict_proba(_logit(p_apply)[:, None])[:, 1]
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p_fit, y_fit)
    return iso.predict(p_apply)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_EPS, 1 - PROB_EPS)
    return np.log(p / (1 - p))


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
        for fit_idx, apply_idx in _folds(folds, seed + 1).split(oof.reshape(-1, 1), y):
            out[apply_idx] = _calibrate(method, oof[fit_idx], y[fit_idx], oof[apply_idx])
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
    estimator = make_estimator(name, seed).set_params(**best)
    raw_oof = cross_val_predict(
        estimator, X, y, cv=_folds(train.cv_folds, seed), method="predict_proba", n_jobs=train.n_jobs
    )[:, 1]
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
    )
    result.seconds = time.perf_counter() - started
    return result


def fit_final(result: CandidateResult, X: pd.DataFrame, y: np.ndarray, *, folds: int, seed: int) -> BaseEstimator:
    """Refit the chosen candidate on the whole training split, with its calibration."""
    estimator = make_estimator(result.name, seed).set_params(**result.best_params)  # type: ignore[arg-type]
    if result.calibration == "none":
        return estimator.fit(X, y)
    # an integer cv (unshuffled stratified folds) keeps the fitted object free of splitter objects for skops
    calibrated = CalibratedClassifierCV(clone(estimator), method=result.calibration, cv=folds, ensemble=False)
    return calibrated.fit(X, y)


def select_champion(results: list[CandidateResult], metric: SelectionMetric) -> CandidateResult:
    """The best candidate by the metric declared in params beforehand (ties: first listed)."""
    key = {"log_loss": "cv_log_loss", "brier": "cv_brier", "auroc": "cv_auroc"}[metric]
    sign = -1.0 if metric == "auroc" else 1.0
    return min(results, key=lambda r: (sign * r.cv[key], results.index(r)))


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


def train_task(
    task_name: str, target: str, X: pd.DataFrame, y: np.ndarray, *, params: TrainParams, seed: int
) -> TrainedTask:
    """Pure core of the stage: every candidate by CV, the champion, and its final fit."""
    for name, candidate in params.candidates.items():
        check_grid(name, candidate.grid, seed)
    results = []
    for name, candidate in params.candidates.items():
        result = evaluate_candidate(name, candidate, params, X, y, seed=seed)
        log.info(
            "%s/%s: CV AUROC %.3f [%.3f, %.3f], log loss %.4f, calibration %s (%.1f s)",
            task_name, name, result.cv["cv_auroc"], result.cv["cv_auroc_lower"], result.cv["cv_auroc_upper"],
            result.cv["cv_log_loss"], result.calibration, result.seconds,
        )  # fmt: skip
        results.append(result)
    champion = select_champion(results, params.selection_metric)
    fitted = {r.name: fit_final(r, X, y, folds=params.cv_folds, seed=seed) for r in results}
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
    )


def cv_report(trained: TrainedTask, params: TrainParams) -> dict[str, Any]:
    """The DVC metrics file of the stage: CV performance of every candidate and the champion's name."""
    return {
        "task": trained.task,
        "champion": trained.champion.name,
        "selection_metric": params.selection_metric,
        "n_train": trained.n_train,
        "events_train": trained.events_train,
        "candidates": {
            r.name: {**r.cv, "calibration": r.calibration, "best_params": r.best_params} for r in trained.results
        },
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
    spec = FeatureSpec.from_columns(task_name, task.target, task_predictors(task, contract))
    train_path = paths.processed_dir / task_name / "train.parquet"
    cohort = contract.coerce(read_parquet(train_path, "training split"))
    return TrainingInputs(
        task, params, seed, spec, train_path, build_features(cohort, spec), build_target(cohort, spec)
    )


def main(task_name: str) -> None:
    from pipeline import __version__  # noqa: PLC0415
    from pipeline.io import write_json  # noqa: PLC0415
    from pipeline.model import feature_signature, save_bundle, sha256_file  # noqa: PLC0415
    from pipeline.paths import ProjectPaths  # noqa: PLC0415

    paths = ProjectPaths.discover()
    inputs = load_training_inputs(task_name, paths)
    params, X, y = inputs.params, inputs.X, inputs.y
    log.info("%s: %d training patients, %d responders, %d features", task_name, len(y), y.sum(), X.shape[1])
    trained = train_task(task_name, inputs.task.target, X, y, params=params, seed=inputs.seed)

    info_fields = {
        "task": task_name,
        "target": inputs.task.target,
        "candidate": trained.champion.name,
        "calibration": trained.champion.calibration,
        "risk_bands": [b.model_dump() for b in params.risk_bands],
        "training_data_sha256": sha256_file(inputs.train_path),
        "n_train": trained.n_train,
        "registered_model_name": f"trd-{task_name}",
        "package_version": __version__,
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
    log_to_mlflow(trained, params, paths.root, model_dir, features=X, train_path=inputs.train_path, seed=inputs.seed)


def log_to_mlflow(
    trained: TrainedTask,
    params: TrainParams,
    root: Any,
    model_dir: Any,
    *,
    features: pd.DataFrame,
    train_path: Any,
    seed: int,
) -> dict[str, Any]:
    """One run per task, a nested run per candidate; the saved model logged once, registered, gated."""
    import mlflow  # noqa: PLC0415
    from mlflow import MlflowClient  # noqa: PLC0415

    from pipeline import tracking  # noqa: PLC0415
    from pipeline.model import ESTIMATOR_FILE, log_saved_model, sha256_file  # noqa: PLC0415

    name = f"trd-{trained.task}"
    tracking.configure(root, name)
    reasons = tracking.gate_decision(
        trained.champion.cv, params.gate.min_cv_auroc_lower, tuple(params.gate.calibration_slope)
    )
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
        for result in trained.results:
            with mlflow.start_run(run_name=result.name, nested=True, tags={"candidate": result.name}):
                mlflow.log_params({f"hp.{k}": v for k, v in result.best_params.items()})
                mlflow.log_param("calibration", result.calibration)
                mlflow.log_metrics({**result.cv, "fit_seconds": result.seconds})
                mlflow.log_metrics({f"calibration_log_loss.{k}": v for k, v in result.calibration_log_loss.items()})
        mlflow.log_metrics({f"champion.{k}": v for k, v in trained.champion.cv.items()})
        mlflow.set_tag("champion", trained.champion.name)
        version = log_saved_model(model_dir, registered_name=name)
        MlflowClient().set_model_version_tag(
            name, version, "estimator_sha256", sha256_file(model_dir / "artifacts" / ESTIMATOR_FILE)
        )
        decision = tracking.promote_if_gated(name, version, reasons)
        mlflow.set_tags(
            {
                "gate_passed": str(decision["gate_passed"]),
                "gate_reasons": "; ".join(reasons) or "passed",  # why the alias did (not) move, on the run too
                "registered_version": version,
            }
        )
    return decision
