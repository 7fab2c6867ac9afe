"""Evaluate params and the derived age bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.performance import age_bands
from tests.evaluate.conftest import eval_params

# --------------------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------------------


def test_params_section_parses_and_refuses_bad_values() -> None:
    params = eval_params()
    grid = params.decision_curve.grid()
    assert grid[0] == params.decision_curve.start
    assert grid[-1] == params.decision_curve.stop
    with pytest.raises(ValueError, match="thresholds"):
        eval_params(thresholds=[0.5, 0.3])
    with pytest.raises(ValueError, match="age_bands"):
        eval_params(subgroups={"columns": ["sex"], "age_bands": [50, 18]})
    with pytest.raises(ValueError, match="identifier"):
        eval_params(subgroups={"columns": ["patient_id"], "age_bands": [18]})
    with pytest.raises(ValueError, match="extra"):
        eval_params(bootstrap_reps=100)


def test_age_bands_use_completed_years() -> None:
    bands = age_bands(pd.Series([18.0, 34.9, 35.0, 64.9, 65.0, 90.0, np.nan]), (18, 35, 50, 65))
    assert bands.astype("string").tolist() == ["18-34", "18-34", "35-49", "50-64", "65+", "65+", pd.NA]
