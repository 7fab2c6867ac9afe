"""The leakage guard: for every task in params.yaml, no outcome and nothing measured after the prediction time."""

from __future__ import annotations

import pytest

from pipeline.contract import TIMING_ORDER, CohortContract
from pipeline.errors import ConfigError
from pipeline.features import FeatureSpec
from pipeline.params import parse_section, read_params_file
from pipeline.tasks import TasksParams, TaskSpec, task_predictors
from tests.conftest import REPO_ROOT

TASKS = parse_section(TasksParams, read_params_file(REPO_ROOT / "params.yaml"), "tasks", "params.yaml")


@pytest.mark.parametrize("name", sorted(TASKS.root))
def test_no_outcome_or_later_column_reaches_the_features(name: str, contract: CohortContract) -> None:
    task = TASKS.get(name)
    columns = task_predictors(task, contract)
    spec = FeatureSpec.from_columns(name, task.target, columns)
    cutoff = TIMING_ORDER.index(task.prediction_time)
    assert spec.input_columns, "a task needs predictors"
    for column_name in spec.input_columns:
        column = contract.column(column_name)
        assert column.role in ("baseline_predictor", "early_predictor"), column_name
        assert TIMING_ORDER.index(column.timing) <= cutoff, column_name
    assert task.target not in spec.input_columns
    # feature names map back to canonical predictors only
    assert set(spec.feature_to_column().values()) == set(spec.input_columns)
    forbidden = {c.name for c in contract.columns if c.role in ("outcome", "identifier", "metadata", "provenance")}
    assert not forbidden & set(spec.input_columns)


def test_early_task_gets_early_markers_and_baseline_tasks_do_not(contract: CohortContract) -> None:
    early = {c.name for c in task_predictors(TASKS.get("course_early"), contract)}
    baseline = {c.name for c in task_predictors(TASKS.get("course"), contract)}
    assert {"madrs_24h", "cadss_peak_first", "sbp_rise_first_mmhg"} <= early
    assert not {"madrs_24h", "cadss_peak_first", "sbp_rise_first_mmhg"} & baseline


def test_target_must_come_after_the_prediction_time(contract: CohortContract) -> None:
    leaky = TaskSpec(description="predicting the past", target="response_acute", prediction_time="acute")
    with pytest.raises(ConfigError, match="not measured after"):
        task_predictors(leaky, contract)


def test_target_must_be_a_boolean_outcome(contract: CohortContract) -> None:
    with pytest.raises(ConfigError, match="not a boolean outcome"):
        task_predictors(TaskSpec(description="bad target", target="age", prediction_time="baseline"), contract)


def test_excluding_an_unknown_predictor_is_an_error(contract: CohortContract) -> None:
    task = TaskSpec(
        description="a typo in the exclusions",
        target="response_end",
        prediction_time="baseline",
        exclude_predictors=("madrs_24h",),
    )
    with pytest.raises(ConfigError, match="not predictors"):
        task_predictors(task, contract)


def test_unknown_task_and_bad_names() -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        TASKS.get("chronic")
    with pytest.raises(ConfigError, match="lower-case"):
        parse_section(
            TasksParams,
            {"tasks": {"Acute": {"description": "x" * 6, "target": "response_acute", "prediction_time": "baseline"}}},
            "tasks",
            "params.yaml",
        )
