"""Prediction tasks (clinical decision points) and the leakage rule that picks their predictors.

A task names its target and its prediction time; its predictors are exactly the contract's predictor columns
measured at or before that time, minus any it explicitly excludes. Outcomes, identifiers, metadata and
provenance columns can never become features (tests/test_tasks.py walks every task).

A task also declares the least data a score needs (``scoring``: required predictors, largest share missing);
the train stage stores it in the model, so the scorer applies it without params.yaml.
"""

from __future__ import annotations

import difflib

from pydantic import Field, RootModel, model_validator

from pipeline.contract import TIMING_ORDER, CohortContract, ColumnSpec, Timing
from pipeline.errors import ConfigError
from pipeline.features import ScoringRule
from pipeline.params import Frozen


class TaskSpec(Frozen):
    description: str = Field(min_length=5)
    target: str = Field(description="A boolean outcome column of the canonical contract.")
    prediction_time: Timing = Field(description="When the prediction is made, on the contract's clinical clock.")
    exclude_predictors: tuple[str, ...] = Field(default=(), description="Predictors deliberately left out.")
    scoring: ScoringRule = Field(
        default_factory=ScoringRule, description="The least data a row needs for a score (stored in the model)."
    )


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
    unknown = sorted(set(task.exclude_predictors) - {c.name for c in available})
    if unknown:
        raise ConfigError(f"exclude_predictors names columns that are not predictors of this task: {unknown}")
    predictors = [c for c in available if c.name not in task.exclude_predictors]
    names = [c.name for c in predictors]
    for required in task.scoring.required_predictors:
        if required not in names:
            close = difflib.get_close_matches(required, names, n=1)
            raise ConfigError(
                f"{f'tasks.{name}.' if name else ''}scoring.required_predictors: '{required}' is not a predictor "
                "of this task",
                hint=f"did you mean '{close[0]}'?" if close else f"use some of: {', '.join(names)}",
            )
    return predictors
