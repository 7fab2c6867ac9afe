"""How a development cohort is developed on: the sample-size gate before any fitting, folds that adapt to a small
cohort, the small-cohort selection rule, and the registry name of a model developed on a cohort other than the
synthetic one (README "Developing a model on your own cohort"). Used by the train stage; pure apart from a warning.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from pipeline.errors import ExitCode, PipelineError
from pipeline.params import Frozen
from pipeline.sample_size import GATE_HINT, SampleSizeCheck, check_sample_size, gate_message

if TYPE_CHECKING:  # train imports this module
    from pipeline.modelling.params import SelectionParams, TrainParams

log = logging.getLogger(__name__)


class SampleSizeParams(Frozen):
    """The Riley et al. gate before any fitting (pipeline/sample_size.py)."""

    anticipated_c: float = Field(
        default=0.70, gt=0.5, lt=1.0, description="C statistic anticipated before development (declared, not fitted)."
    )
    shrinkage: float = Field(default=0.9, gt=0.0, lt=1.0, description="Riley criterion 1: expected shrinkage.")
    r2_difference: float = Field(default=0.05, gt=0.0, lt=1.0, description="Criterion 2: optimism in Nagelkerke R².")
    risk_margin: float = Field(default=0.05, gt=0.0, lt=1.0, description="Criterion 3: overall risk within ±margin.")
    override: bool = Field(default=False, description="Train below the minimum anyway; the card says underpowered.")


# the cohort whose model may hold the `champion` alias of trd-<task>: any other development cohort registers under
# its own name, so a clinic's model never silently replaces the synthetic-trained one in a shared store
DEFAULT_COHORT = "synthetic"
SMALL_COHORT_PROTOCOL = "small_cohort"  # split.json's protocol when no single test split is held out


def registered_model_name(task: str, cohorts: tuple[str, ...] | list[str]) -> str:
    """``trd-<task>`` for the synthetic cohort, ``trd-<task>-<cohort>[-<cohort>...]`` for any other (pooled)."""
    names = sorted(set(cohorts))
    if names == [DEFAULT_COHORT]:
        return f"trd-{task}"
    return "-".join([f"trd-{task}", *names])


def adapt_folds(y: np.ndarray, params: TrainParams) -> int:
    """``train.cv_folds``, or fewer so that every fold holds at least ``min_fold_events`` events and non-events.

    Below 2 folds there is no cross-validation at all: a :class:`PipelineError` (exit 6) names the counts.
    """
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)
    smaller = int(counts.min())
    folds = min(params.cv_folds, smaller // params.min_fold_events)
    if folds < 2:
        raise PipelineError(
            f"{int(counts[1])} responders and {int(counts[0])} non-responders: cross-validation needs at least "
            f"{2 * params.min_fold_events} of each ({params.min_fold_events} per fold, train.min_fold_events, in "
            "at least 2 folds)",
            hint="add patients or pool cohorts (split.training_cohort takes a list); lowering "
            "train.min_fold_events below 3 makes each fold's calibration and AUROC rest on one or two patients",
            exit_code=ExitCode.CONFIG,
        )
    return folds


def small_cohort_selection(selection: SelectionParams) -> SelectionParams:
    """The small-cohort rule: penalised logistic regression first in the simplicity order under ``one_se``, so
    another candidate wins only if it beats logistic regression by more than the declared SE margin."""
    order = ["logreg", *(name for name in selection.simplicity_order if name != "logreg")]
    if "logreg" not in selection.simplicity_order:
        order = list(selection.simplicity_order)
    return selection.model_copy(update={"rule": "one_se", "simplicity_order": order})


def sample_size_gate(
    y: np.ndarray, parameters: int, params: SampleSizeParams, *, task: str, cohort: str
) -> SampleSizeCheck:
    """The Riley check of the development data; below the minimum a :class:`PipelineError` (exit 6) unless
    ``train.sample_size.override``, in which case the check (passed False) is returned and logged as a warning."""
    check = check_sample_size(
        n=len(y),
        events=int(np.sum(y)),
        parameters=parameters,
        anticipated_c=params.anticipated_c,
        shrinkage=params.shrinkage,
        r2_difference=params.r2_difference,
        risk_margin=params.risk_margin,
    )
    if check.passed:
        return check
    message = gate_message(check, cohort=cohort, task=task)
    if not params.override:
        raise PipelineError(f"below the minimum sample size: {message}", hint=GATE_HINT, exit_code=ExitCode.CONFIG)
    log.warning("%s: UNDERPOWERED, trained anyway (train.sample_size.override): %s", task, message)
    return check
