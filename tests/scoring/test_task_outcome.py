"""The scorer in a task's own words (issue 18): a harm model's output says "risk of a blood-pressure event", and
rows outside a task's population are rejected as ineligible, with the reason, instead of being scored."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.contract import CohortContract
from pipeline.errors import ExitCode
from tests.scoring.helpers import PREDICTORS, invoke, save_test_model, write

HARM = {"kind": "harm", "wording": "risk of a blood-pressure event", "events": "patients with an event",
        "non_events": "patients without an event", "rate": "event rate"}  # fmt: skip
POPULATION = {"column": "madrs_baseline", "min": 25, "description": "baseline MADRS >= 25"}
ROW = {"age": "45", "sex": "F", "bmi": "28.0", "madrs_baseline": "30", "route": "iv_racemic",
       "family_history_aud": "no", "benzodiazepine_mg_deq": "5.0"}  # fmt: skip


@pytest.fixture(scope="module")
def harm_model(tmp_path_factory, contract: CohortContract) -> Path:
    return save_test_model(
        contract, tmp_path_factory.mktemp("model") / "safety", lambda X: 0.05 * (X["age"] - 45),
        info_overrides={"outcome": HARM, "population": POPULATION},
    )  # fmt: skip


def score(rows: list[dict[str, str]], folder: Path, model: Path) -> tuple[int, str, pd.DataFrame, pd.DataFrame]:
    source = write(pd.DataFrame(rows, columns=["patient_id", *PREDICTORS]), folder / "in.csv")
    out = folder / "scores.parquet"
    code, text = invoke("score", str(source), "-o", str(out), "--model", str(model))
    return code, text, pd.read_parquet(out), pd.read_parquet(folder / "scores.rejects.parquet")


def test_a_harm_model_is_worded_as_a_risk_of_the_event(tmp_path, harm_model) -> None:
    code, text, scored, _ = score([{"patient_id": "P1", **ROW}], tmp_path, harm_model)
    assert code == 0, text
    assert scored["outcome"].tolist() == ["risk of a blood-pressure event"]
    assert "p_response is the risk of a blood-pressure event" in text
    assert "high risk of a blood-pressure event" in text


def test_rows_outside_the_population_are_rejected_as_ineligible(tmp_path, harm_model) -> None:
    rows = [
        {"patient_id": "ZZ-in", **ROW},
        {"patient_id": "ZZ-low", **ROW, "madrs_baseline": "22"},
        {"patient_id": "ZZ-unknown", **ROW, "madrs_baseline": ""},
    ]
    code, text, scored, rejects = score(rows, tmp_path, harm_model)
    assert code == ExitCode.ROWS_REJECTED, text
    assert scored["patient_id"].tolist() == ["ZZ-in"]
    assert rejects["source_row"].tolist() == [2, 3]
    assert (rejects["reason_code"] == "ineligible").all()
    assert (rejects["column"] == "madrs_baseline").all()
    assert rejects["value"].isna().all()  # the reason, never the value
    assert "baseline MADRS >= 25" in rejects.iloc[0]["message"]
    assert "missing" in rejects.iloc[1]["message"]
    assert not rejects["message"].str.contains("22|ZZ").any()


def test_a_response_model_keeps_its_wording(tmp_path, contract: CohortContract) -> None:
    model = save_test_model(contract, tmp_path / "acute", lambda X: 0.05 * (X["age"] - 45))
    code, text, scored, _ = score([{"patient_id": "P1", **ROW}], tmp_path, model)
    assert code == 0, text
    assert scored["outcome"].tolist() == ["probability of response"]
