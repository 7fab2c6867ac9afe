"""Harmonisation rules, one at a time, on tiny exports in the synthetic/clinic export format."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.contract import CohortContract
from pipeline.errors import PipelineError
from pipeline.harmonise import HarmoniseResult, harmonise, rules_from_tabular_spec
from pipeline.scales import ScaleConversions
from pipeline.sources.check import load_tabular_spec
from pipeline.sources.spec import TabularSourceSpec
from pipeline.sources.tabular import stage_tabular
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def spec() -> TabularSourceSpec:
    return load_tabular_spec(REPO_ROOT / "configs" / "sources" / "synthetic.yaml")


def record(**overrides: object) -> dict[str, object]:
    """One clean export row; tests override the fields they exercise."""
    row: dict[str, object] = {
        "patient_ref": "P1", "updated_at": "2026-01-01", "site": "site_01", "age_years": 40.0, "sex": "F",
        "weight": 70.0, "weight_unit": "kg", "height": 170.0, "height_unit": "cm", "bmi": 24.2,
        "failed_ad_trials": 3.0, "anxious_depression": "yes", "ptsd": "no", "suicide_attempt_lifetime": "0",
        "psych_hosp_prior": "1", "fh_aud": "no", "prior_ect": "no", "bzd_mg_deq": 0.0, "crp_mg_l": 2.0,
        "si_current": "no", "route": "IV", "dose": 0.5, "n_sessions": 6.0, "psychotherapy": "none",
        "scale": "MADRS", "score_baseline": 30.0, "score_24h": 20.0, "score_acute": 14.0, "score_end": 10.0,
        "score_week8": 16.0, "cadss_peak_first": 8.0, "sbp_rise_first": 15.0,
        "htn": "no", "bp_sys_pre": 125.0, "bp_dia_pre": 80.0, "postpartum_onset": "no", "gad7_baseline": 14.0,
        "dbp_rise_first": 9.0, "gad7_end": 6.0,
    }  # fmt: skip
    row.update(overrides)
    return row


def run(
    rows: list[dict], spec: TabularSourceSpec, contract: CohortContract, scales: ScaleConversions
) -> HarmoniseResult:
    staged = stage_tabular(pd.DataFrame(rows), spec, source_file="export.parquet")
    result = harmonise(staged.rows, rules_from_tabular_spec(spec), contract, scales)
    assert len(result.cohort) + len(result.quarantine) == len(rows)  # nothing lost, ever
    return result


def test_clean_row_is_kept_with_canonical_values(spec, contract, scales) -> None:
    result = run([record()], spec, contract, scales)
    row = result.cohort.iloc[0]
    assert row["patient_id"] == "P1"
    assert row["cohort"] == "synthetic"
    assert row["sex"] == "F"
    assert row["route"] == "iv_racemic"
    assert bool(row["anxious_depression"]) is True
    assert bool(row["prior_psych_hospitalisation"]) is True
    assert row["madrs_source_scale"] == "madrs"
    assert result.quarantine.empty


def test_outcomes_follow_the_scores(spec, contract, scales) -> None:
    rows = [
        record(patient_ref="resp", score_baseline=30.0, score_acute=15.0, score_end=10.0, score_week8=15.0),
        record(patient_ref="nonresp", score_baseline=30.0, score_acute=16.0, score_end=16.0, score_week8=10.0),
        record(patient_ref="lost", score_baseline=30.0, score_acute=np.nan, score_end=12.0, score_week8=np.nan),
    ]
    cohort = run(rows, spec, contract, scales).cohort.set_index("patient_id")
    assert bool(cohort.loc["resp", "response_acute"])
    assert bool(cohort.loc["resp", "remission_end"])
    assert bool(cohort.loc["resp", "sustained_week8"])
    assert cohort.loc["resp", "madrs_pct_change_acute"] == pytest.approx(-50.0)
    assert not bool(cohort.loc["nonresp", "response_acute"])
    assert not bool(cohort.loc["nonresp", "sustained_week8"])  # week-8 response alone is not sustained
    assert pd.isna(cohort.loc["lost", "response_acute"])  # missing stays missing
    assert bool(cohort.loc["lost", "response_end"])
    assert pd.isna(cohort.loc["lost", "sustained_week8"])


def test_units_are_converted_and_bmi_derived(spec, contract, scales) -> None:
    rows = [record(patient_ref="imperial", bmi=np.nan, weight=154.3, weight_unit="lb", height=67.0, height_unit="in")]
    result = run(rows, spec, contract, scales)
    expected = 154.3 * 0.45359237 / (67.0 * 0.0254) ** 2
    assert result.cohort.loc[0, "bmi"] == pytest.approx(expected)
    assert result.conversions == {
        "bmi_derived": 1, "weight_to_kg": 1, "height_to_m": 1, "converted_capped_to_madrs_range": 0,
    }  # fmt: skip


def test_recorded_bmi_wins_over_weight_and_height(spec, contract, scales) -> None:
    result = run([record(bmi=31.0)], spec, contract, scales)
    assert result.cohort.loc[0, "bmi"] == 31.0
    assert result.conversions["bmi_derived"] == 0


def test_unknown_weight_unit_is_quarantined(spec, contract, scales) -> None:
    result = run([record(weight_unit="stone", bmi=np.nan)], spec, contract, scales)
    assert result.quarantine.loc[0, "reason_code"] == "unknown_code"
    assert result.quarantine.loc[0, "column"] == "weight_unit"


def test_hamd_and_qids_are_converted_onto_madrs(spec, contract, scales) -> None:
    rows = [
        record(patient_ref="hamd", scale="HAM-D17", score_baseline=20.0, score_acute=10.0),
        record(patient_ref="qids", scale="qids", score_baseline=16.0, score_acute=8.0),
    ]
    result = run(rows, spec, contract, scales)
    cohort = result.cohort.set_index("patient_id")
    assert cohort.loc["hamd", "madrs_baseline"] == pytest.approx(1.315 * 20 - 0.25)
    assert cohort.loc["hamd", "madrs_source_scale"] == "hamd17"
    assert cohort.loc["qids", "madrs_baseline"] == pytest.approx(1.315 * (1.254 * 16 + 0.45) - 0.25)
    assert cohort.loc["qids", "madrs_source_scale"] == "qids_sr16"
    assert result.conversions["hamd17_to_madrs"] == 5
    assert result.conversions["qids_sr16_to_madrs"] == 5


def test_score_range_is_checked_on_the_recorded_scale(spec, contract, scales) -> None:
    rows = [
        record(patient_ref="madrs75", score_baseline=75.0),
        record(patient_ref="qids30", scale="QIDS-SR16", score_baseline=30.0),
        record(patient_ref="hamd45", scale="HAMD17", score_baseline=45.0),  # valid HAM-D; converts near 59
    ]
    result = run(rows, spec, contract, scales)
    quarantined = result.quarantine.set_index("patient_id")
    assert set(quarantined.index) == {"madrs75", "qids30"}
    assert (quarantined["reason_code"] == "impossible_value").all()
    assert "MADRS range 0–60" in quarantined.loc["madrs75", "message"]
    assert "QIDS-SR16 range 0–27" in quarantined.loc["qids30", "message"]  # the registry's label


def test_sex_codes_are_normalised(spec, contract, scales) -> None:
    rows = [record(patient_ref=f"P{i}", sex=code) for i, code in enumerate(["female", " 2 ", "W", "male", "1", "m"])]
    sexes = run(rows, spec, contract, scales).cohort.sort_values("patient_id")["sex"].tolist()
    assert sexes == ["F", "F", "F", "M", "M", "M"]


def test_unknown_category_is_quarantined_with_a_message(spec, contract, scales) -> None:
    result = run([record(route="Spravto")], spec, contract, scales)
    row = result.quarantine.iloc[0]
    assert row["reason_code"] == "unknown_code"
    assert row["column"] == "route"
    assert row["value"] == "Spravto"
    assert "configs/sources/synthetic.yaml" in row["message"]
    assert row["source_row"] == 1


def test_unknown_yes_no_code_is_quarantined(spec, contract, scales) -> None:
    result = run([record(ptsd="maybe")], spec, contract, scales)
    assert result.quarantine.loc[0, "column"] == "comorbid_ptsd"


def test_text_in_a_number_is_wrong_type(spec, contract, scales) -> None:
    result = run([record(age_years="forty")], spec, contract, scales)
    assert result.quarantine.loc[0, "reason_code"] == "wrong_type"
    assert result.quarantine.loc[0, "column"] == "age"


def test_fractional_count_is_wrong_type(spec, contract, scales) -> None:
    result = run([record(failed_ad_trials=2.5)], spec, contract, scales)
    assert result.quarantine.loc[0, "reason_code"] == "wrong_type"


def test_impossible_value_is_quarantined_not_clipped(spec, contract, scales) -> None:
    result = run([record(age_years=250.0), record(patient_ref="P2")], spec, contract, scales)
    assert list(result.cohort["patient_id"]) == ["P2"]
    row = result.quarantine.iloc[0]
    assert (row["reason_code"], row["column"]) == ("impossible_value", "age")
    assert "250" in row["message"]


def test_several_problems_make_one_quarantine_row_listing_all(spec, contract, scales) -> None:
    result = run([record(age_years=250.0, sex="x")], spec, contract, scales)
    assert len(result.quarantine) == 1
    message = result.quarantine.loc[0, "message"]
    assert "sex" in message
    assert "age" in message


def test_missing_id_is_quarantined(spec, contract, scales) -> None:
    result = run([record(patient_ref="  ")], spec, contract, scales)
    assert result.quarantine.loc[0, "reason_code"] == "missing_id"


def test_duplicates_most_complete_then_latest_then_first(spec, contract, scales) -> None:
    rows = [
        record(patient_ref="A", crp_mg_l=np.nan, updated_at="2026-03-01"),  # less complete, newer: loses
        record(patient_ref="A", crp_mg_l=5.0, updated_at="2026-01-01"),  # most complete: wins
        record(patient_ref="B", crp_mg_l=1.0, updated_at="2026-01-01"),  # same completeness, older: loses
        record(patient_ref="B", crp_mg_l=2.0, updated_at="2026-02-01"),  # latest: wins
        record(patient_ref="C", crp_mg_l=3.0),  # exact tie: first in file order wins
        record(patient_ref="C", crp_mg_l=4.0),
    ]
    result = run(rows, spec, contract, scales)
    kept = result.cohort.set_index("patient_id")["crp_mg_l"].to_dict()
    assert kept == {"A": 5.0, "B": 2.0, "C": 3.0}
    assert (result.quarantine["reason_code"] == "duplicate_record").all()
    assert sorted(result.quarantine["source_row"].tolist()) == [1, 3, 6]
    assert "row 2" in result.quarantine.set_index("source_row").loc[1, "message"]


def test_invalid_duplicate_does_not_win(spec, contract, scales) -> None:
    rows = [record(patient_ref="A", age_years=250.0), record(patient_ref="A", crp_mg_l=np.nan)]
    result = run(rows, spec, contract, scales)
    assert len(result.cohort) == 1
    assert result.quarantine.loc[0, "reason_code"] == "impossible_value"


def test_missing_required_column_names_file_and_column(spec) -> None:
    frame = pd.DataFrame([record()]).drop(columns=["sex"])
    with pytest.raises(PipelineError) as info:
        stage_tabular(frame, spec, source_file="export.csv")
    assert "export.csv" in str(info.value)
    assert "sex" in str(info.value)


def test_missing_values_stay_missing(spec, contract, scales) -> None:
    result = run([record(crp_mg_l=np.nan, sex=None, ptsd="")], spec, contract, scales)
    row = result.cohort.iloc[0]
    assert pd.isna(row["crp_mg_l"])
    assert pd.isna(row["sex"])
    assert pd.isna(row["comorbid_ptsd"])


# --------------------------------------------------------------------------------------------------------------
# missing-value markers, number parsing that does not depend on the chunk, whole-number float codes
# --------------------------------------------------------------------------------------------------------------

MARKERS = ["", "   ", "NA", "N/A", "n/a", "NaN", "nan", "NULL", "null", "None", "#N/A", ".", " na "]


def as_text(row: dict[str, object]) -> dict[str, object]:
    """The row as a CSV reader gives it: every value text."""
    return {key: None if value is None else str(value) for key, value in row.items()}


@pytest.mark.parametrize("marker", MARKERS)
def test_missing_markers_are_missing_in_numbers_codes_and_flags(spec, contract, scales, marker) -> None:
    row = as_text(record(bmi=marker, crp_mg_l=marker, sex=marker, ptsd=marker, route=marker, weight=marker))
    result = run([row], spec, contract, scales)
    assert result.quarantine.empty, result.quarantine["message"].tolist()
    kept = result.cohort.iloc[0]
    for column in ("bmi", "crp_mg_l", "sex", "comorbid_ptsd", "route"):
        assert pd.isna(kept[column]), column


def test_a_marker_id_is_a_missing_id(spec, contract, scales) -> None:
    result = run([as_text(record(patient_ref="NA"))], spec, contract, scales)
    assert result.quarantine["reason_code"].tolist() == ["missing_id"]


def test_a_source_adds_its_own_markers_matched_in_text_and_numbers(spec, contract, scales) -> None:
    own = spec.model_copy(update={"missing_values": ["-99", "unknown"]})
    rows = [
        record(patient_ref="num", crp_mg_l=-99.0),
        as_text(record(patient_ref="text", crp_mg_l="-99", sex="Unknown")),
    ]
    staged = stage_tabular(pd.DataFrame(rows), own, source_file="export.csv")
    result = harmonise(staged.rows, rules_from_tabular_spec(own), contract, scales)
    assert result.quarantine.empty
    assert result.cohort["crp_mg_l"].isna().all()
    # without the source's markers the same values are an impossible CRP and an unknown sex code
    assert set(run(rows, spec, contract, scales).quarantine["reason_code"]) == {"impossible_value", "unknown_code"}


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", "1e309", "12abc", "1,5", "--3", "0x1A"])
def test_text_that_is_not_a_finite_number_is_wrong_type(spec, contract, scales, text) -> None:
    result = run([as_text(record(crp_mg_l=text))], spec, contract, scales)
    assert result.quarantine["reason_code"].tolist() == ["wrong_type"]
    assert result.quarantine["column"].tolist() == ["crp_mg_l"]


def test_an_infinite_number_in_a_numeric_column_is_wrong_type(spec, contract, scales) -> None:
    result = run([record(crp_mg_l=np.inf)], spec, contract, scales)
    assert result.quarantine["reason_code"].tolist() == ["wrong_type"]


@pytest.mark.parametrize(("text", "value"), [(" 12 ", 12.0), ("1.", 1.0), (".5", 0.5), ("+3", 3.0), ("2e0", 2.0)])
def test_ordinary_number_spellings_parse(spec, contract, scales, text, value) -> None:
    result = run([as_text(record(crp_mg_l=text))], spec, contract, scales)
    assert result.quarantine.empty
    assert result.cohort["crp_mg_l"].iloc[0] == value


def test_a_value_gets_the_same_verdict_whatever_else_is_in_its_chunk(spec, contract, scales) -> None:
    values = ["2", "NaN", "inf", "1e309", "abc", "n/a", "3.5", " ", "-1"]
    rows = [as_text(record(patient_ref=f"P{i}", crp_mg_l=v)) for i, v in enumerate(values)]
    together = run(rows, spec, contract, scales)
    alone = [run([row], spec, contract, scales) for row in rows]
    verdict_together = dict(zip(together.quarantine["patient_id"], together.quarantine["reason_code"], strict=True))
    for row, result in zip(rows, alone, strict=True):
        expected = result.quarantine["reason_code"].tolist()
        got = [verdict_together[row["patient_ref"]]] if row["patient_ref"] in verdict_together else []
        assert got == expected, row["crp_mg_l"]
    assert len(together.quarantine) == 4  # NaN, n/a and " " are missing; inf, 1e309, abc and -1 (range) are not


@pytest.mark.parametrize(("flag", "expected"), [("1.0", True), ("0.0", False), ("1", True), (1.0, True), (0.0, False)])
def test_flags_written_as_whole_number_floats_are_accepted(spec, contract, scales, flag, expected) -> None:
    result = run([record(suicide_attempt_lifetime=flag)], spec, contract, scales)
    assert result.quarantine.empty
    assert bool(result.cohort["lifetime_suicide_attempt"].iloc[0]) is expected


def test_a_fractional_flag_is_still_an_unknown_code(spec, contract, scales) -> None:
    result = run([record(suicide_attempt_lifetime="1.5")], spec, contract, scales)
    assert result.quarantine["reason_code"].tolist() == ["unknown_code"]


# --------------------------------------------------------------------------------------------------------------
# duplicate_order is what picks the winner; per-row scale codes come from the source's config
# --------------------------------------------------------------------------------------------------------------


def test_duplicate_order_file_order_keeps_the_first_record_even_if_less_complete(spec, contract, scales) -> None:
    own = spec.model_copy(update={"duplicate_order": ["file_order"]})
    rows = [record(patient_ref="A", crp_mg_l=np.nan), record(patient_ref="A", crp_mg_l=5.0)]
    staged = stage_tabular(pd.DataFrame(rows), own, source_file="export.csv")
    result = harmonise(staged.rows, rules_from_tabular_spec(own), contract, scales)
    assert pd.isna(result.cohort.loc[0, "crp_mg_l"])
    assert result.quarantine.loc[0, "message"] == (
        "another record of this patient was kept (row 1): the first in file order wins"
    )


def test_duplicate_order_updated_at_first_keeps_the_latest_even_if_less_complete(spec, contract, scales) -> None:
    own = spec.model_copy(update={"duplicate_order": ["updated_at", "completeness", "file_order"]})
    rows = [
        record(patient_ref="A", crp_mg_l=5.0, updated_at="2026-01-01"),
        record(patient_ref="A", crp_mg_l=np.nan, updated_at="2026-03-01"),
    ]
    staged = stage_tabular(pd.DataFrame(rows), own, source_file="export.csv")
    result = harmonise(staged.rows, rules_from_tabular_spec(own), contract, scales)
    assert result.source_rows.tolist() == [2]
    assert result.quarantine.loc[0, "message"].endswith(
        "the latest updated_at, then the most complete, then the first in file order wins"
    )


def test_the_default_duplicate_order_is_what_the_synthetic_config_declares(spec) -> None:
    assert spec.effective_duplicate_order() == ["completeness", "updated_at", "file_order"]
    assert rules_from_tabular_spec(spec).duplicate_order == ("completeness", "updated_at", "file_order")


def test_an_unknown_per_row_scale_code_names_the_source_s_codes(spec, contract, scales) -> None:
    result = run([record(scale="PHQ")], spec, contract, scales)
    assert result.quarantine.loc[0, "message"] == (
        "depression scale 'PHQ' is not a scale code of this source (ham-d17, hamd17, hdrs17, madrs, qids, "
        "qids-sr16, qids_sr16); add it under depression_scores.scale_codes in configs/sources/synthetic.yaml"
    )


@pytest.mark.parametrize("spelling", ["none", "None", " NONE "])
def test_a_code_of_the_column_wins_over_the_missing_markers(spec, contract, scales, spelling) -> None:
    """psychotherapy 'none' is a level; in a column without such a code, 'None' stays a missing value."""
    result = run([as_text(record(psychotherapy=spelling, ptsd="None"))], spec, contract, scales)
    assert result.quarantine.empty
    assert result.cohort["psychotherapy"].iloc[0] == "none"
    assert pd.isna(result.cohort["comorbid_ptsd"].iloc[0])


def test_the_first_session_bp_event_follows_its_three_criteria(spec, contract, scales) -> None:
    """lit §12: SBP rise >= 40, or baseline + rise >= 180 systolic / >= 110 diastolic; missing stays missing."""
    rows = [
        record(patient_ref="quiet", bp_sys_pre=125.0, bp_dia_pre=80.0, sbp_rise_first=39.0, dbp_rise_first=20.0),
        record(patient_ref="rise", bp_sys_pre=110.0, bp_dia_pre=70.0, sbp_rise_first=40.0, dbp_rise_first=10.0),
        record(patient_ref="peak", bp_sys_pre=150.0, bp_dia_pre=80.0, sbp_rise_first=30.0, dbp_rise_first=10.0),
        record(patient_ref="dia", bp_sys_pre=130.0, bp_dia_pre=95.0, sbp_rise_first=20.0, dbp_rise_first=15.0),
        record(patient_ref="unknown", bp_sys_pre=np.nan, bp_dia_pre=80.0, sbp_rise_first=20.0, dbp_rise_first=5.0),
        record(patient_ref="known", bp_sys_pre=np.nan, bp_dia_pre=80.0, sbp_rise_first=45.0, dbp_rise_first=5.0),
    ]
    cohort = run(rows, spec, contract, scales).cohort.set_index("patient_id")
    assert not bool(cohort.loc["quiet", "bp_event_first"])
    assert bool(cohort.loc["rise", "bp_event_first"])
    assert bool(cohort.loc["peak", "bp_event_first"])
    assert bool(cohort.loc["dia", "bp_event_first"])
    assert pd.isna(cohort.loc["unknown", "bp_event_first"])  # the peak criterion cannot be checked
    assert bool(cohort.loc["known", "bp_event_first"])  # one criterion met is enough


def test_anxiety_response_is_a_gad7_drop_of_half(spec, contract, scales) -> None:
    rows = [
        record(patient_ref="resp", gad7_baseline=15.0, gad7_end=7.0),
        record(patient_ref="nonresp", gad7_baseline=15.0, gad7_end=8.0),
        record(patient_ref="lost", gad7_baseline=15.0, gad7_end=np.nan),
    ]
    cohort = run(rows, spec, contract, scales).cohort.set_index("patient_id")
    assert bool(cohort.loc["resp", "anxiety_response_end"])
    assert not bool(cohort.loc["nonresp", "anxiety_response_end"])
    assert pd.isna(cohort.loc["lost", "anxiety_response_end"])


def test_a_gad7_above_its_maximum_is_quarantined(spec, contract, scales) -> None:
    result = run([record(gad7_baseline=22.0)], spec, contract, scales)
    assert result.cohort.empty
    assert result.quarantine.iloc[0]["reason_code"] == "impossible_value"
    assert result.quarantine.iloc[0]["column"] == "gad7_baseline"
