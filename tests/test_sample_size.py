"""The sample-size gate (pipeline/sample_size.py) and what the train stage does with it: Riley's published worked
example, the gate's verdict and message, fewer folds for a small cohort, the small-cohort selection rule and the
registered name of a model developed on another cohort."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.sample_size import check_sample_size, gate_message, riley_sample_size
from pipeline.train import (
    SampleSizeParams,
    SelectionParams,
    adapt_folds,
    registered_model_name,
    sample_size_gate,
    small_cohort_selection,
)
from tests.test_train import tiny_params


def test_riley_bmj_worked_example() -> None:
    # Riley et al. BMJ 2020;368:m441, binary-outcome example (as in pmsampsize): 24 candidate parameters, outcome
    # prevalence 0.174, anticipated Cox-Snell R² 0.288 -> criteria 623, 668, 221; minimum 668 patients, 116
    # events, 4.84 events per parameter. Tolerance: 1 % on n (the paper rounds max R² and S₂ as pmsampsize does).
    result = riley_sample_size(parameters=24, prevalence=0.174, r2_cs=0.288)
    assert result.n_shrinkage == pytest.approx(623, rel=0.01)
    assert result.n_r2_difference == pytest.approx(668, rel=0.01)
    assert result.n_overall_risk == pytest.approx(221, rel=0.01)
    assert result.n == pytest.approx(668, rel=0.01)
    assert result.events == pytest.approx(116, abs=1.0)
    assert result.epp == pytest.approx(4.84, abs=0.01)


def test_the_c_statistic_route_gives_the_literature_r2() -> None:
    # literature.md §7c: C 0.70 at prevalence 0.5 -> R²cs 0.121 and 693 patients for 10 parameters (±0.5 %)
    result = riley_sample_size(parameters=10, prevalence=0.5, c_statistic=0.70)
    assert result.r2_cs == pytest.approx(0.121, abs=0.0015)
    assert result.n == pytest.approx(693, rel=0.005)


def test_a_cohort_below_the_minimum_fails_and_the_message_names_the_numbers() -> None:
    check = check_sample_size(n=27, events=6, parameters=23, anticipated_c=0.7)
    assert not check.passed
    assert check.events_per_parameter == pytest.approx(6 / 23, abs=1e-12)
    assert check.riley is not None
    assert check.riley.n > 27
    message = gate_message(check, cohort="ds005917", task="acute")
    for number in ("27 patients", "6 responders", "0.26 events per candidate parameter", f"{check.riley.n} patients"):
        assert number in message
    numbers = check.as_dict()
    assert (numbers["n"], numbers["events"], numbers["minimum_n"], numbers["passed"]) == (27, 6, check.riley.n, False)


def test_a_large_cohort_passes() -> None:
    check = check_sample_size(n=6000, events=2400, parameters=23, anticipated_c=0.7)
    assert check.passed
    assert check.riley is not None
    assert check.riley.n <= 6000


def test_no_events_is_a_failed_check_with_a_reason_not_an_exception() -> None:
    check = check_sample_size(n=30, events=0, parameters=5, anticipated_c=0.7)
    assert not check.passed
    assert check.riley is None
    assert "prevalence of 0 or 1" in gate_message(check, cohort="x", task="acute")


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="inconsistent"):
        check_sample_size(n=10, events=11, parameters=5, anticipated_c=0.7)
    with pytest.raises(ConfigError, match="parameters"):
        check_sample_size(n=10, events=3, parameters=0, anticipated_c=0.7)
    with pytest.raises(ValueError, match="anticipated_c"):
        SampleSizeParams(anticipated_c=0.5)


def test_the_gate_stops_with_exit_6_unless_overridden() -> None:
    y = np.array([1] * 6 + [0] * 21)
    with pytest.raises(PipelineError, match=r"below the minimum sample size.*27 patients") as raised:
        sample_size_gate(y, 23, SampleSizeParams(anticipated_c=0.7), task="acute", cohort="ds005917")
    assert raised.value.exit_code == ExitCode.CONFIG
    assert "override" in (raised.value.hint or "")
    check = sample_size_gate(y, 23, SampleSizeParams(anticipated_c=0.7, override=True), task="acute", cohort="x")
    assert not check.passed


def test_folds_adapt_to_the_smaller_class_and_refuse_below_two() -> None:
    params = tiny_params(cv_folds=5, min_fold_events=3)
    assert adapt_folds(np.array([1] * 100 + [0] * 100), params) == 5
    assert adapt_folds(np.array([1] * 7 + [0] * 100), params) == 2  # 7 events: 2 folds of >= 3
    with pytest.raises(PipelineError, match="5 responders") as raised:
        adapt_folds(np.array([1] * 5 + [0] * 100), params)
    assert raised.value.exit_code == ExitCode.CONFIG


def test_small_cohort_selection_puts_logistic_regression_first_under_one_se() -> None:
    declared = SelectionParams(metric="log_loss", rule="best", simplicity_order=["xgboost", "hist_gb", "logreg"])
    small = small_cohort_selection(declared)
    assert small.rule == "one_se"
    assert small.simplicity_order == ["logreg", "xgboost", "hist_gb"]
    assert small.se_multiplier == declared.se_multiplier


def test_a_model_of_another_cohort_never_takes_the_synthetic_name() -> None:
    assert registered_model_name("acute", ("synthetic",)) == "trd-acute"
    assert registered_model_name("acute", ("clinic",)) == "trd-acute-clinic"
    assert registered_model_name("acute", ["synthetic", "clinic"]) == "trd-acute-clinic-synthetic"
