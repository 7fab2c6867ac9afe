"""The leakage guard: for every task in params.yaml, no outcome and nothing measured after the prediction time."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.contract import TIMING_ORDER, CohortContract
from pipeline.errors import ConfigError
from pipeline.features import FeatureSpec
from pipeline.params import parse_section, read_params_file
from pipeline.tasks import (
    TaskPopulation,
    TasksParams,
    TaskSpec,
    describe_scores,
    ineligible_rows,
    population_mask,
    risk_band_label,
    task_predictors,
)
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


# --- issue 18: outcome kinds, populations and the new tasks' timing --------------------------------------------

LATER_THAN_BASELINE = {
    "madrs_24h", "cadss_peak_first", "sbp_rise_first_mmhg", "dbp_rise_first_mmhg", "gad7_end", "madrs_end",
    "madrs_week8", "bp_event_first", "anxiety_response_end", "sustained_week8", "response_end",
}  # fmt: skip


@pytest.mark.parametrize("name", ["durability", "safety_first_session", "anxiety"])
def test_new_tasks_see_baseline_only(name: str, contract: CohortContract) -> None:
    """Predicted before the first dose: no first-session reading (the BP rises define the safety event) and no
    later score (GAD-7 at the end defines anxiety response) can be a predictor."""
    task = TASKS.get(name)
    assert task.prediction_time == "baseline"
    names = {c.name for c in task_predictors(task, contract, name)}
    assert not names & LATER_THAN_BASELINE
    assert {"sbp_baseline", "dbp_baseline", "hypertension_history"} <= names
    if name != "safety_first_session":  # the harm task's predictors are pre-specified (the published ones)
        assert {"gad7_baseline", "psychotherapy"} <= names


def test_a_pre_specified_predictor_list_keeps_contract_order_and_only_those(contract: CohortContract) -> None:
    task = TASKS.get("acute").model_copy(update={"predictors": ("route", "age", "madrs_baseline")})
    assert [c.name for c in task_predictors(task, contract, "acute")] == ["age", "madrs_baseline", "route"]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"predictors": ("madrs_24h",)}, "measured at first_dose"),  # leakage: after the prediction time
        ({"predictors": ("response_acute",)}, "not a predictor column"),  # an outcome
        ({"predictors": ("madrs_basline",)}, "did you mean 'madrs_baseline'"),  # a typo
    ],
)
def test_a_pre_specified_predictor_list_keeps_the_leakage_rule(
    contract: CohortContract, update: dict, message: str
) -> None:
    task = TASKS.get("acute").model_copy(update=update)
    with pytest.raises(ConfigError) as raised:
        task_predictors(task, contract, "acute")
    assert "tasks.acute.predictors" in str(raised.value)
    assert message in f"{raised.value} {getattr(raised.value, 'hint', '')}"


@pytest.mark.parametrize(
    "extra",
    [
        {"predictors": ["age"], "exclude_predictors": ["bmi"]},
        {"predictors": []},
        {"predictors": ["age", "age"]},
    ],
)
def test_a_predictor_list_is_one_rule_non_empty_without_repeats(extra: dict) -> None:
    raw = {"description": "a task", "target": "response_acute", "prediction_time": "baseline", **extra}
    with pytest.raises(ValueError, match="predictors"):
        TaskSpec.model_validate(raw)


def test_the_safety_task_is_a_harm_model_and_says_so() -> None:
    outcome = TASKS.get("safety_first_session").outcome
    assert outcome.kind == "harm"
    assert risk_band_label(outcome, "high") == "high risk of a blood-pressure event"
    bands = [SimpleNamespace(name="low", upper=0.3), SimpleNamespace(name="high", upper=1.0)]
    line = describe_scores(outcome, bands)
    assert "p_response is the risk of a blood-pressure event" in line
    assert "response" not in line.replace("p_response", "")
    assert risk_band_label(TASKS.get("acute").outcome, "low") == "low probability of response"


def test_population_keeps_rows_in_range_and_treats_missing_as_outside() -> None:
    population = TASKS.get("anxiety").population
    frame = pd.DataFrame({"gad7_baseline": [9.0, 10.0, 21.0, None]})
    assert population_mask(frame, population).tolist() == [False, True, True, False]
    assert population_mask(frame, None).all()
    outside = ineligible_rows(frame.assign(patient_id=["ZZ1", "ZZ2", "ZZ3", "ZZ4"]), population)
    assert outside.mask.tolist() == [True, False, False, True]
    assert "gad7_baseline is missing" in outside.messages[1]
    assert ">= 10" in outside.messages[0]
    assert not any("9" in m.replace(">= 10", "") or "ZZ" in m for m in outside.messages)  # never the value or id


def test_a_population_on_a_column_the_task_cannot_see_is_refused(contract: CohortContract) -> None:
    task = TaskSpec(
        description="anxiety with a later column as its filter",
        target="anxiety_response_end",
        prediction_time="baseline",
        population=TaskPopulation(column="gad7_end", min=10, description="end GAD-7 >= 10"),
    )
    with pytest.raises(ConfigError, match=r"population\.column"):
        task_predictors(task, contract, "anxiety")


def test_a_population_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="min, max or both"):
        TaskPopulation(column="gad7_baseline", description="no bound at all")
