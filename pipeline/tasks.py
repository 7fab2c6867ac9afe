"""Prediction tasks (clinical decision points) and the leakage rule that picks their predictors.

A task names its target and its prediction time; its predictors are exactly the contract's predictor columns
measured at or before that time, minus any it explicitly excludes, or a pre-specified subset of them
(``predictors``: fewer candidate parameters, so a rare outcome meets the sample-size gate). Outcomes,
identifiers, metadata and provenance columns can never become features (tests/test_tasks.py walks every task).

A task also declares the least data a score needs (``scoring``: required predictors, largest share missing);
the train stage stores it in the model, so the scorer applies it without params.yaml. Two more declarations
travel with the model the same way:

- ``outcome``: what the probability is of (``kind`` benefit or harm, and its ``wording``), so that the model
  card, the risk bands and the scorer say "risk of a blood-pressure event" rather than "response";
- ``population``: who the task is for (e.g. baseline GAD-7 >= 10 for the anxiety task), applied in one place,
  :func:`population_mask`, by split (and so train and evaluate, which read the split) and by the scorer, which
  rejects the other rows as ``ineligible`` with the reason instead of scoring them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, RootModel, model_validator

from pipeline.contract import PREDICTOR_ROLES, TIMING_ORDER, CohortContract, ColumnSpec, Timing
from pipeline.errors import ConfigError
from pipeline.features import ScoringRule
from pipeline.params import Frozen


class TaskOutcome(Frozen):
    """What the task's probability is of, as every output words it."""

    kind: Literal["benefit", "harm"] = Field(
        default="benefit", description="benefit: a higher probability favours treating; harm: it calls for caution."
    )
    wording: str = Field(
        default="probability of response",
        min_length=5,
        description="The probability's name in the model card, the risk bands and the scorer's output.",
    )
    events: str = Field(default="responders", min_length=3, description="Patients with the outcome (plural).")
    non_events: str = Field(default="non-responders", min_length=3, description="Patients without it (plural).")
    rate: str = Field(default="response rate", min_length=3, description="The outcome's observed rate.")


class TaskPopulation(Frozen):
    """Who the task is for: rows whose ``column`` lies in [min, max] (a missing value is not eligible)."""

    column: str = Field(description="A baseline predictor of the task (so the scorer reads it).")
    min: float | None = None
    max: float | None = None
    description: str = Field(min_length=5, description="The rule in words, for the card and the scorer's messages.")

    @model_validator(mode="after")
    def _bounds(self) -> TaskPopulation:
        if self.min is None and self.max is None:
            raise ValueError("a population needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"population min {self.min} is above max {self.max}")
        return self


DEFAULT_OUTCOME = TaskOutcome()


class TaskSpec(Frozen):
    description: str = Field(min_length=5)
    target: str = Field(description="A boolean outcome column of the canonical contract.")
    prediction_time: Timing = Field(description="When the prediction is made, on the contract's clinical clock.")
    predictors: tuple[str, ...] | None = Field(
        default=None,
        description="The candidate predictors, pre-specified (e.g. the published ones); None: every predictor "
        "measured by the prediction time. Either this or exclude_predictors.",
    )
    exclude_predictors: tuple[str, ...] = Field(default=(), description="Predictors deliberately left out.")
    scoring: ScoringRule = Field(
        default_factory=ScoringRule, description="The least data a row needs for a score (stored in the model)."
    )
    outcome: TaskOutcome = Field(default_factory=TaskOutcome, description="What the probability is of.")
    population: TaskPopulation | None = Field(default=None, description="Who the task is for; None: everyone.")

    @model_validator(mode="after")
    def _one_predictor_rule(self) -> TaskSpec:
        if self.predictors is not None and self.exclude_predictors:
            raise ValueError("set predictors (an include list) or exclude_predictors, not both")
        if self.predictors is not None and not self.predictors:
            raise ValueError("predictors is empty: list at least one, or leave it out to use every predictor")
        if self.predictors is not None and len(set(self.predictors)) != len(self.predictors):
            raise ValueError(f"predictors lists a column twice: {list(self.predictors)}")
        return self


class TasksParams(RootModel[dict[str, TaskSpec]]):
    """The ``tasks`` section: task name -> spec. DVC stages expand over these names (foreach)."""

    @model_validator(mode="after")
    def _names(self) -> TasksParams:
        if not self.root:
            raise ValueError("at least one task is needed")
        for name in self.root:
            if not name.replace("_", "").isalnum() or not name.islower():
                raise ValueError(f"task name '{name}' must be lower-case letters, digits and underscores")
        return self

    def get(self, name: str) -> TaskSpec:
        if name not in self.root:
            raise ConfigError(f"unknown task '{name}'", hint=f"tasks in params.yaml: {', '.join(self.root)}")
        return self.root[name]


def task_predictors(task: TaskSpec, contract: CohortContract, name: str = "") -> list[ColumnSpec]:
    """The task's predictor columns, in contract order; raises if the task is inconsistent with the contract
    (``name``, the task's name, makes the messages name the param: tasks.<name>.<key>)."""
    target = contract.by_name.get(task.target)
    if target is None or target.role != "outcome" or target.dtype != "bool":
        raise ConfigError(f"task target '{task.target}' is not a boolean outcome of the cohort contract")
    if target.timing is None or TIMING_ORDER.index(target.timing) <= TIMING_ORDER.index(task.prediction_time):
        raise ConfigError(
            f"task target '{task.target}' ({target.timing}) is not measured after the prediction time "
            f"({task.prediction_time})"
        )
    available = contract.predictors_up_to(task.prediction_time)
    available_names = [c.name for c in available]
    prefix = f"tasks.{name}." if name else ""
    unknown = sorted(set(task.exclude_predictors) - set(available_names))
    if unknown:
        raise ConfigError(f"{prefix}exclude_predictors names columns that are not predictors of this task: {unknown}")
    if task.predictors is not None:
        # the leakage rule holds for an include list too: only predictors measured by the prediction time
        for wanted in task.predictors:
            if wanted not in available_names:
                column = contract.by_name.get(wanted)
                why = (
                    f"it is measured at {column.timing}, after the prediction time ({task.prediction_time})"
                    if column is not None and column.role in PREDICTOR_ROLES
                    else "it is not a predictor column of the cohort contract"
                )
                close = difflib.get_close_matches(wanted, available_names, n=1)
                raise ConfigError(
                    f"{prefix}predictors: '{wanted}' cannot be a predictor of this task: {why}",
                    hint=f"did you mean '{close[0]}'?" if close else f"use some of: {', '.join(available_names)}",
                )
        chosen = set(task.predictors)
        predictors = [c for c in available if c.name in chosen]
    else:
        predictors = [c for c in available if c.name not in task.exclude_predictors]
    names = [c.name for c in predictors]
    if task.population is not None and task.population.column not in names:
        raise ConfigError(
            f"{f'tasks.{name}.' if name else ''}population.column: '{task.population.column}' is not a predictor of "
            "this task (the scorer only reads the predictors, so it could not check eligibility)",
            hint=f"use one of: {', '.join(names)}",
        )
    for required in task.scoring.required_predictors:
        if required not in names:
            close = difflib.get_close_matches(required, names, n=1)
            raise ConfigError(
                f"{f'tasks.{name}.' if name else ''}scoring.required_predictors: '{required}' is not a predictor "
                "of this task",
                hint=f"did you mean '{close[0]}'?" if close else f"use some of: {', '.join(names)}",
            )
    return predictors


@dataclass(frozen=True)
class Eligibility:
    """Rows outside a task's population: a mask over the rows and, for those rows (in order), the reason."""

    mask: np.ndarray
    messages: np.ndarray


def population_mask(frame: pd.DataFrame, population: TaskPopulation | None) -> np.ndarray:
    """True for the rows the task is for (all rows without a population); a missing value is not eligible."""
    if population is None:
        return np.ones(len(frame), dtype=bool)
    values = pd.to_numeric(frame[population.column], errors="coerce").astype("float64").to_numpy()
    keep = ~np.isnan(values)
    if population.min is not None:
        keep &= values >= population.min
    if population.max is not None:
        keep &= values <= population.max
    return keep


def ineligible_rows(frame: pd.DataFrame, population: TaskPopulation | None) -> Eligibility:
    """The rows :func:`population_mask` leaves out, each with a message naming the rule (never the value)."""
    inside = population_mask(frame, population)
    if population is None:
        return Eligibility(~inside, np.empty(0, dtype=object))
    unknown = frame[population.column].isna().to_numpy()[~inside]
    messages = np.where(
        unknown,
        f"outside the task's population: {population.column} is missing, so eligibility ({population.description}) "
        "is unknown; fill it in to score the row",
        f"outside the task's population ({population.description}): this model was not developed for the patient",
    ).astype(object)
    return Eligibility(~inside, messages)


def risk_band_label(outcome: TaskOutcome | None, band: str) -> str:
    """A risk band in the task's words: 'high probability of response', 'low risk of a blood-pressure event'."""
    return f"{band} {(outcome or DEFAULT_OUTCOME).wording}"


def describe_scores(outcome: TaskOutcome | None, bands: Sequence[Any]) -> str:
    """One line for the scorer's console: what p_response is, and the risk bands in the task's words."""
    wording = (outcome or DEFAULT_OUTCOME).wording
    parts, low = [], 0.0
    for i, band in enumerate(bands):
        close = "]" if i == len(bands) - 1 else ")"  # the last band includes its upper bound (1.0)
        parts.append(f"{risk_band_label(outcome, band.name)} [{low:g}, {band.upper:g}{close}")
        low = band.upper
    return f"p_response is the {wording}; risk bands: " + ", ".join(parts)
