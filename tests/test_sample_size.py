"""Riley minimum sample size (pipeline/sample_size.py): the published worked example, the C-statistic route, and the
check of a development cohort with its message."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.protocol import SampleSizeParams
from pipeline.sample_size import check_sample_size, gate_message, riley_sample_size


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
    # docs/literature.md §7c: C 0.70 at prevalence 0.5 -> R²cs 0.121 and 693 patients for 10 parameters (±0.5 %)
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
    for number in (
        "27 patients",
        "6 of them with the outcome",
        "0.26 events per candidate parameter",
        f"{check.riley.n} patients",
    ):
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
