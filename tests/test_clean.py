"""The clean stage: the round trip from the corrupted synthetic export back to the generator's truth, the
stage shell (both sources, conservation, the report), and its bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.clean import clean_source, main
from pipeline.contract import CohortContract
from pipeline.errors import ConfigError, PipelineError
from pipeline.harmonise import rules_from_tabular_spec
from pipeline.params import parse_section, read_params_file
from pipeline.scales import ScaleConversions
from pipeline.sources.check import load_tabular_spec
from pipeline.sources.spec import TabularSourceSpec
from pipeline.sources.tabular import stage_tabular
from pipeline.synthesize import SynthesizeParams, synthesize
from tests.conftest import REPO_ROOT

MIRROR = REPO_ROOT.parent / "shared" / "datasets" / "ds005917"
SPEC_PATH = REPO_ROOT / "configs" / "sources" / "synthetic.yaml"
HAMD_NOISE_SD = 2.0  # synthesize.export: the generator records other scales with this noise (HAM-D points)


@pytest.fixture(scope="module")
def spec() -> TabularSourceSpec:
    return load_tabular_spec(SPEC_PATH)


@pytest.fixture(scope="module")
def round_trip(contract: CohortContract, spec: TabularSourceSpec, scales: ScaleConversions):
    raw = read_params_file(REPO_ROOT / "params.yaml")
    params = parse_section(SynthesizeParams, raw, "synthesize", "params.yaml").model_copy(update={"n_patients": 3000})
    cohort = synthesize(params, 7, contract=contract, spec=spec, scales=scales)
    staged = stage_tabular(cohort.export, spec, source_file="export.parquet")
    cleaned = clean_source("synthetic", staged, rules_from_tabular_spec(spec), contract, scales)
    merged = cleaned.cohort.merge(cohort.truth, on="patient_id", suffixes=("", "_truth"))
    return cohort, cleaned, merged


def test_every_export_row_is_kept_or_quarantined(round_trip) -> None:
    cohort, cleaned, _ = round_trip
    cleaned.check_conservation()
    assert cleaned.rows_in == len(cohort.export)
    assert cleaned.cohort["patient_id"].is_unique


def test_duplicates_are_resolved_to_one_row_per_patient(round_trip) -> None:
    cohort, cleaned, _ = round_trip
    logged = cohort.corruptions.loc[cohort.corruptions["kind"] == "duplicate_record", "export_row"].nunique()
    duplicates = (cleaned.quarantine["reason_code"] == "duplicate_record").sum()
    # a copy whose original was quarantined for another defect survives in its place: at most a handful
    assert 0 <= logged - duplicates <= (cleaned.quarantine["reason_code"] != "duplicate_record").sum()
    assert duplicates > 0


def test_impossible_values_and_typos_are_quarantined_as_logged(round_trip) -> None:
    cohort, cleaned, _ = round_trip
    reasons = cleaned.quarantine["reason_code"].value_counts()
    for kind in ("impossible_value", "unknown_code"):
        logged_rows = cohort.corruptions.loc[cohort.corruptions["kind"] == kind, "export_row"].nunique()
        assert reasons.get(kind, 0) <= logged_rows
        assert reasons.get(kind, 0) >= 0.8 * logged_rows  # the rest share their row with an earlier-found defect


def test_units_and_codes_are_recovered_exactly(round_trip) -> None:
    _, _, merged = round_trip
    for column in ("sex", "route", "psychotherapy", "anxious_depression", "age", "n_sessions"):
        known = merged[column].notna()
        assert (merged.loc[known, column].astype(str) == merged.loc[known, f"{column}_truth"].astype(str)).all()
    # BMI from pounds and inches (or kg and cm) recovers the truth up to the export's rounding of weight/height
    bmi = merged["bmi"].notna()
    assert np.abs(merged.loc[bmi, "bmi"] - merged.loc[bmi, "bmi_truth"]).max() < 0.1


def test_converted_scales_are_within_the_conversions_known_error(round_trip) -> None:
    _, _, merged = round_trip
    for scale in ("hamd17", "qids_sr16"):
        rows = (merged["madrs_source_scale"] == scale) & merged["madrs_baseline"].notna()
        error = merged.loc[rows, "madrs_baseline"] - merged.loc[rows, "madrs_baseline_truth"]
        assert rows.sum() > 100
        # recording noise of 2 HAM-D points is ~2.6 MADRS points after the 1.315 slope (plus rounding)
        assert abs(error.mean()) < 1.0, scale
        assert error.std() < 2.5 * HAMD_NOISE_SD * 1.315, scale
    on_madrs = (merged["madrs_source_scale"] == "madrs") & merged["madrs_baseline"].notna()
    assert (merged.loc[on_madrs, "madrs_baseline"] == merged.loc[on_madrs, "madrs_baseline_truth"]).all()


def test_outcomes_follow_the_scores_on_madrs_sites(round_trip) -> None:
    _, _, merged = round_trip
    rows = (merged["madrs_source_scale"] == "madrs") & merged["response_end"].notna()
    assert (merged.loc[rows, "response_end"] == merged.loc[rows, "response_end_truth"]).all()


# --- the stage shell ------------------------------------------------------------------------------------------


def _synthesize_into(project_root: Path) -> None:
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["synthesize"]["n_patients"] = 800
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    from pipeline.synthesize import main as synthesize_main

    synthesize_main()


@pytest.mark.skipif(not (MIRROR / "participants.tsv").is_file(), reason="no ds005917 mirror beside the project")
def test_stage_cleans_both_sources_and_reports_counts(project_root: Path) -> None:
    _synthesize_into(project_root)
    shutil.copytree(MIRROR, project_root / "data" / "external" / "ds005917")
    main()
    report = json.loads((project_root / "reports" / "cleaning.json").read_text())
    for name, source in report["sources"].items():
        assert source["rows_in"] == source["rows_kept"] + source["rows_quarantined"], name
    real = report["sources"]["ds005917"]
    assert (real["rows_in"], real["rows_kept"], real["quarantined_by_reason"]) == (58, 33, {"ineligible": 25})
    assert real["outcomes"]["response_acute"] == {"known": 27, "positive": 6}
    assert real["outcomes"]["response_placebo_acute"] == {"known": 26, "positive": 1}
    cohort = pd.read_parquet(project_root / "data" / "interim" / "cohort.parquet")
    quarantine = pd.read_parquet(project_root / "data" / "interim" / "quarantine.parquet")
    assert len(cohort) + len(quarantine) == report["total"]["rows_in"]
    assert set(quarantine["reason_code"]) <= {
        "ineligible", "missing_id", "duplicate_record", "unknown_code", "wrong_type", "impossible_value",
        "orphan_record", "inconsistent",
    }  # fmt: skip
    assert quarantine["message"].notna().all()


def test_unknown_source_in_params_fails_before_writing(project_root: Path) -> None:
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["clean"]["sources"] = ["synthetic", "nimh_2030"]
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    _synthesize_into(project_root)
    with pytest.raises(ConfigError, match="unknown source 'nimh_2030'") as info:
        main()
    assert "synthetic" in str(info.value)  # lists the known sources
    assert not (project_root / "data" / "interim").exists()


def test_missing_export_is_a_clear_error(project_root: Path) -> None:
    with pytest.raises(PipelineError, match="not found") as info:
        main()
    assert "export.parquet" in str(info.value)
    assert not (project_root / "data" / "interim").exists()


def test_export_missing_a_column_names_it(project_root: Path) -> None:
    _synthesize_into(project_root)
    export = project_root / "data" / "raw" / "synthetic" / "export.parquet"
    pd.read_parquet(export).drop(columns=["route"]).to_parquet(export)
    with pytest.raises(PipelineError, match="route"):
        main()
    assert not (project_root / "data" / "interim").exists()


# --- loud losses: a source that keeps nothing, a mapped column that is empty -----------------------------------

COHORTS = REPO_ROOT / "tests" / "data" / "cohorts"
HEADER = "id,age,gender,arm,phq9_base,phq9_wk4,phq9_wk8,comments\n"


def _only_the_trial(project_root: Path, export: str, on_loss: str = "fail") -> None:
    """The kap_trial fixture as the project's only source, with ``export`` as its file."""
    shutil.copy(COHORTS / "kap_trial" / "kap_trial.yaml", project_root / "configs" / "sources" / "kap_trial.yaml")
    (project_root / "exports" / "kap_trial").mkdir(parents=True)
    (project_root / "exports" / "kap_trial" / "export.csv").write_text(HEADER + export, encoding="utf-8")
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["clean"] = {"sources": ["kap_trial"], "on_loss": on_loss}
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))


def test_a_source_that_keeps_no_row_stops_the_stage(project_root: Path) -> None:
    _only_the_trial(project_root, "1,40,f,KAP,30,10,9,\n2,41,f,waitlist,20,10,9,\n")
    with pytest.raises(PipelineError) as info:
        main()
    assert info.value.message == (
        "source 'kap_trial' keeps no rows: 2 in, all quarantined (impossible_value 1, unknown_code 1)"
    )
    assert "clean.on_loss: warn" in info.value.hint
    assert not (project_root / "data" / "interim").exists()


def test_a_mapped_column_missing_in_every_kept_row_stops_the_stage(project_root: Path) -> None:
    _only_the_trial(project_root, "1,,f,KAP,20,10,9,\n2,,m,standard,20,10,9,\n")
    with pytest.raises(PipelineError) as info:
        main()
    assert info.value.message == "source 'kap_trial': column 'age' (filled by numeric.age) is missing in every kept row"


def test_scores_without_a_madrs_conversion_are_not_a_loss(project_root: Path) -> None:
    _only_the_trial(project_root, "1,40,f,KAP,20,10,9,\n")
    main()  # madrs_baseline, madrs_end, madrs_week8 are all missing, but counted under not_on_madrs
    report = json.loads((project_root / "reports" / "cleaning.json").read_text())["sources"]["kap_trial"]
    assert report["not_on_madrs"] == {"phq9": {"madrs_baseline": 1, "madrs_end": 1, "madrs_week8": 1}}
    assert "losses" not in report


def test_on_loss_warn_writes_the_outputs_and_lists_the_losses(project_root: Path, caplog) -> None:
    _only_the_trial(project_root, "1,,f,KAP,20,10,9,\n", on_loss="warn")
    main()
    report = json.loads((project_root / "reports" / "cleaning.json").read_text())["sources"]["kap_trial"]
    loss = "source 'kap_trial': column 'age' (filled by numeric.age) is missing in every kept row"
    assert report["losses"] == [loss]
    assert loss in caplog.text
    assert (project_root / "data" / "interim" / "cohort.parquet").is_file()


def test_an_invalid_on_loss_is_a_config_error(project_root: Path) -> None:
    _only_the_trial(project_root, "1,40,f,KAP,20,10,9,\n", on_loss="ignore")
    with pytest.raises(ConfigError, match=r"clean\.on_loss"):
        main()
