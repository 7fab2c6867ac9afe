from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.contract import CohortContract
from pipeline.errors import PipelineError
from pipeline.features import FeatureSpec, build_features, build_target


@pytest.fixture
def spec(contract: CohortContract) -> FeatureSpec:
    columns = [contract.column(n) for n in ("age", "sex", "anxious_depression", "route")]
    return FeatureSpec.from_columns("t", "response_acute", columns)


def cohort(contract: CohortContract) -> pd.DataFrame:
    frame = contract.empty_frame(3)
    frame["age"] = [30.0, np.nan, 50.0]
    frame["sex"] = pd.array(["F", "M", None], dtype="string")
    frame["anxious_depression"] = pd.array([True, None, False], dtype="boolean")
    frame["route"] = pd.array(["oral", None, "iv_racemic"], dtype="string")
    frame["response_acute"] = pd.array([True, False, True], dtype="boolean")
    return frame


def test_features_are_float64_with_fixed_one_hot_columns(contract: CohortContract, spec: FeatureSpec) -> None:
    X = build_features(cohort(contract), spec)
    assert list(X.columns) == [
        "age", "sex=F", "sex=M", "anxious_depression",
        "route=iv_racemic", "route=intranasal_esketamine", "route=oral", "route=im_sc",
    ]  # fmt: skip
    assert (X.dtypes == "float64").all()
    np.testing.assert_array_equal(X["route=oral"].to_numpy(), [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(X["route=im_sc"].to_numpy(), [0.0, np.nan, 0.0])  # level never seen: still there
    np.testing.assert_array_equal(X["anxious_depression"].to_numpy(), [1.0, np.nan, 0.0])
    assert np.isnan(X.loc[1, "age"])


def test_features_ignore_extra_columns_and_row_order(contract: CohortContract, spec: FeatureSpec) -> None:
    frame = cohort(contract)
    shuffled = frame.iloc[[2, 0, 1]]
    pd.testing.assert_frame_equal(build_features(shuffled, spec).loc[frame.index], build_features(frame, spec))


def test_missing_input_column_is_named(contract: CohortContract, spec: FeatureSpec) -> None:
    with pytest.raises(PipelineError, match="route"):
        build_features(cohort(contract).drop(columns=["route"]), spec)


def test_target_refuses_missing_outcomes(contract: CohortContract, spec: FeatureSpec) -> None:
    frame = cohort(contract)
    np.testing.assert_array_equal(build_target(frame, spec), [1, 0, 1])
    frame.loc[0, "response_acute"] = pd.NA
    with pytest.raises(PipelineError, match="missing values"):
        build_target(frame, spec)


def test_spec_round_trips_through_json(tmp_path, spec: FeatureSpec) -> None:
    spec.save(tmp_path / "spec.json")
    assert FeatureSpec.load(tmp_path / "spec.json") == spec
    assert spec.feature_to_column()["route=oral"] == "route"
