"""The whole evaluation of one task (pure): frames, models and typed params in, an :class:`Evaluation` out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.evaluate.external import external_parts
from pipeline.evaluate.performance import (
    age_band_labels,
    check_leakage,
    check_models,
    internal_numbers,
    label_agreement,
    model_performance,
    oracle_gaps,
    oracle_probabilities,
    precision_recall_points,
    predict,
    roc_points,
    subgroup_performance,
)
from pipeline.evaluate.types import (
    CHAMPION,
    CHAMPION_ONLY_INTERVALS,
    NO_TEST_SPLIT,
    ORACLE,
    ORACLE_PREDICTORS,
    SUBGROUP_COLUMNS,
    Candidate,
    EvaluateParams,
    Evaluation,
    Oracle,
)
from pipeline.features import build_features, build_target

if TYPE_CHECKING:  # the model module imports MLflow; only the type is needed here
    from pipeline.modelling.bundle import Bundle
    from pipeline.tasks import TaskSpec

log = logging.getLogger(__name__)


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
    check_models(task, champion, candidates)
    if test.empty:
        return _without_test_split(
            task_name, task, champion=champion, candidates=candidates, cohort=cohort, params=params, seed=seed,
            internal=internal, development=development,
        )  # fmt: skip
    spec = champion.feature_spec
    features = build_features(test, spec)
    y = build_target(test, spec)
    predictions = {CHAMPION: champion.predict(features)}
    predictions |= {name: predict(c.estimator, features[spec.feature_names]) for name, c in candidates.items()}
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
