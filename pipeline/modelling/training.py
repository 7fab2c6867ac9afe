"""The train stage's core: every candidate by CV, the champion, its final fit and internal validation; the
stage's inputs and its cv_metrics.json report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.features import FeatureSpec, build_features, build_target
from pipeline.io import atomic_folder, read_parquet
from pipeline.modelling.bundle import dump_estimator
from pipeline.modelling.candidates import CandidateResult, check_grid, evaluate_candidate, fit_final
from pipeline.modelling.params import TrainParams
from pipeline.modelling.selection import selection_rule_text, selection_table
from pipeline.modelling.validation import internal_validation
from pipeline.protocol import DEFAULT_COHORT, SMALL_COHORT_PROTOCOL, adapt_folds, small_cohort_selection
from pipeline.stage import StageContext
from pipeline.tasks import task_predictors

log = logging.getLogger(__name__)


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


def load_training_inputs(ctx: StageContext) -> TrainingInputs:
    """The ``train`` params and the task's training split as features and target (also benchmarks/bench_train.py).

    Predictors come from the contract by the task's rule; the development cohort(s) from the rows themselves;
    the small-cohort protocol from split.json, written by the split stage.
    """
    task, name = ctx.task, ctx.task_name
    if task is None or name is None:
        raise ConfigError("the train stage needs a task: open its StageContext with the task name")
    params = ctx.section(TrainParams, "train")
    spec = FeatureSpec.from_columns(name, task.target, task_predictors(task, ctx.contract, name))
    cohort = ctx.contract.coerce(read_parquet(ctx.train_split, "training split"))
    protocol = (ctx.split_summary() or {}).get("protocol")
    cohorts = tuple(sorted(cohort["cohort"].dropna().astype(str).unique())) or (DEFAULT_COHORT,)
    return TrainingInputs(
        task, params, ctx.seed, spec, ctx.train_split, build_features(cohort, spec), build_target(cohort, spec),
        cohorts=cohorts, small_cohort=protocol == SMALL_COHORT_PROTOCOL,
    )  # fmt: skip
