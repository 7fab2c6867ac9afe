"""The whole explanation of one task (pure): additivity, global importance, the calibration map, fidelity."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.calibration import CalibratedClassifierCV

from pipeline.errors import ConfigError, ModelError, PipelineError
from pipeline.explain.fidelity import fidelity_checks
from pipeline.explain.types import (
    ADDITIVITY_TOLERANCE,
    PER_PATIENT_FILE,
    PER_PATIENT_FOLDER,
    SHAP_PREFIX,
    SYNTHETIC_COHORT,
    ExplainParams,
    Explanation,
    PlantedReference,
)
from pipeline.features import FeatureSpec, build_features
from pipeline.modelling.calibration import CalibratedModel
from pipeline.modelling.contributions import SCALE_NOTE, explain, explained_estimator, model_margin
from pipeline.synthesize.effects import CONTRIBUTION_SEPARATOR
from pipeline.synthesize.planted import parse_planted_truth, true_values_of

if TYPE_CHECKING:  # the model module imports MLflow; only the types are needed here
    from pipeline.modelling.bundle import Bundle
    from pipeline.tasks import TaskSpec

log = logging.getLogger(__name__)


def planted_reference(
    effects: dict[str, Any] | None,
    test: pd.DataFrame,
    outcome: str,
    *,
    file: Path | str,
    contributions: pd.DataFrame | None = None,
) -> PlantedReference:
    """Which truth applies to the test patients.

    Synthetic test patients without planted effects are an error (the generator always writes them, so the
    files come from different runs or were deleted); real patients have no planted truth, which is reported.
    """
    synthetic = test["cohort"].astype("string").eq(SYNTHETIC_COHORT).fillna(False).to_numpy(dtype=bool)
    if effects is None:
        if synthetic.any():
            raise PipelineError(
                "the test split holds synthetic patients but there are no planted effects to check the "
                "explanations against",
                file=file,
                hint="re-create the synthetic cohort and its truth (dvc repro synthesize)",
            )
        return PlantedReference(None, no_truth_sentence(test))
    if not synthetic.all():
        return PlantedReference(None, no_truth_sentence(test))
    parsed = parse_planted_truth(effects, outcome, file=file)
    if isinstance(parsed, str):
        return PlantedReference(None, f"fidelity unavailable: {parsed}")
    has_columns = contributions is not None and any(
        c.startswith(f"{outcome}{CONTRIBUTION_SEPARATOR}") for c in contributions.columns
    )
    true_values = true_values_of(contributions, test, outcome, file=file) if has_columns else None
    return PlantedReference(parsed, true_values=true_values)


def no_truth_sentence(rows: pd.DataFrame) -> str:
    """Why fidelity is dropped for patients outside the synthetic cohort, naming their cohort(s)."""
    cohorts = rows["cohort"].astype("string").fillna("unknown")
    others = sorted(set(cohorts[cohorts != SYNTHETIC_COHORT]))
    return (
        f"fidelity unavailable: {int((cohorts != SYNTHETIC_COHORT).sum())} of the {len(rows)} explained patients "
        f"come from {', '.join(others)}, which has no synthetic truth (no planted effects to compare with); the "
        "SHAP summaries show what the model relies on, not whether that is the true effect"
    )


def check_additivity(values: pd.DataFrame, base_value: np.ndarray, margin: np.ndarray) -> float:
    """Largest |base + sum(values) - margin| over rows; a PipelineError if any row exceeds the tolerance."""
    reconstructed = np.asarray(base_value, dtype="float64") + values.to_numpy(dtype="float64").sum(axis=1)
    error = np.abs(reconstructed - np.asarray(margin, dtype="float64"))
    worst = float(np.nanmax(error)) if error.size else 0.0
    bad = ~(error <= ADDITIVITY_TOLERANCE)  # NaN counts as a violation
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PipelineError(
            f"SHAP values are not additive: base value + contributions differ from the model's margin by up to "
            f"{worst:.3g} log-odds ({int(bad.sum())} of {error.size} rows above {ADDITIVITY_TOLERANCE:g}; first at "
            f"test row {row})",
            hint="the explanation path does not match the model (pipeline/contributions.py); nothing was written",
        )
    return worst


def global_importance(values: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Mean |SHAP| and mean SHAP per canonical feature, largest first (ties in spec order), with ranks."""
    columns = {c.name: c for c in spec.columns}
    mean_abs = values.abs().mean(axis=0)
    total = float(mean_abs.sum())
    table = pd.DataFrame(
        {
            "feature": list(values.columns),
            "kind": [columns[name].kind for name in values.columns],
            "unit": [columns[name].unit or "" for name in values.columns],
            "mean_abs_shap": mean_abs.to_numpy(),
            "share_of_total": (mean_abs / total).to_numpy() if total > 0 else np.zeros(len(mean_abs)),
            "mean_shap": values.mean(axis=0).to_numpy(),
        }
    )
    table = table.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", stats.rankdata(-table["mean_abs_shap"].to_numpy(), method="min").astype(int))
    return table


def calibration_map(estimator: Any) -> dict[str, Any]:
    """What turns the explained log-odds into the reported probability, in words and, where linear, numbers."""
    model, note = explained_estimator(estimator)
    explained = {"explained_model": type(model).__name__, "note": note}
    if isinstance(estimator, CalibratedModel):
        return explained | _own_calibrator_map(estimator.calibrator)
    if not isinstance(estimator, CalibratedClassifierCV):
        return explained | {
            "calibration": "none",
            "description": "reported probability = sigmoid(base value + sum of the SHAP values): the values "
            "explain the reported probability exactly, on its log-odds scale",
        }
    calibrator = estimator.calibrated_classifiers_[0].calibrators[0]
    # CalibratedClassifierCV feeds the calibrator decision_function when the model has one, else predict_proba
    reads_log_odds = hasattr(model, "decision_function")
    reads = "the explained log-odds" if reads_log_odds else "the explained model's probability sigmoid(log-odds)"
    if estimator.method == "sigmoid":
        slope, intercept = -float(calibrator.a_), -float(calibrator.b_)
        if reads_log_odds:
            return explained | _sigmoid_on_log_odds(slope, intercept)
        return explained | {
            "calibration": "sigmoid",
            "calibrator_input": "probability",
            "slope": slope,
            "intercept": intercept,
            "description": f"reported probability = sigmoid({slope:.4g} × sigmoid(explained log-odds) "
            f"{intercept:+.4g}): a monotone{' increasing' if slope > 0 else ''} map of {reads}, not linear on the "
            "log-odds scale; directions and the ranking of patients are unchanged, sizes are those of the model "
            "before calibration",
        }
    return explained | {
        "calibration": str(estimator.method),
        "calibrator_input": "log-odds" if reads_log_odds else "probability",
        "description": f"reported probability = a monotone step function (isotonic) of {reads}: directions and the "
        "ranking of patients are preserved (up to ties), sizes are those of the model before calibration",
    }


def _sigmoid_on_log_odds(slope: float, intercept: float) -> dict[str, Any]:
    """The map of a Platt calibrator that reads the explained log-odds: linear on that scale."""
    return {
        "calibration": "sigmoid",
        "calibrator_input": "log-odds",
        "slope": slope,
        "intercept": intercept,
        "description": f"reported probability = sigmoid({slope:.4g} × explained log-odds {intercept:+.4g}): "
        f"multiply a SHAP value by {slope:.4g} to read it on the calibrated log-odds scale; directions and "
        "the ranking of patients are unchanged",
    }


def _own_calibrator_map(calibrator: dict[str, Any]) -> dict[str, Any]:
    """pipeline.modelling.calibration's calibrators all read the explained log-odds."""
    if calibrator["method"] == "sigmoid":
        slope, intercept = float(calibrator["slope"]), float(calibrator["intercept"])
        return _sigmoid_on_log_odds(slope, intercept)
    return {
        "calibration": str(calibrator["method"]),
        "calibrator_input": "log-odds",
        "description": "reported probability = a non-decreasing piecewise-linear (isotonic) function of the "
        "explained log-odds: directions and the ranking of patients are preserved (up to ties), sizes are those "
        "of the model before calibration",
    }


def figure_sample(n_rows: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted, seeded sample of ``size`` row positions (all rows when there are fewer)."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(rng.choice(n_rows, size=size, replace=False))


def example_rows(probability: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """One seeded row per equal-count band of predicted probability, so the examples span low to high risk."""
    count = min(count, probability.size)
    if count == 0:
        return np.array([], dtype="int64")
    order = np.argsort(probability, kind="stable")
    return np.array([int(rng.choice(band)) for band in np.array_split(order, count)], dtype="int64")


def per_patient_frame(
    test: pd.DataFrame, values: pd.DataFrame, base_value: np.ndarray, margin: np.ndarray, probability: np.ndarray
) -> pd.DataFrame:
    """One row per test patient: identifier, row number, base value, margin, probability and every SHAP value."""
    frame = pd.DataFrame(
        {
            "patient_id": test["patient_id"].astype("string").to_numpy(),
            "test_row": np.arange(len(test), dtype="int64"),
            "base_value": base_value,
            "margin": margin,
            "p_response": probability,
        }
    )
    shap_columns = pd.DataFrame(values.to_numpy(), columns=[f"{SHAP_PREFIX}{c}" for c in values.columns])
    return pd.concat([frame, shap_columns], axis=1)


def explain_task(
    task_name: str,
    task: TaskSpec,
    test: pd.DataFrame,
    *,
    champion: Bundle,
    reference: PlantedReference,
    params: ExplainParams,
    seed: int,
    explained_split: str = "test",
) -> Explanation:
    """Pure core of the stage: explain every test row, check additivity and fidelity, pick what is drawn.

    ``explained_split`` is ``train`` when there is no test split (small-cohort protocol): the development patients
    are explained (SHAP describes the model; it measures no performance)."""
    spec = champion.feature_spec
    if spec.target != task.target:
        raise ModelError(
            f"the model predicts '{spec.target}' but the task's target is '{task.target}'",
            file=champion.path,
            hint="retrain the task (dvc repro train)",
        )
    if test.empty:
        raise PipelineError(f"the {explained_split} split is empty: nothing to explain", hint="check the split stage")
    exclude = tuple(params.fidelity_exclude.get(task_name, ()))
    unknown = sorted(set(exclude) - set(spec.input_columns))
    if unknown:
        raise ConfigError(f"explain.fidelity_exclude.{task_name} names features the model does not use: {unknown}")
    test = test.reset_index(drop=True)  # row numbers are positions in the test split
    features = build_features(test, spec)
    explained = explain(champion.estimator, features, spec)
    margin = model_margin(champion.estimator, features)
    additivity_error = check_additivity(explained.values, explained.base_value, margin)
    probability = champion.predict(features)
    values = explained.values

    importance = global_importance(values, spec)
    fidelity = None
    if reference.truth is not None:
        fidelity = fidelity_checks(
            values, features, spec, reference.truth, exclude=exclude, min_rows=params.sign_min_rows,
            true_values=reference.true_values,
        )  # fmt: skip
        planted = fidelity.roles.set_index("feature")
        joined = ["fidelity_role", "planted_mean_abs_shap", "planted_rank", "true_mean_abs_contribution"]
        importance = importance.join(planted[[c for c in joined if c in planted]], on="feature", how="left")

    sample_rng, example_rng = np.random.default_rng(seed).spawn(2)
    sample = figure_sample(len(test), params.figure_rows, sample_rng)
    examples = example_rows(probability, params.example_patients, example_rng)
    dependence = importance["feature"].head(params.dependence_top_k).tolist()

    metrics: dict[str, Any] = {"n_explained": len(test), "additivity": {"max_abs_error": additivity_error}}
    if fidelity is not None:
        metrics["fidelity"] = fidelity.metrics
    else:
        log.warning("%s: %s", task_name, reference.reason)
    info = champion.info
    report = {
        "task": task_name,
        "target": task.target,
        "prediction_time": task.prediction_time,
        "champion": {
            "candidate": info.candidate,
            "calibration": info.calibration,
            "estimator_sha256": info.estimator_sha256,
            "registered_model_name": info.registered_model_name,
        },
        "method": explained.method,
        "scale": f"{SCALE_NOTE}. The base value is the explained model's log-odds for a reference patient "
        "(tree models: the training-data average; logistic regression: every feature at its training mean); "
        "a patient's log-odds = base value + the sum of their SHAP values",
        "calibration": calibration_map(champion.estimator),
        "aggregation": "one-hot levels and missingness indicators are summed onto their canonical feature",
        "additivity": {
            "rule": "base value + sum of SHAP values = the explained model's margin, for every explained row",
            "tolerance": ADDITIVITY_TOLERANCE,
            "rows_checked": len(test),
            "max_abs_error": additivity_error,
        },
        "rows": {
            "explained": len(test),
            "in_beeswarm_and_dependence_plots": len(sample),
            "examples": examples.tolist(),  # one per band of predicted probability, lowest band first
            "split": explained_split,
            "row_numbers": f"0-based positions in data/processed/{task_name}/{explained_split}.parquet; "
            f"data/explanations/{task_name}/{PER_PATIENT_FILE} maps them to patients",
        },
        "global_importance": f"mean |SHAP value| over every {explained_split} row (importance.csv)",
        "dependence_plots": dependence,
        "fidelity": fidelity.report if fidelity is not None else {"available": False, "reason": reference.reason},
        "per_patient_values": f"{PER_PATIENT_FOLDER.as_posix()}/{task_name}/{PER_PATIENT_FILE} (with patient_id; "
        "never logged to MLflow)",
    }
    return Explanation(
        task=task_name,
        candidate=info.candidate,
        spec=spec,
        values=values.reset_index(drop=True),
        base_value=np.asarray(explained.base_value, dtype="float64"),
        features=features,
        probability=probability,
        importance=importance,
        fidelity=fidelity,
        truth=reference.truth,
        sample_rows=sample,
        example_rows=examples,
        dependence_features=dependence,
        metrics=metrics,
        report=report,
        per_patient=per_patient_frame(test, values, explained.base_value, explained.margin, probability),
        seed=seed,
    )
