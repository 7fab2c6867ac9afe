"""The development-cohort protocol (pipeline/protocol.py): the sample-size gate's exit 6 and override, folds that
adapt to a small cohort, the small-cohort selection rule, and the registry name of a model of another cohort."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ExitCode, PipelineError
from pipeline.modelling.params import SelectionParams
from pipeline.protocol import (
    SampleSizeParams,
    adapt_folds,
    registered_model_name,
    sample_size_gate,
    small_cohort_selection,
)
from tests.modelling.test_training import tiny_params


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
