"""Stage ``evaluate@<task>``: validate a task's models the way clinical prediction models are validated.

What is measured, all with :mod:`pipeline.metrics`:

1. **Held-out test split** (the champion and every candidate): AUROC and AUPRC with seeded bootstrap intervals,
   Brier and scaled Brier, calibration-in-the-large (log-odds intercept with the slope fixed to 1, and observed −
   expected on the risk scale), calibration slope with the recalibration intercept, ECE, a binned calibration
   curve with Wilson intervals; for the champion also a threshold table (sensitivity, specificity, PPV, NPV, NNE,
   net benefit) and a decision curve against treat-all and treat-none.
2. **Two references from the synthetic ground truth**, scored on the same test patients and against the same
   (cleaned, complete-case) labels as the model: the *generating probability* (``evaluate.oracle``: the true
   P(outcome | predictors and site), the ceiling of the data-generating process) and the *predictors-only
   probability* (``evaluate.oracle_predictors``: the site marginalised, the best any model of the task's own
   predictors can reach). Neither is the exact optimum for the scored labels: cleaning changes a few labels
   (their agreement with the generator's outcome is reported) and only patients with a known outcome are scored.
   A model that beats the generating probability beyond noise (the lower bound of the paired bootstrap interval of
   model AUROC − its AUROC above 0) can only be reading information it should not have, so the stage stops with a
   :class:`~pipeline.errors.PipelineError` rather than publish leaked performance.
3. **Internal validation** of the champion on all the training data (Harrell's bootstrap optimism correction,
   computed by the train stage and copied from ``reports/<task>/cv_metrics.json`` so it sits beside the test
   split's figures).
4. **Subgroups** (sex, age band, route, site, psychotherapy): n, event rate, AUROC, O − E and ratios to overall,
   with small-cell suppression.
5. **External validation** on the real NIMH cohort (ds005917) for tasks whose target it records: discrimination,
   rank correlation with the continuous MADRS change, calibration-in-the-large, and the saline period as a
   negative control, with a plain-text statement of what 27 patients can and cannot show.

Pure core: :func:`evaluate_task` (frames, models and typed params in, an :class:`Evaluation` out) and the
functions it calls. ``main`` reads params and files, writes ``reports/<task>/evaluation/`` (one folder, replaced
atomically) and logs metrics and figures to the task's MLflow training run when it can find it.

Intervals: percentile bootstrap seeded from ``base.seed`` (the same resamples for every model, so comparisons
are paired). Discrimination metrics resample events and non-events separately (every resample keeps both
classes); Brier-type metrics resample patients as a whole, so their intervals include the sampling variability
of the prevalence that calibration depends on. Calibration intercept and slope get Wald intervals from the
model-based standard errors of the recalibration fit (Van Calster et al. 2019), which, unlike a
prevalence-stratified bootstrap, reflect the uncertainty in the observed event rate.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator
from scipy import stats
from sklearn.metrics import precision_recall_curve, roc_curve

from pipeline import metrics
from pipeline.errors import ConfigError, ModelError, PipelineError
from pipeline.features import build_features, build_target
from pipeline.params import Frozen

if TYPE_CHECKING:  # the model module imports MLflow; only the type is needed here
    from pipeline.modelling.bundle import Bundle
    from pipeline.tasks import TaskSpec

log = logging.getLogger(__name__)

PARAMS_USED = ("base.seed", "tasks.{task}", "evaluate")

AGE_BAND = "age_band"  # derived subgroup column: age cut at evaluate.subgroups.age_bands
CHAMPION = "champion"
ORACLE = "oracle"
ORACLE_PREDICTORS = "oracle_predictors"
OUTPUT_FOLDER = "evaluation"  # reports/<task>/evaluation/, the stage's one DVC out
FIGURE_DPI = 120
CSV_FLOAT_FORMAT = "%.6g"  # plot data and tables: six significant digits are plenty and keep diffs readable

# Intervals computed for the champion only (see model_performance); candidates get AUROC and AUPRC intervals.
CHAMPION_ONLY_INTERVALS = frozenset(
    f"{metric}_{bound}"
    for metric in ("brier", "scaled_brier", "calibration_in_the_large", "calibration_slope")
    for bound in ("lower", "upper")
)
# How each candidate family (pipeline/train.py make_estimator) treats a missing feature at prediction time.
TREE_CANDIDATES = {"xgboost": "XGBoost", "hist_gb": "histogram gradient boosting"}
IMPUTING_CANDIDATES = {"logreg": "logistic regression", "logreg_spline": "spline logistic regression"}
# Events below which an external validation is called a sanity check: the usual minimum for validation studies
# (Vergouwe et al. J Clin Epidemiol 2005; Collins, Ogundimu & Altman, Stat Med 2016; docs/literature.md §7b).
EXTERNAL_VALIDATION_EVENTS = 100


# --------------------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------------------


class DecisionCurveParams(Frozen):
    start: float = Field(gt=0.0, lt=1.0, description="Lowest threshold probability on the decision curve.")
    stop: float = Field(gt=0.0, lt=1.0, description="Highest threshold probability (inclusive).")
    step: float = Field(gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> DecisionCurveParams:
        if not self.start < self.stop:
            raise ValueError("decision_curve: start must be below stop")
        return self

    def grid(self) -> np.ndarray:
        count = round((self.stop - self.start) / self.step) + 1
        return np.round(self.start + self.step * np.arange(count), 6)


class SubgroupParams(Frozen):
    columns: tuple[str, ...] = Field(min_length=1, description="Canonical columns, or 'age_band'.")
    age_bands: tuple[int, ...] = Field(min_length=1, description="Lower edges of the age bands, in years.")
    min_cell: int = Field(default=metrics.DEFAULT_MIN_CELL, ge=1, description="Small-cell suppression threshold.")

    @model_validator(mode="after")
    def _valid(self) -> SubgroupParams:
        if list(self.age_bands) != sorted(set(self.age_bands)):
            raise ValueError("subgroups.age_bands must be strictly increasing")
        if "patient_id" in self.columns:  # its levels would be written out: identifiers never leave data/
            raise ValueError("subgroups.columns cannot include the patient identifier")
        return self


class ExternalOutcomes(Frozen):
    """What the external cohort records beside a task's target (all optional)."""

    continuous: str | None = Field(default=None, description="Percent MADRS change; ranked against p.")
    negative_control: str | None = Field(default=None, description="Binary outcome the model should not predict.")
    negative_control_madrs: str | None = Field(
        default=None, description="MADRS after the control condition; its percent change from baseline is ranked."
    )


class ExternalParams(Frozen):
    cohort: str = Field(min_length=1, description="Value of the 'cohort' column that marks the external patients.")
    outcomes: dict[str, ExternalOutcomes] = Field(default_factory=dict, description="Per task target.")
    min_events_for_interval: int = Field(ge=1, description="Fewer events or non-events: no bootstrap interval.")


class EvaluateParams(Frozen):
    bootstrap_repetitions: int = Field(ge=100, le=100_000)
    confidence_level: float = Field(gt=0.5, lt=1.0)
    calibration_bins: int = Field(ge=2, le=50, description="Equal-count bins of the calibration curve.")
    ece_bins: int = Field(ge=2, le=50, description="Equal-width bins of the expected calibration error.")
    thresholds: tuple[float, ...] = Field(min_length=1, description="Threshold table probabilities.")
    decision_curve: DecisionCurveParams
    subgroups: SubgroupParams
    oracle: dict[str, str] = Field(description="Task -> truth.parquet column: the generating probability.")
    oracle_predictors: dict[str, str] = Field(
        default_factory=dict, description="Task -> truth.parquet column: the probability given its predictors only."
    )
    external: ExternalParams

    @model_validator(mode="after")
    def _thresholds(self) -> EvaluateParams:
        if any(not 0.0 < t < 1.0 for t in self.thresholds) or list(self.thresholds) != sorted(set(self.thresholds)):
            raise ValueError("thresholds must be strictly increasing probabilities in (0, 1)")
        return self


# --------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One candidate's final fit, as saved by the train stage (models/candidates/<task>/)."""

    estimator: Any
    sha256: str
    calibration: str


def load_candidates(folder: Path) -> dict[str, Candidate]:
    """Every candidate in ``candidates.json``, hash-checked and loaded with the trusted-types list, by name."""
    from pipeline.modelling.bundle import load_estimator  # noqa: PLC0415 (imports MLflow)

    index_path = Path(folder) / "candidates.json"
    if not index_path.is_file():
        raise ModelError("candidate index missing", file=index_path, hint="run the train stage (dvc repro train)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        entries = {name: (str(e["file"]), str(e["sha256"]), str(e["calibration"])) for name, e in index.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"candidate index unreadable ({exc})", file=index_path) from None
    return {
        name: Candidate(load_estimator(Path(folder) / file, sha256), sha256, calibration)
        for name, (file, sha256, calibration) in sorted(entries.items())
    }


def _check_models(task: TaskSpec, champion: Bundle, candidates: dict[str, Candidate]) -> None:
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


def _predict(estimator: Any, features: pd.DataFrame) -> np.ndarray:
    from pipeline.modelling.bundle import predict_proba  # noqa: PLC0415

    return predict_proba(estimator, features)


# --------------------------------------------------------------------------------------------------------------
# performance of one score vector
# --------------------------------------------------------------------------------------------------------------


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2.0))


def _wald(estimate: float, se: float, level: float) -> tuple[float, float]:
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return math.nan, math.nan
    half = _z(level) * se
    return estimate - half, estimate + half


def _bootstrap(
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
        ci = _bootstrap(y, p, metric, params, seed, stratify=stratify)
        out[f"{name}_lower"], out[f"{name}_upper"] = ci.lower, ci.upper
    if intervals_for_all:
        level = params.confidence_level
        citl_lower, citl_upper = _wald(recal.calibration_intercept, recal.calibration_intercept_se, level)
        slope_lower, slope_upper = _wald(recal.slope, recal.slope_se, level)
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


# --------------------------------------------------------------------------------------------------------------
# oracle and leakage
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oracle:
    """The true probabilities of the test patients, or why they are unavailable."""

    column: str | None
    p: np.ndarray | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.p is not None


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
    from pipeline.modelling.params import VALIDATED_METRICS  # noqa: PLC0415 (imports scikit-learn)

    out: dict[str, Any] = {name: dict(internal[name]) for name in VALIDATED_METRICS if name in internal}
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


# --------------------------------------------------------------------------------------------------------------
# subgroups
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# external validation
# --------------------------------------------------------------------------------------------------------------


def _unwrap(estimator: Any) -> Any:
    """The fitted base estimator inside a calibrated model (pipeline.calibration, or a CalibratedClassifierCV with
    ensemble=False in models saved before it)."""
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


def _auroc_with_interval(
    y: np.ndarray, p: np.ndarray, params: EvaluateParams, seed: int
) -> tuple[dict[str, float], str | None]:
    """AUROC and, when both classes have at least ``min_events_for_interval`` patients, DeLong's interval (logit
    scale; it behaves with few events), the stratified bootstrap interval beside it, and the leave-one-out range."""
    events = int(y.sum())
    out = {"n": int(y.size), "events": events, "auroc": metrics.auroc(y, p), "auroc_lower": math.nan}
    out["auroc_upper"] = math.nan
    minimum = params.external.min_events_for_interval
    if min(events, y.size - events) < minimum:
        return out, f"no interval: fewer than {minimum} events or non-events"
    delong = metrics.delong_ci(y, p, level=params.confidence_level)
    ci = _bootstrap(y, p, metrics.auroc, params, seed, stratify=True)
    note = None
    lower, upper = delong.lower, delong.upper
    if not (math.isfinite(lower) and math.isfinite(upper)):  # AUROC 0 or 1: DeLong's variance is 0
        lower, upper = ci.lower, ci.upper
        note = "DeLong's interval is undefined at an AUROC of 0 or 1: the bootstrap interval is shown"
    out |= {
        "auroc_lower": lower,
        "auroc_upper": upper,
        "auroc_se": delong.se,
        "auroc_bootstrap_lower": ci.lower,
        "auroc_bootstrap_upper": ci.upper,
        "auroc_loo_min": delong.loo_min,
        "auroc_loo_max": delong.loo_max,
    }
    return out, note


def _spearman(p: np.ndarray, outcome: np.ndarray, level: float) -> dict[str, float]:
    known = ~np.isnan(outcome)
    if not known.any():  # the cohort has the column but no value in it
        return {"spearman_n": 0, "spearman_rho": math.nan, "spearman_lower": math.nan, "spearman_upper": math.nan}
    result = metrics.spearman_ci(p[known], outcome[known], level=level)
    return {
        "spearman_n": result.n,
        "spearman_rho": result.estimate,
        "spearman_lower": result.lower,
        "spearman_upper": result.upper,
        "spearman_p": result.p_value,
    }


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column]).to_numpy(dtype="float64", na_value=np.nan)


def _binary(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows where ``column`` is known, and its 0/1 values there."""
    known = frame[column].notna().to_numpy()
    return known, frame.loc[known, column].astype(bool).to_numpy(dtype="int64")


def _check_outcome_columns(outcomes: ExternalOutcomes, cohort: pd.DataFrame) -> None:
    for column in (outcomes.continuous, outcomes.negative_control, outcomes.negative_control_madrs):
        if column is not None and column not in cohort.columns:
            raise ConfigError(f"evaluate.external.outcomes names '{column}', which is not a cohort column")


def external_validation(
    cohort: pd.DataFrame,
    champion: Bundle,
    params: EvaluateParams,
    seed: int,
    *,
    name: str | None = None,
    development: tuple[str, ...] = ("synthetic",),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score an external cohort's patients with a known target; return (numbers for metrics.json, report).

    ``name`` defaults to ``evaluate.external.cohort``, the only one whose extra outcomes (continuous, negative
    control) are configured; a development cohort is never its own external validation.
    """
    ext = params.external
    name = name or ext.cohort
    target = champion.feature_spec.target
    if name in development:
        return {}, {"available": False, "reason": f"{name} is the development cohort of this model"}
    rows = cohort[(cohort["cohort"].astype("string") == name).fillna(False).to_numpy(dtype=bool)]
    if rows.empty:
        return {}, {"available": False, "reason": f"the clean cohort has no '{name}' patients"}
    if target not in rows.columns or rows[target].notna().sum() == 0:
        reason = f"{name} does not record this task's target '{target}'"
        return {}, {"available": False, "reason": reason}
    known_target = rows[target].notna().to_numpy()
    if len(set(rows.loc[known_target, target].astype(bool))) < 2:
        return {}, {"available": False, "reason": f"{name} has only one outcome class for '{target}'"}
    outcomes = ext.outcomes.get(target, ExternalOutcomes()) if name == ext.cohort else ExternalOutcomes()
    _check_outcome_columns(outcomes, rows)
    level = params.confidence_level

    features = build_features(rows, champion.feature_spec)
    p_all = champion.predict(features)
    known, y = _binary(rows, target)
    p = p_all[known]
    spec = champion.feature_spec
    # a canonical column is entirely missing when none of its feature columns (one per one-hot level) has a value
    observed = features.loc[known].notna().any(axis=0)
    observed_columns = {column for feature, column in spec.feature_to_column().items() if observed[feature]}
    entirely_missing = [c for c in spec.input_columns if c not in observed_columns]
    missing_features = [f for f in spec.feature_names if not observed[f]]

    numbers, interval_note = _auroc_with_interval(y, p, params, seed)
    recal = metrics.logistic_recalibration(y, p)
    citl_lower, citl_upper = _wald(recal.calibration_intercept, recal.calibration_intercept_se, level)
    slope_lower, slope_upper = _wald(recal.slope, recal.slope_se, level)
    (rate_lower,), (rate_upper,) = metrics.wilson_ci([int(y.sum())], [y.size], level=level)
    numbers |= {
        "mean_predicted": float(p.mean()),
        "observed_rate": float(y.mean()),
        "observed_rate_lower": float(rate_lower),
        "observed_rate_upper": float(rate_upper),
        "observed_minus_expected": metrics.observed_minus_expected(y, p),
        "calibration_in_the_large": recal.calibration_intercept,
        "calibration_in_the_large_lower": citl_lower,
        "calibration_in_the_large_upper": citl_upper,
        "calibration_slope": recal.slope,
        "calibration_slope_lower": slope_lower,
        "calibration_slope_upper": slope_upper,
        "features_entirely_missing": len(entirely_missing),
        "features_total": len(spec.input_columns),
    }
    if outcomes.continuous is not None:
        numbers |= _spearman(p_all, _numeric(rows, outcomes.continuous), level)

    control: dict[str, float] = {}
    control_note = None
    if outcomes.negative_control is not None:
        control_known, control_y = _binary(rows, outcomes.negative_control)
        if control_known.any():
            control, control_note = _auroc_with_interval(control_y, p_all[control_known], params, seed)
    if outcomes.negative_control_madrs is not None:
        baseline = _numeric(rows, "madrs_baseline")
        with np.errstate(divide="ignore", invalid="ignore"):
            control_change = 100.0 * (_numeric(rows, outcomes.negative_control_madrs) - baseline) / baseline
        control_change[~np.isfinite(control_change)] = np.nan
        control |= _spearman(p_all, control_change, level)
    if control:
        numbers["negative_control"] = control

    candidate = champion.info.candidate
    report = {
        "available": True,
        "cohort": name,
        "target": target,
        "model": {"candidate": candidate, "calibration": champion.info.calibration},
        "n": numbers["n"],
        "events": numbers["events"],
        "features_entirely_missing": entirely_missing,
        "features_observed": [c for c in spec.input_columns if c not in entirely_missing],
        "missing_value_handling": missing_value_handling(
            candidate, champion.estimator, spec.feature_names, missing_features
        ),
        "auroc_interval_note": interval_note,
        "continuous_outcome": outcomes.continuous,
        "continuous_outcome_expected_sign": "negative (higher predicted probability, larger MADRS drop)",
        "negative_control": {
            "outcome": outcomes.negative_control,
            "madrs": outcomes.negative_control_madrs,
            "auroc_interval_note": control_note,
        },
        "metrics": numbers,
        "limitations": external_limitations(
            numbers,
            cohort=name,
            target=target,
            missing=entirely_missing,
            inputs=spec.input_columns,
            level=level,
            development=development,
        ),
    }
    return numbers, report


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "undefined"


def _interval(lower: float, upper: float, level: float, digits: int = 2) -> str:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return "no interval"
    return f"{level:.0%} CI {lower:.{digits}f} to {upper:.{digits}f}"


def _reading(lower: float, upper: float, null: float, *, below: str, inside: str, above: str) -> str:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return "no interval could be estimated, so the point estimate is not interpretable"
    if lower > null:
        return above
    if upper < null:
        return below
    return inside


def external_limitations(
    numbers: dict[str, Any],
    *,
    cohort: str,
    target: str,
    missing: list[str],
    inputs: list[str],
    level: float,
    development: tuple[str, ...] = ("synthetic",),
) -> str:
    """Plain text: what the external numbers can and cannot support, worded from the intervals themselves."""
    n, events = numbers["n"], numbers["events"]
    small = events < EXTERNAL_VALIDATION_EVENTS
    parts = [
        f"External check on {n} patients with {events} responders ({cohort}; target {target}). "
        + (
            "This is a sanity check, not a validation study: external validation is usually planned with at least "
            f"about {EXTERNAL_VALIDATION_EVENTS} events, and no claim beyond the intervals below is supported."
            if small
            else "No claim beyond the intervals below is supported."
        ),
        f"{len(missing)} of the model's {len(inputs)} input columns are missing for every patient here "
        f"({', '.join(missing) if missing else 'none'}), so the model runs on a reduced set of information."
        if missing
        else "Every input column of the model is recorded for at least some of these patients.",
    ]
    lower, upper = numbers["auroc_lower"], numbers["auroc_upper"]
    auroc_text = _reading(
        lower, upper, 0.5,
        below="the interval lies below 0.5: on these patients the model ranks worse than chance",
        inside="the interval includes 0.5: these data cannot distinguish the model from chance",
        above="the interval lies above 0.5, consistent with better-than-chance ranking of these patients; with so "
        "few events the size of the effect remains uncertain",
    )  # fmt: skip
    parts.append(f"AUROC {_fmt(numbers['auroc'])} ({_interval(lower, upper, level)}): {auroc_text}.")
    if math.isfinite(numbers.get("auroc_loo_min", math.nan)):
        parts.append(
            f"The estimate is unstable: leaving out any one of the {n} patients moves it between "
            f"{_fmt(numbers['auroc_loo_min'])} and {_fmt(numbers['auroc_loo_max'])}, and the stratified bootstrap "
            f"gives {_interval(numbers['auroc_bootstrap_lower'], numbers['auroc_bootstrap_upper'], level)}."
        )
    if "spearman_rho" in numbers and math.isfinite(numbers["spearman_rho"]):
        rho_text = _reading(
            numbers["spearman_lower"], numbers["spearman_upper"], 0.0,
            below="negative, the expected direction (higher predicted probability, larger drop)",
            inside="the interval includes 0, so no association is shown",
            above="positive, opposite to the expected direction",
        )  # fmt: skip
        interval = _interval(numbers["spearman_lower"], numbers["spearman_upper"], level)
        parts.append(
            f"Spearman rho between predicted probability and percent MADRS change "
            f"{numbers['spearman_rho']:.2f} (n = {numbers['spearman_n']}, {interval}): {rho_text}."
        )
    parts.append(
        f"Observed response rate {numbers['observed_rate']:.2f} "
        f"({_interval(numbers['observed_rate_lower'], numbers['observed_rate_upper'], level)}) against a mean "
        f"predicted probability of {numbers['mean_predicted']:.2f}; a model developed on "
        f"{' + '.join(development)} data is not expected to be calibrated for a different population"
        + (", and the calibration slope from so few events is too imprecise to read." if small else ".")
    )
    control = numbers.get("negative_control", {})
    if control:
        text = "Negative control (saline infusion): "
        if "auroc" in control:
            if min(control["events"], control["n"] - control["events"]) < 2:
                text += (
                    f"{control['events']} responder(s) among {control['n']} patients, too few for the AUROC "
                    f"({_fmt(control['auroc'])}) to mean anything"
                )
            else:
                interval = _interval(control["auroc_lower"], control["auroc_upper"], level)
                text += f"AUROC {_fmt(control['auroc'])} ({interval})"
        if "spearman_rho" in control and math.isfinite(control["spearman_rho"]):
            rho_text = _reading(
                control["spearman_lower"], control["spearman_upper"], 0.0,
                below="it excludes 0, so the score may also track non-specific (placebo) improvement",
                inside="its interval includes 0, as expected if the score is specific to ketamine, though so small "
                "a sample cannot show specificity",
                above="it excludes 0 in the unexpected direction",
            )  # fmt: skip
            text += (
                f"{'; ' if 'auroc' in control else ''}rank correlation with the percent MADRS change after saline "
                f"{control['spearman_rho']:.2f} "
                f"({_interval(control['spearman_lower'], control['spearman_upper'], level)}): {rho_text}"
            )
        parts.append(text + ".")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# the whole evaluation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Everything the stage writes, before anything is written."""

    task: str
    metrics: dict[str, Any]  # nested numbers only -> metrics.json (DVC metrics, MLflow metrics)
    report: dict[str, Any]  # structure and text -> evaluation.json
    thresholds: pd.DataFrame
    subgroups: pd.DataFrame
    calibration_curves: pd.DataFrame  # every model, long format
    curves: dict[str, dict[str, pd.DataFrame]]  # kind -> model -> points, for plot data and figures
    decision_curves: dict[str, pd.DataFrame]  # champion (with treat-all/none), oracle
    champion_p: np.ndarray
    y: np.ndarray


def _gap_numbers(gap: dict[str, metrics.PairedBootstrapCI]) -> dict[str, float]:
    return {
        "auroc": gap["auroc"].estimate,
        "auroc_lower": gap["auroc"].lower,
        "auroc_upper": gap["auroc"].upper,
        "auroc_share_positive": gap["auroc"].share_positive,
        "brier": gap["brier"].estimate,
        "brier_lower": gap["brier"].lower,
        "brier_upper": gap["brier"].upper,
    }


def predictors_reference(
    y: np.ndarray, predictions: dict[str, np.ndarray], reference: Oracle, *, champion: str, params: EvaluateParams,
    seed: int,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:  # fmt: skip
    """The predictors-only probability's performance and the champion's paired gap to it (for metrics.json), and
    each candidate's AUROC gap (for its row of ``test.candidates``); empty when the reference is unavailable."""
    if reference.p is None:
        return {}, {}
    names = [CHAMPION, *(name for name in predictions if name not in (CHAMPION, champion))]
    gaps = oracle_gaps(y, {name: predictions[name] for name in names}, reference.p, params, seed)
    gaps[champion] = gaps[CHAMPION]
    numbers = {
        ORACLE_PREDICTORS: model_performance(y, reference.p, params, seed, intervals_for_all=True),
        "gap_predictors": _gap_numbers(gaps[CHAMPION]),
    }
    by_candidate = {
        name: {f"predictors_gap_{k}": v for k, v in _gap_numbers(gap).items() if k.startswith("auroc")}
        for name, gap in gaps.items()
        if name != CHAMPION
    }
    return numbers, by_candidate


def evaluate_task(
    task_name: str,
    task: TaskSpec,
    test: pd.DataFrame,
    *,
    champion: Bundle,
    candidates: dict[str, Candidate],
    truth: pd.DataFrame | None,
    cohort: pd.DataFrame,
    params: EvaluateParams,
    seed: int,
    internal: dict[str, Any] | None = None,
    development: tuple[str, ...] = ("synthetic",),
) -> Evaluation:
    """Pure core of the stage: test-split performance, the oracle and the leakage check, subgroups, external
    validation on every cohort other than the ``development`` cohort(s) that records the task's target.

    An empty test split (split.json protocol ``small_cohort``) leaves internal and external validation only: the
    test-split numbers are absent (n 0) and every table is written with its header alone.
    """
    _check_models(task, champion, candidates)
    if test.empty:
        return _without_test_split(
            task_name, task, champion=champion, candidates=candidates, cohort=cohort, params=params, seed=seed,
            internal=internal, development=development,
        )  # fmt: skip
    spec = champion.feature_spec
    features = build_features(test, spec)
    y = build_target(test, spec)
    predictions = {CHAMPION: champion.predict(features)}
    predictions |= {name: _predict(c.estimator, features[spec.feature_names]) for name, c in candidates.items()}
    champion_p = predictions[CHAMPION]

    oracle = oracle_probabilities(test, truth, params.oracle.get(task_name))
    reachable = oracle_probabilities(test, truth, params.oracle_predictors.get(task_name))
    gaps = {}
    if oracle.available:
        gaps = oracle_gaps(y, predictions, oracle.p, params, seed)
        check_leakage(gaps, params.confidence_level)  # before anything else is computed or written
    else:
        log.warning("%s: oracle unavailable: %s", task_name, oracle.reason)

    test_numbers = model_performance(y, champion_p, params, seed, intervals_for_all=True)
    candidate_numbers = {}
    for name in candidates:
        if name == champion.info.candidate:
            # same estimator, same scores, same resamples: reuse the champion's numbers (bootstraps are the cost)
            numbers = {k: v for k, v in test_numbers.items() if k not in CHAMPION_ONLY_INTERVALS}
        else:
            numbers = model_performance(y, predictions[name], params, seed, intervals_for_all=False)
        if gaps:
            numbers |= {f"oracle_gap_{k}": v for k, v in _gap_numbers(gaps[name]).items() if k.startswith("auroc")}
        candidate_numbers[name] = numbers
    test_numbers["candidates"] = candidate_numbers
    result: dict[str, Any] = {"test": test_numbers} | (
        {"internal_validation": internal_numbers(internal)} if internal else {}
    )

    curve_models = {CHAMPION: champion_p, **{name: predictions[name] for name in candidates}}
    if oracle.available:
        curve_models[ORACLE] = oracle.p
        result["oracle"] = model_performance(y, oracle.p, params, seed, intervals_for_all=True)
        result["gap"] = _gap_numbers(gaps[CHAMPION])
    reference_numbers, reference_gaps = predictors_reference(
        y, predictions, reachable, champion=champion.info.candidate, params=params, seed=seed
    )
    result |= reference_numbers | ({"labels": labels} if (labels := label_agreement(test, truth, task.target)) else {})
    for name, numbers in reference_gaps.items():
        candidate_numbers[name] |= numbers

    external_metrics, external_reports = external_parts(cohort, champion, params, seed, development=development)
    result |= external_metrics

    calibration_curves = pd.concat(
        [
            metrics.calibration_curve(
                y, p, n_bins=params.calibration_bins, strategy="quantile", level=params.confidence_level
            ).assign(model=name)
            for name, p in curve_models.items()
        ],
        ignore_index=True,
    )
    calibration_curves = calibration_curves[["model", *calibration_curves.columns.drop("model")]]
    curves = {
        "roc": {name: roc_points(y, p) for name, p in curve_models.items()},
        "precision_recall": {name: precision_recall_points(y, p) for name, p in curve_models.items()},
    }
    grid = params.decision_curve.grid()
    decision_curves = {CHAMPION: metrics.decision_curve(y, champion_p, grid)}
    if oracle.available:
        decision_curves[ORACLE] = metrics.decision_curve(y, oracle.p, grid)

    subgroups = subgroup_performance(test, y, champion_p, params.subgroups)
    report = {
        "task": task_name,
        "target": task.target,
        "champion": {
            "candidate": champion.info.candidate,
            "calibration": champion.info.calibration,
            "estimator_sha256": champion.info.estimator_sha256,
            "registered_model_name": champion.info.registered_model_name,
        },
        "candidates": {name: {"calibration": c.calibration, "sha256": c.sha256} for name, c in candidates.items()},
        "test": {"n": int(y.size), "events": int(y.sum())},
        "intervals": {
            "level": params.confidence_level,
            "bootstrap_repetitions": params.bootstrap_repetitions,
            "seed": seed,
            "discrimination": "percentile bootstrap, events and non-events resampled separately",
            "brier": "percentile bootstrap, patients resampled as a whole",
            "calibration_in_the_large_and_slope": "Wald, model-based standard errors of the recalibration fit",
            "external_auroc": "DeLong standard error, interval on the logit scale (stratified percentile bootstrap "
            "and the leave-one-out range beside it), only with at least "
            f"{params.external.min_events_for_interval} events and non-events",
            "internal_validation": "Harrell bootstrap optimism correction of the champion's fitting procedure on the "
            "training split; location-shifted percentile interval (Noma et al. 2021)",
            "spearman": "Fisher z with the Bonett-Wright standard error",
        },
        "definitions": {
            "calibration_in_the_large": "a in logit P(y=1) = a + logit(p); 0 is ideal, > 0 under-prediction",
            "observed_minus_expected": "mean(y) - mean(p) on the risk scale",
            "calibration_slope": "b in logit P(y=1) = a + b logit(p); 1 is ideal, < 1 predictions too extreme",
            "recalibration_intercept": "a in that two-parameter model",
            "ece": f"expected calibration error over {params.ece_bins} equal-width bins",
            "gap": "champion minus the generating probability, paired bootstrap on the same test patients",
            "gap_predictors": "champion minus the predictors-only probability, paired bootstrap",
            "oracle": "the generating probability: P(outcome | the task's predictors and the site) under the "
            "generator, the ceiling of the data-generating process (the site is not a predictor)",
            "oracle_predictors": "the predictors-only probability: the generating probability with the site "
            "marginalised over P(site | age, route, psychotherapy[, 24-h MADRS]), the best a model of the task's "
            "own predictors can reach",
            "labels": "agreement of the analysed (cleaned) label with the generator's outcome on the test patients",
            "internal_validation": "apparent = the shipped model on its training split; optimism = mean over "
            "bootstrap refits of (performance on the bootstrap sample - on the training split); corrected = "
            "apparent - optimism",
        },
        "internal_validation": {
            "available": bool(internal),
            **({"method": internal.get("method"), "repetitions": internal.get("repetitions")} if internal else {}),
        },
        ORACLE_PREDICTORS: {
            "available": reachable.available,
            "column": reachable.column,
            **({"reason": reachable.reason} if not reachable.available else {}),
        },
        "oracle": {
            "available": oracle.available,
            "column": oracle.column,
            **({"reason": oracle.reason} if not oracle.available else {}),
            "leakage_check": (
                {
                    "passed": True,
                    "rule": "stop if any model's AUROC minus the oracle's has a paired interval entirely above 0",
                    "models_checked": sorted(gaps),
                }
                if oracle.available
                else {"passed": None, "reason": "no oracle: leakage against the truth could not be checked"}
            ),
        },
        "thresholds": list(params.thresholds),
        "subgroups": {
            "columns": list(params.subgroups.columns),
            "age_bands": age_band_labels(params.subgroups.age_bands),
            "min_cell": params.subgroups.min_cell,
            "suppressed_rows": int(subgroups["suppressed"].sum()),
        },
        **external_reports,
    }
    return Evaluation(
        task=task_name,
        metrics=result,
        report=report,
        thresholds=metrics.threshold_table(y, champion_p, list(params.thresholds)),
        subgroups=subgroups,
        calibration_curves=calibration_curves,
        curves=curves,
        decision_curves=decision_curves,
        champion_p=champion_p,
        y=y,
    )


def other_external_cohorts(
    cohort: pd.DataFrame, champion: Bundle, params: EvaluateParams, seed: int, *, development: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """External validation on every cohort that is neither a development cohort nor ``evaluate.external.cohort``
    (reported on its own) and records the task's target: transport of the model to each other clinic."""
    names = sorted(set(cohort["cohort"].dropna().astype(str)) - set(development) - {params.external.cohort})
    numbers, reports = {}, {}
    for name in names:
        found, report = external_validation(cohort, champion, params, seed, name=name, development=development)
        if found:
            numbers[name] = found
        reports[name] = report
    return numbers, reports


def external_parts(
    cohort: pd.DataFrame, champion: Bundle, params: EvaluateParams, seed: int, *, development: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's ``external`` (evaluate.external.cohort) and ``external_cohorts`` (every other cohort), and
    evaluation.json's ``external_validation`` and ``external_cohorts``: each present only when there is one."""
    numbers, report = external_validation(cohort, champion, params, seed, development=development)
    other_numbers, other_reports = other_external_cohorts(cohort, champion, params, seed, development=development)
    found = ({"external": numbers} if numbers else {}) | ({"external_cohorts": other_numbers} if other_numbers else {})
    reports = {"external_validation": report} | ({"external_cohorts": other_reports} if other_reports else {})
    return found, reports


# metrics.subgroup_table's columns (the empty table of a model without a test split keeps them)
SUBGROUP_COLUMNS = (
    "group", "level", "n", "events", "event_rate", "mean_predicted", "auroc", "o_minus_e", "o_e_ratio",
    "event_rate_ratio", "auroc_ratio", "suppressed", "suppression_reason",
)  # fmt: skip
NO_TEST_SPLIT = "no held-out test split (small-cohort protocol: every patient trained; see the internal validation)"


def _schema(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


def _without_test_split(
    task_name: str,
    task: TaskSpec,
    *,
    champion: Bundle,
    candidates: dict[str, Candidate],
    cohort: pd.DataFrame,
    params: EvaluateParams,
    seed: int,
    internal: dict[str, Any] | None,
    development: tuple[str, ...],
) -> Evaluation:
    """The evaluation of a model developed under the small-cohort protocol: internal validation (copied from the
    train stage) and external validation; every test-split table keeps its columns and has no rows."""
    external_metrics, external_reports = external_parts(cohort, champion, params, seed, development=development)
    result: dict[str, Any] = {"test": {"n": 0, "events": 0}}
    if internal:
        result["internal_validation"] = internal_numbers(internal)
    result |= external_metrics
    # the tables' columns, from the same functions on two made-up patients (no row of theirs is kept)
    y2, p2 = np.array([0.0, 1.0]), np.array([0.25, 0.75])
    curve = _schema(metrics.calibration_curve(y2, p2, n_bins=2, strategy="quantile"))
    report = {
        "task": task_name,
        "target": task.target,
        "champion": {
            "candidate": champion.info.candidate,
            "calibration": champion.info.calibration,
            "estimator_sha256": champion.info.estimator_sha256,
            "registered_model_name": champion.info.registered_model_name,
        },
        "candidates": {name: {"calibration": c.calibration, "sha256": c.sha256} for name, c in candidates.items()},
        "test": {"n": 0, "events": 0, "available": False, "reason": NO_TEST_SPLIT},
        "intervals": {
            "level": params.confidence_level,
            "bootstrap_repetitions": params.bootstrap_repetitions,
            "seed": seed,
            "internal_validation": "Harrell bootstrap optimism correction of the champion's fitting procedure on "
            "every development patient; location-shifted percentile interval (Noma et al. 2021)",
        },
        "internal_validation": {
            "available": bool(internal),
            **({"method": internal.get("method"), "repetitions": internal.get("repetitions")} if internal else {}),
        },
        ORACLE_PREDICTORS: {"available": False, "column": None, "reason": NO_TEST_SPLIT},
        "oracle": {
            "available": False,
            "column": None,
            "reason": NO_TEST_SPLIT,
            "leakage_check": {"passed": None, "reason": "no test split: leakage against a truth was not checked"},
        },
        "thresholds": list(params.thresholds),
        "subgroups": {
            "columns": list(params.subgroups.columns),
            "age_bands": age_band_labels(params.subgroups.age_bands),
            "min_cell": params.subgroups.min_cell,
            "suppressed_rows": 0,
        },
        **external_reports,
    }
    return Evaluation(
        task=task_name,
        metrics=result,
        report=report,
        thresholds=_schema(metrics.threshold_table(y2, p2, list(params.thresholds))),
        subgroups=pd.DataFrame(columns=list(SUBGROUP_COLUMNS)),
        calibration_curves=curve.assign(model=pd.Series(dtype="string"))[["model", *curve.columns]],
        curves={
            "roc": {CHAMPION: _schema(roc_points(y2, p2))},
            "precision_recall": {CHAMPION: _schema(precision_recall_points(y2, p2))},
        },
        decision_curves={CHAMPION: _schema(metrics.decision_curve(y2, p2, params.decision_curve.grid()))},
        champion_p=np.empty(0),
        y=np.empty(0),
    )


# --------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------


def json_ready(value: Any) -> Any:
    """Nested dict with NaN/inf as null and numpy scalars as Python numbers (write_json refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def flatten_metrics(nested: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"auroc": x}}`` -> ``{"test.auroc": x}``, dropping missing values (for MLflow)."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten_metrics(value, f"{name}.")
        elif value is not None and not isinstance(value, bool) and math.isfinite(float(value)):
            flat[name] = float(value)
    return flat


def plot_files(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """DVC plot data, by path relative to the output folder (dvc.yaml's top-level ``plots:`` names these)."""
    curves = evaluation.curves
    empty_roc = pd.DataFrame({"fpr": [], "tpr": []})
    empty_pr = pd.DataFrame({"recall": [], "precision": []})
    calibration = evaluation.calibration_curves
    champion_calibration = calibration[calibration["model"] == CHAMPION].drop(columns="model")
    prevalence = float(evaluation.y.mean()) if evaluation.y.size else math.nan
    return {
        "plots/roc/champion.csv": curves["roc"][CHAMPION],
        # the oracle file always exists (header only when unavailable) so the declared plot always renders
        "plots/roc/oracle.csv": curves["roc"].get(ORACLE, empty_roc),
        "plots/precision_recall/champion.csv": curves["precision_recall"][CHAMPION],
        "plots/precision_recall/oracle.csv": curves["precision_recall"].get(ORACLE, empty_pr),
        "plots/precision_recall/no_skill.csv": pd.DataFrame({"recall": [0.0, 1.0], "precision": [prevalence] * 2}),
        "plots/calibration/champion.csv": champion_calibration,
        "plots/calibration/ideal.csv": pd.DataFrame({"mean_predicted": [0.0, 1.0], "observed": [0.0, 1.0]}),
        "plots/decision_curve.csv": evaluation.decision_curves[CHAMPION],
    }


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")


def write_outputs(evaluation: Evaluation, folder: Path) -> None:
    """Write every output into ``folder``, replacing it as a whole (no partial folder on failure)."""
    from pipeline.headline import evaluation_headline  # noqa: PLC0415
    from pipeline.io import atomic_folder, write_json  # noqa: PLC0415

    with atomic_folder(folder) as staging:
        write_json(json_ready(evaluation.metrics), staging / "metrics.json")
        # the few numbers dvc.yaml declares as DVC metrics (pipeline/headline.py)
        write_json(evaluation_headline(evaluation.task, json_ready(evaluation.metrics)), staging / "headline.json")
        write_json(json_ready(evaluation.report), staging / "evaluation.json")
        _write_csv(evaluation.thresholds, staging / "thresholds.csv")
        _write_csv(evaluation.subgroups, staging / "subgroups.csv")
        _write_csv(evaluation.calibration_curves, staging / "calibration_curves.csv")
        for relative, frame in plot_files(evaluation).items():
            _write_csv(frame, staging / relative)
        write_figures(evaluation, staging / "figures")


# --------------------------------------------------------------------------------------------------------------
# figures (matplotlib's object API with the Agg canvas: no pyplot state, no display needed)
# --------------------------------------------------------------------------------------------------------------


# one colour per series, the same in every figure: the champion red, the oracle black (dashed), treat-all blue,
# the other candidates from the rest of the default cycle (never the champion's)
CHAMPION_COLOUR = "C3"
OTHER_COLOURS = ("C1", "C2", "C4", "C5", "C6", "C8", "C9")


def _new_figure(width: float = 5.5, height: float = 5.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # no 'Software' entry: the PNG bytes then depend on the drawing only
    figure.savefig(path, format="png", dpi=FIGURE_DPI, metadata={"Software": None})


def _ci_label(numbers: dict[str, Any], key: str) -> str:
    estimate, lower, upper = (numbers.get(k) for k in (key, f"{key}_lower", f"{key}_upper"))
    if estimate is None or not math.isfinite(estimate):
        return "n/a"
    if lower is None or upper is None or not (math.isfinite(lower) and math.isfinite(upper)):
        return f"{estimate:.3f}"
    return f"{estimate:.3f} [{lower:.3f}, {upper:.3f}]"


def _title(evaluation: Evaluation) -> str:
    test = evaluation.metrics["test"]
    champion = evaluation.report["champion"]["candidate"]
    return f"{evaluation.task}: {champion} (champion), test split n={test['n']}, events={test['events']}"


def calibration_figure(evaluation: Evaluation) -> Any:
    """Binned observed vs predicted with Wilson intervals, the ideal diagonal, and the risk distribution below."""
    test = evaluation.metrics["test"]
    curve = evaluation.calibration_curves
    curve = curve[curve["model"] == CHAMPION]
    figure = _new_figure(5.5, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[4, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="ideal")
    top.errorbar(
        curve["mean_predicted"], curve["observed"],
        yerr=[curve["observed"] - curve["ci_lower"], curve["ci_upper"] - curve["observed"]],
        fmt="o-", color=CHAMPION_COLOUR, capsize=3, label="champion (95 % Wilson CI per bin)",
    )  # fmt: skip
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed response rate", title=_title(evaluation))
    top.text(
        0.02, 0.97,
        f"calibration-in-the-large {_ci_label(test, 'calibration_in_the_large')}\n"
        f"calibration slope {_ci_label(test, 'calibration_slope')}\nECE {test['ece']:.3f}",
        transform=top.transAxes, va="top", fontsize=8,
    )  # fmt: skip
    top.legend(loc="lower right", fontsize=8)
    bins = np.linspace(0, 1, 41)
    bottom.hist(evaluation.champion_p[evaluation.y == 0], bins=bins, alpha=0.6, label="non-responders")
    bottom.hist(evaluation.champion_p[evaluation.y == 1], bins=bins, alpha=0.6, label="responders")
    bottom.set(xlabel="predicted probability of response", ylabel="patients")
    bottom.legend(fontsize=7)
    return figure


def roc_figure(evaluation: Evaluation) -> Any:
    """The champion's ROC curve, the other candidates', and the oracle's as the reachable ceiling."""
    test, oracle = evaluation.metrics["test"], evaluation.metrics.get("oracle")
    champion = evaluation.report["champion"]["candidate"]
    figure = _new_figure()
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    others = [n for n in evaluation.curves["roc"] if n not in (CHAMPION, ORACLE, champion)]  # champion: no duplicate
    for name, colour in zip(others, OTHER_COLOURS, strict=False):
        points = evaluation.curves["roc"][name]
        label = f"{name}: {_ci_label(test['candidates'][name], 'auroc')}"
        axes.plot(points["fpr"], points["tpr"], color=colour, linewidth=0.8, alpha=0.6, label=label)
    if oracle is not None:
        points = evaluation.curves["roc"][ORACLE]
        label = f"generating probability (oracle; knows the site): {_ci_label(oracle, 'auroc')}"
        axes.plot(points["fpr"], points["tpr"], color="black", linestyle="--", label=label)
    points = evaluation.curves["roc"][CHAMPION]
    label = f"champion ({champion}): {_ci_label(test, 'auroc')}"
    axes.plot(points["fpr"], points["tpr"], color=CHAMPION_COLOUR, linewidth=2, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="1 − specificity", ylabel="sensitivity", title=_title(evaluation))
    axes.legend(loc="lower right", fontsize=7, title="AUROC [95 % CI]", title_fontsize=7)
    return figure


def precision_recall_figure(evaluation: Evaluation) -> Any:
    """The champion's precision-recall curve against the oracle's and the no-skill line (the prevalence)."""
    test, oracle = evaluation.metrics["test"], evaluation.metrics.get("oracle")
    champion = evaluation.report["champion"]["candidate"]
    figure = _new_figure()
    axes = figure.subplots()
    prevalence = float(evaluation.y.mean())
    axes.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"no skill (prevalence {prevalence:.2f})")
    if oracle is not None:
        points = evaluation.curves["precision_recall"][ORACLE]
        label = f"oracle: {_ci_label(oracle, 'auprc')}"
        axes.plot(points["recall"], points["precision"], color="black", linestyle="--", label=label)
    points = evaluation.curves["precision_recall"][CHAMPION]
    label = f"champion ({champion}): {_ci_label(test, 'auprc')}"
    axes.plot(points["recall"], points["precision"], color=CHAMPION_COLOUR, linewidth=2, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    axes.set_title(_title(evaluation))
    axes.legend(loc="upper right", fontsize=7, title="AUPRC [95 % CI]", title_fontsize=7)
    return figure


def decision_curve_figure(evaluation: Evaluation) -> Any:
    """Net benefit over the declared threshold range; treat-all falls steeply, so the y axis is clipped."""
    champion = evaluation.report["champion"]["candidate"]
    figure = _new_figure(6.0, 4.5)
    axes = figure.subplots()
    curve = evaluation.decision_curves[CHAMPION]
    axes.plot(curve["threshold"], curve["net_benefit_treat_none"], color="grey", linewidth=1, label="treat none")
    axes.plot(curve["threshold"], curve["net_benefit_treat_all"], color="C0", linewidth=1, label="treat all")
    if ORACLE in evaluation.decision_curves:
        oracle_curve = evaluation.decision_curves[ORACLE]
        axes.plot(oracle_curve["threshold"], oracle_curve["net_benefit_model"], color="black", linestyle="--",
                  label="oracle")  # fmt: skip
    axes.plot(
        curve["threshold"],
        curve["net_benefit_model"],
        color=CHAMPION_COLOUR,
        linewidth=2,
        label=f"champion ({champion})",
    )
    prevalence = float(evaluation.y.mean())
    axes.set(
        ylim=(-0.05, max(prevalence, 0.05) * 1.1),
        xlabel="threshold probability",
        ylabel="net benefit (true responders per patient)",
        title=_title(evaluation),
    )
    axes.legend(fontsize=8)
    return figure


FIGURES = {
    "calibration.png": calibration_figure,
    "roc.png": roc_figure,
    "precision_recall.png": precision_recall_figure,
    "decision_curve.png": decision_curve_figure,
}


def write_figures(evaluation: Evaluation, folder: Path) -> None:
    if evaluation.y.size == 0:  # no test split: nothing to draw (the card says so)
        Path(folder).mkdir(parents=True, exist_ok=True)
        return
    for name, draw in FIGURES.items():
        _save(draw(evaluation), Path(folder) / name)


# --------------------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------------------


def log_to_mlflow(task_name: str, root: Path, folder: Path, metrics_nested: dict, estimator_sha256: str) -> str | None:
    """Log the metrics and figures to the task's training run; warn and skip when there is no store or run.

    The DVC outputs are the primary record, so a missing store never fails the stage.
    """
    import mlflow  # noqa: PLC0415

    from pipeline import tracking  # noqa: PLC0415

    run_id = tracking.training_run_to_extend(root, task_name, estimator_sha256, "evaluation")
    if run_id is None:
        return None
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flatten_metrics(metrics_nested))
        mlflow.log_artifacts(str(folder / "figures"), artifact_path="evaluation/figures")
        for name in ("metrics.json", "evaluation.json", "thresholds.csv", "subgroups.csv", "calibration_curves.csv"):
            mlflow.log_artifact(str(folder / name), artifact_path="evaluation")
    log.info("%s: evaluation logged to MLflow run %s", task_name, run_id)
    return run_id


# --------------------------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------------------------


def main(task_name: str) -> None:
    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.io import read_parquet  # noqa: PLC0415
    from pipeline.modelling.bundle import load_bundle  # noqa: PLC0415
    from pipeline.params import BaseParams, parse_section, read_params_file  # noqa: PLC0415
    from pipeline.paths import ProjectPaths  # noqa: PLC0415
    from pipeline.tasks import TasksParams  # noqa: PLC0415

    paths = ProjectPaths.discover()
    raw = read_params_file(paths.params_file)
    seed = parse_section(BaseParams, raw, "base", paths.params_file).seed
    task = parse_section(TasksParams, raw, "tasks", paths.params_file).get(task_name)
    params = parse_section(EvaluateParams, raw, "evaluate", paths.params_file)
    contract = load_contract(paths.cohort_schema)

    test = contract.coerce(read_parquet(paths.processed_dir / task_name / "test.parquet", "test split"))
    champion = load_bundle(paths.models_dir / task_name)
    candidates = load_candidates(paths.models_dir / "candidates" / task_name)
    truth_path = paths.synthetic_dir / "truth.parquet"
    truth = read_parquet(truth_path, "synthetic ground truth") if truth_path.is_file() else None
    cohort = contract.coerce(read_parquet(paths.interim_dir / "cohort.parquet", "clean cohort"))
    cv_path = paths.reports_dir / task_name / "cv_metrics.json"
    cv = json.loads(cv_path.read_text(encoding="utf-8")) if cv_path.is_file() else {}
    internal = cv.get("internal_validation")
    development = tuple(cv.get("protocol", {}).get("development_cohorts") or ("synthetic",))

    evaluation = evaluate_task(
        task_name,
        task,
        test,
        champion=champion,
        candidates=candidates,
        truth=truth,
        cohort=cohort,
        params=params,
        seed=seed,
        internal=internal,
        development=development,
    )
    folder = paths.reports_dir / task_name / OUTPUT_FOLDER
    write_outputs(evaluation, folder)
    headline = evaluation.metrics["test"]
    if headline["n"]:
        log.info(
            "%s: test AUROC %s, calibration slope %s; written to %s", task_name, _ci_label(headline, "auroc"),
            _ci_label(headline, "calibration_slope"), folder.relative_to(paths.root),
        )  # fmt: skip
    else:
        log.info("%s: %s; written to %s", task_name, NO_TEST_SPLIT, folder.relative_to(paths.root))
    # the model's own registry entry (trd-<task>, or trd-<task>-<cohort> for another development cohort)
    registered = champion.info.registered_model_name.removeprefix("trd-")
    log_to_mlflow(registered, paths.root, folder, json_ready(evaluation.metrics), champion.info.estimator_sha256)
