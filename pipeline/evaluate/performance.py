"""Performance of one score vector, the oracle references and leakage check, subgroups and how each model meets a
missing value: the pure pieces :func:`pipeline.evaluate.core.evaluate_task` assembles."""

from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import precision_recall_curve, roc_curve

from pipeline import metrics
from pipeline.errors import ConfigError, ModelError, PipelineError
from pipeline.evaluate.types import (
    AGE_BAND,
    IMPUTING_CANDIDATES,
    TREE_CANDIDATES,
    Candidate,
    EvaluateParams,
    Oracle,
    SubgroupParams,
)
from pipeline.modelling.bundle import predict_proba

if TYPE_CHECKING:  # the model module imports MLflow; only the type is needed here
    from pipeline.modelling.bundle import Bundle
    from pipeline.tasks import TaskSpec

log = logging.getLogger(__name__)


def check_models(task: TaskSpec, champion: Bundle, candidates: dict[str, Candidate]) -> None:
    """The champion must be the task's model and one of the candidates, from the same training run."""
    if champion.feature_spec.target != task.target:
        raise ModelError(
            f"the model predicts '{champion.feature_spec.target}' but the task's target is '{task.target}'",
            file=champion.path,
            hint="retrain the task (dvc repro train)",
        )
    entry = candidates.get(champion.info.candidate)
    if entry is None or entry.sha256 != champion.info.estimator_sha256:
        raise ModelError(
            f"the champion ('{champion.info.candidate}') is not among the saved candidates with the same hash: the "
            "model and the candidates come from different training runs",
            file=champion.path,
            hint="re-run the train stage so both are written together (dvc repro train)",
        )


def predict(estimator: Any, features: pd.DataFrame) -> np.ndarray:
    return predict_proba(estimator, features)


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2.0))


def wald(estimate: float, se: float, level: float) -> tuple[float, float]:
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return math.nan, math.nan
    half = _z(level) * se
    return estimate - half, estimate + half


def bootstrap(
    y: np.ndarray, p: np.ndarray, metric: Any, params: EvaluateParams, seed: int, *, stratify: bool
) -> metrics.BootstrapCI:
    return metrics.bootstrap_ci(
        y, p, metric, n_boot=params.bootstrap_repetitions, level=params.confidence_level, seed=seed, stratify=stratify
    )


def model_performance(
    y: np.ndarray, p: np.ndarray, params: EvaluateParams, seed: int, *, intervals_for_all: bool
) -> dict[str, float]:
    """Discrimination, overall accuracy and calibration of ``p`` against ``y``.

    AUROC and AUPRC always get bootstrap intervals; with ``intervals_for_all`` (the champion) so do Brier,
    scaled Brier, calibration-in-the-large and the calibration slope.
    """
    summary = metrics.performance_summary(y, p, n_bins=params.ece_bins)
    recal = metrics.logistic_recalibration(y, p)
    out: dict[str, float] = {
        "n": int(summary["n"]),
        "events": int(summary["events"]),
        "prevalence": summary["prevalence"],
        "mean_predicted": summary["mean_predicted"],
        "auroc": summary["auroc"],
        "auprc": summary["auprc"],
        "brier": summary["brier"],
        "scaled_brier": summary["scaled_brier"],
        "observed_minus_expected": summary["observed_minus_expected"],
        "calibration_in_the_large": metrics.calibration_in_the_large(y, p),
        "calibration_slope": summary["calibration_slope"],
        "recalibration_intercept": summary["recalibration_intercept"],
        "ece": summary["ece"],
    }
    interval_metrics: list[tuple[str, Any, bool]] = [("auroc", metrics.auroc, True), ("auprc", metrics.auprc, True)]
    if intervals_for_all:
        interval_metrics += [("brier", metrics.brier_score, False), ("scaled_brier", metrics.scaled_brier_score, False)]
    for name, metric, stratify in interval_metrics:
        ci = bootstrap(y, p, metric, params, seed, stratify=stratify)
        out[f"{name}_lower"], out[f"{name}_upper"] = ci.lower, ci.upper
    if intervals_for_all:
        level = params.confidence_level
        citl_lower, citl_upper = wald(recal.calibration_intercept, recal.calibration_intercept_se, level)
        slope_lower, slope_upper = wald(recal.slope, recal.slope_se, level)
        out |= {
            "calibration_in_the_large_lower": citl_lower,
            "calibration_in_the_large_upper": citl_upper,
            "calibration_slope_lower": slope_lower,
            "calibration_slope_upper": slope_upper,
        }
    return out


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """ROC curve corners (collinear points dropped): false- and true-positive rates, from (0, 0) to (1, 1)."""
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=True)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


def precision_recall_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Precision-recall curve in order of increasing recall (the steps average precision sums over)."""
    precision, recall, _ = precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall[::-1], "precision": precision[::-1]})


def oracle_probabilities(test: pd.DataFrame, truth: pd.DataFrame | None, column: str | None) -> Oracle:
    """Join the truth's ``column`` onto the test patients by ``patient_id``.

    Unavailable (with the reason) when no column is configured, there is no truth, the truth lacks the column,
    or no test patient is synthetic. Partial coverage is an error: the test split and the truth disagree.
    """
    if column is None:
        return Oracle(None, None, "no oracle column configured for this task (evaluate.oracle)")
    if truth is None:
        return Oracle(column, None, "no synthetic ground truth (data/raw/synthetic/truth.parquet) to compare with")
    if column not in truth.columns:
        return Oracle(column, None, f"the synthetic ground truth has no column '{column}'")
    if "patient_id" not in truth.columns:
        raise PipelineError("the synthetic ground truth has no patient_id column", column="patient_id")
    truth_ids = truth["patient_id"].astype("string").str.strip()
    if truth_ids.duplicated().any():
        raise PipelineError(
            "the synthetic ground truth has duplicate patient ids", hint="re-create it (dvc repro synthesize)"
        )
    values = pd.to_numeric(truth[column]).to_numpy(dtype="float64", na_value=np.nan)
    lookup = pd.Series(values, index=truth_ids.to_numpy())
    p = lookup.reindex(test["patient_id"].astype("string").str.strip().to_numpy()).to_numpy(dtype="float64")
    missing = int(np.isnan(p).sum())
    if missing == p.size:
        return Oracle(column, None, "no test patient is in the synthetic ground truth (is the test split synthetic?)")
    if missing:
        raise PipelineError(
            f"{missing} of {p.size} test patients have no '{column}' in the synthetic ground truth",
            hint="the test split and the truth come from different runs: dvc repro synthesize clean split",
        )
    return Oracle(column, p)


def label_agreement(test: pd.DataFrame, truth: pd.DataFrame | None, target: str) -> dict[str, float]:
    """How often the analysed (cleaned) label equals the generator's outcome, over the test patients in the truth:
    scale conversions and rounding in cleaning change a few labels, which no reference probability knows."""
    if truth is None or target not in truth.columns or "patient_id" not in truth.columns:
        return {}
    lookup = pd.Series(
        truth[target].astype("boolean").to_numpy(), index=truth["patient_id"].astype("string").str.strip().to_numpy()
    )
    generated = lookup.reindex(test["patient_id"].astype("string").str.strip().to_numpy())
    known = generated.notna().to_numpy()
    if not known.any():
        return {}
    analysed = test[target].astype("boolean").to_numpy()[known]
    agree = analysed == generated.to_numpy()[known]
    return {"n": int(known.sum()), "agree": float(agree.mean()), "disagree": int((~agree).sum())}


def internal_numbers(internal: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers of the train stage's internal validation (cv_metrics.json), for metrics.json."""
    if not internal:
        return {}
    # each validated metric is an object (estimate and interval); reading them so keeps evaluate off the train stage
    out: dict[str, Any] = {name: dict(value) for name, value in internal.items() if isinstance(value, dict)}
    out |= {k: internal[k] for k in ("repetitions", "repetitions_used", "n", "events") if k in internal}
    return out


def oracle_gaps(
    y: np.ndarray, predictions: dict[str, np.ndarray], oracle_p: np.ndarray, params: EvaluateParams, seed: int
) -> dict[str, dict[str, metrics.PairedBootstrapCI]]:
    """Model − oracle differences in AUROC (stratified) and Brier (whole-patient resampling), paired, per model."""
    gaps = {}
    for name, p in predictions.items():
        common = {"n_boot": params.bootstrap_repetitions, "level": params.confidence_level, "seed": seed}
        gaps[name] = {
            "auroc": metrics.paired_bootstrap_difference(y, p, oracle_p, metrics.auroc, stratify=True, **common),
            "brier": metrics.paired_bootstrap_difference(y, p, oracle_p, metrics.brier_score, stratify=False, **common),
        }
    return gaps


def check_leakage(gaps: dict[str, dict[str, metrics.PairedBootstrapCI]], level: float) -> None:
    """Stop when any model's AUROC exceeds the oracle's beyond bootstrap noise.

    The oracle holds the true P(outcome | what is known at the prediction time); no honest model can rank
    patients better in expectation. A paired interval entirely above 0 means the features carry information
    from after the prediction time (the outcome itself, a later measurement) or the split leaks.
    """
    leaky = {name: gap["auroc"] for name, gap in gaps.items() if gap["auroc"].lower > 0}
    if not leaky:
        return
    detail = "; ".join(
        f"'{name}' AUROC − oracle AUROC = {gap.estimate:+.3f} ({level:.0%} CI {gap.lower:+.3f} to {gap.upper:+.3f})"
        for name, gap in sorted(leaky.items())
    )
    raise PipelineError(
        f"possible leakage: model(s) beat the oracle (the true probabilities) beyond noise on the test split: "
        f"{detail}. No honest model can out-rank the truth, so the features carry outcome information.",
        hint="check the task's predictors (tasks.<task>, their timing in configs/cohort_schema.yaml) and that the "
        "split keeps each patient on one side; nothing was written",
    )


def age_band_labels(edges: tuple[int, ...]) -> list[str]:
    """'18-34', '35-49', …, '65+' for lower edges (18, 35, …, 65): ages in completed years."""
    return [f"{low}-{high - 1}" for low, high in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def age_bands(age: pd.Series, edges: tuple[int, ...]) -> pd.Series:
    """Age band per patient (ordered categories); missing or below the first edge stays missing."""
    values = pd.to_numeric(age).to_numpy(dtype="float64", na_value=np.nan)
    bins = [*map(float, edges), math.inf]
    return pd.Series(
        pd.cut(values, bins=bins, right=False, labels=age_band_labels(edges), ordered=True), index=age.index
    )


def subgroup_performance(test: pd.DataFrame, y: np.ndarray, p: np.ndarray, params: SubgroupParams) -> pd.DataFrame:
    """metrics.subgroup_table over the configured columns (age banded), with small-cell suppression."""
    frame = pd.DataFrame({"y": y, "p": p}, index=test.index)
    for column in params.columns:
        if column == AGE_BAND:
            frame[column] = age_bands(test["age"], params.age_bands)
        elif column in test.columns:
            frame[column] = test[column]
        else:
            raise ConfigError(f"evaluate.subgroups.columns: '{column}' is neither a cohort column nor '{AGE_BAND}'")
    if params.min_cell < metrics.DEFAULT_MIN_CELL:
        log.warning(
            "subgroup small-cell threshold lowered to %d (default %d): acceptable for synthetic data only",
            params.min_cell, metrics.DEFAULT_MIN_CELL,
        )  # fmt: skip
    return metrics.subgroup_table(frame, list(params.columns), y="y", p="p", min_cell=params.min_cell)


def _unwrap(estimator: Any) -> Any:
    """The fitted base estimator inside a calibrated model (pipeline.modelling.calibration, or a CalibratedClassifierCV
    with ensemble=False in models saved before it)."""
    if hasattr(estimator, "estimator_") and hasattr(estimator, "calibrator_method_"):
        return estimator.estimator_
    calibrated = getattr(estimator, "calibrated_classifiers_", None)
    return calibrated[0].estimator if calibrated else estimator


def missing_value_handling(candidate: str, estimator: Any, feature_names: list[str], missing: list[str]) -> dict:
    """How the champion treats the features that are missing for every external patient."""
    if candidate in TREE_CANDIDATES:
        return {
            "method": "native",
            "description": (
                f"{TREE_CANDIDATES[candidate]} (candidate '{candidate}') handles missing values natively: at each "
                "split a missing value follows the default branch learned in training, without imputation. Every "
                "external patient therefore takes the same default branches for the entirely missing features."
            ),
        }
    if candidate in IMPUTING_CANDIDATES:
        steps = getattr(_unwrap(estimator), "named_steps", {})
        indicator = getattr(steps.get("impute"), "indicator_", None)
        with_indicator = [feature_names[i] for i in indicator.features_] if indicator is not None else []
        if "design" in steps:  # pipeline.design.SplineDesign records its indicators among its terms
            with_indicator = [feature_names[t[1]] for t in steps["design"].terms_ if t[0] == "missing"]
        missing_with_indicator = [name for name in missing if name in with_indicator]
        return {
            "method": "median_imputation_with_indicators",
            "features_with_indicator": missing_with_indicator,
            "description": (
                f"{IMPUTING_CANDIDATES[candidate]} (candidate '{candidate}') replaces each missing feature by its "
                "training-split median and adds a missingness indicator for features that had missing values in "
                f"training ({len(missing_with_indicator)} of the {len(missing)} entirely missing feature columns "
                "here). External patients are scored as if typical of the training cohort on those features, and "
                "each indicator shifts every external prediction by a coefficient learned from the few training "
                "patients whose value was missing."
            ),
        }
    return {"method": "unknown", "description": f"candidate '{candidate}': missing-value handling not documented"}
