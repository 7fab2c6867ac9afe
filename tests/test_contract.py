from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pandera.errors
import pytest
import yaml

from pipeline.contract import PREDICTOR_ROLES, TIMING_ORDER, CohortContract, load_contract
from pipeline.errors import ConfigError
from tests.conftest import REPO_ROOT


def test_contract_file_is_consistent(contract: CohortContract) -> None:
    names = contract.names
    assert len(names) == len(set(names))
    assert set(contract.roles) == {c.role for c in contract.columns} | set(contract.roles)
    for column in contract.columns:
        assert column.role in contract.roles
        if column.min is not None:
            assert column.min < column.max
        if column.role in PREDICTOR_ROLES:
            assert column.timing in ("baseline", "first_dose")


def test_predictor_timing_rule(contract: CohortContract) -> None:
    baseline = {c.name for c in contract.predictors_up_to("baseline")}
    early = {c.name for c in contract.predictors_up_to("first_dose")}
    assert "madrs_baseline" in baseline
    assert "madrs_24h" not in baseline
    assert "madrs_24h" in early
    assert not any(contract.column(n).role == "outcome" for n in early)
    assert TIMING_ORDER[0] == "baseline"


def _write_variant(tmp_path: Path, mutate) -> Path:
    """A changed contract in a configs folder of its own (its derived levels read sources/ and the scale registry)."""
    raw = yaml.safe_load((REPO_ROOT / "configs" / "cohort_schema.yaml").read_text())
    mutate(raw)
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    path = configs / "cohort_schema.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _col(raw: dict, name: str) -> dict:
    return next(c for c in raw["columns"] if c["name"] == name)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["columns"].append(dict(_col(r, "age"))), "duplicate column names"),
        (lambda r: _col(r, "age").update(role="predictor"), "role"),
        (lambda r: _col(r, "age").update(min=90, max=18), "must be below max"),
        (lambda r: _col(r, "sex").pop("levels"), "needs 'levels'"),
        (lambda r: _col(r, "madrs_end").update(timing="baseline"), "cannot be known"),
        (lambda r: _col(r, "madrs_24h").update(role="baseline_predictor"), "timing 'baseline'"),
        (lambda r: _col(r, "age").update(colour="blue"), "Extra inputs"),
    ],
)
def test_broken_contract_is_refused(tmp_path: Path, mutate, expected: str) -> None:
    path = _write_variant(tmp_path, mutate)
    with pytest.raises(ConfigError, match=expected) as info:
        load_contract(path)
    assert str(path) in str(info.value)


def test_missing_contract_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_contract(tmp_path / "nope.yaml")


def test_schema_accepts_empty_typed_frame_and_rejects_out_of_range(contract: CohortContract) -> None:
    frame = contract.empty_frame(2).assign(patient_id=["a", "b"], cohort="synthetic", site="s1")
    validated = contract.pandera_schema().validate(frame)
    assert list(validated.columns) == contract.names
    bad = frame.assign(age=[30.0, 250.0])
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors)):
        contract.pandera_schema().validate(bad)
    extra = frame.assign(shoe_size=1)
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors)):
        contract.pandera_schema().validate(extra)


def test_schema_rejects_duplicate_patient_in_a_cohort(contract: CohortContract) -> None:
    frame = contract.empty_frame(2).assign(patient_id=["a", "a"], cohort="synthetic", site="s1")
    with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors)):
        contract.pandera_schema().validate(frame)
    other = frame.assign(cohort=pd.array(["synthetic", "ds005917"], dtype="string"))
    contract.pandera_schema().validate(other)
