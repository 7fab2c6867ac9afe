"""Tabular source configs: checked completely before any data is read (one negative test per rule, with its
exact message), whole-source constants, scales without a MADRS conversion, and long (visit) exports.

The two fixtures in tests/data/cohorts/ (see its README) are used as they are; variants are written into a copy of
the project's configs so that the contract's cohort levels (one per configs/sources file) include them.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.clean import clean_source, load_source_config
from pipeline.cli import app
from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.harmonise import harmonise, rules_from_tabular_spec
from pipeline.paths import ProjectPaths
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.check import load_tabular_spec
from pipeline.sources.spec import TabularSourceSpec
from pipeline.sources.tabular import read_table, stage_long, stage_tabular
from tests.conftest import REPO_ROOT

COHORTS = REPO_ROOT / "tests" / "data" / "cohorts"
WIDE = yaml.safe_load((COHORTS / "kap_trial" / "kap_trial.yaml").read_text(encoding="utf-8"))
LONG = yaml.safe_load((COHORTS / "esk_clinic" / "esk_clinic.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's configs plus the two fixture sources."""
    folder = tmp_path_factory.mktemp("configs") / "configs"
    shutil.copytree(REPO_ROOT / "configs", folder)
    for name in ("kap_trial", "esk_clinic"):
        shutil.copy(COHORTS / name / f"{name}.yaml", folder / "sources" / f"{name}.yaml")
    return folder


@pytest.fixture(scope="module")
def fixture_contract(configs: Path) -> CohortContract:
    return load_contract(configs / "cohort_schema.yaml")


@pytest.fixture(scope="module")
def registry(configs: Path) -> ScaleConversions:
    return load_scale_conversions(configs / "scale_conversions.yaml")


def write(configs: Path, config: dict, name: str) -> Path:
    path = configs / "sources" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def refused(tmp_path: Path, config: dict, name: str) -> ConfigError:
    """Load ``config`` as configs/sources/<name>.yaml of a project copy; return the ConfigError it must raise."""
    folder = tmp_path / "configs"
    if not folder.exists():
        shutil.copytree(REPO_ROOT / "configs", folder)
    path = write(folder, config, name)
    with pytest.raises(ConfigError) as info:
        load_tabular_spec(path)
    assert info.value.exit_code == ExitCode.CONFIG
    assert str(path) in str(info.value)
    return info.value


def changed(base: dict, change) -> dict:
    config = copy.deepcopy(base)
    change(config)
    return config


# --- the fixtures load, and each mistake is refused by key, with its exact message ------------------------------


def test_both_fixture_configs_are_valid(configs: Path) -> None:
    wide = load_tabular_spec(configs / "sources" / "kap_trial.yaml")
    long = load_tabular_spec(configs / "sources" / "esk_clinic.yaml")
    assert (wide.is_long, long.is_long) == (False, True)
    assert wide.constants == {"route": "iv_racemic", "dose": 0.5, "n_sessions": 6}


def test_a_new_source_is_a_cohort_level_without_editing_the_contract(fixture_contract: CohortContract) -> None:
    assert fixture_contract.column("cohort").levels == (
        "ds005917",
        "esk_clinic",
        "kap_trial",
        "synthetic",
        "scoring_input",
    )


WIDE_MISTAKES = {
    "typo_in_a_target": (
        lambda c: c["depression_scores"]["columns"].update(phq9_base="madrs_basline"),
        "depression_scores.columns.phq9_base: 'madrs_basline' is not a column of the cohort contract "
        "(configs/cohort_schema.yaml) (did you mean 'madrs_baseline'?)",
    ),
    "typo_in_a_categorical_target": (
        lambda c: c["categorical"]["arm"].update(canonical="psychotherapie"),
        "categorical.arm.canonical: 'psychotherapie' is not a column of the cohort contract "
        "(configs/cohort_schema.yaml) (did you mean 'psychotherapy'?)",
    ),
    "unknown_file_key": (
        lambda c: c.update(files={"csv": "exports/kap_trial/export.csv"}),
        "files.csv: unknown file key (did you mean 'export'?); a tabular_export reads one file: "
        "files: {export: <path of the CSV or Parquet file>}",
    ),
    "name_differs_from_the_file_name": (
        lambda c: c.update(name="kap"),
        "name: 'kap' differs from the file name 'kap_trial' (the name is the cohort level and what clean.sources "
        "lists): rename one so they match",
    ),
    "unknown_key": (
        lambda c: c.update(depression_score=c.pop("depression_scores")),
        "depression_score: unknown key (did you mean 'depression_scores'?); allowed here: name, kind, description, "
        "files, id_column, duplicate_order, updated_at_column, numeric, categorical, boolean_codes, boolean, "
        "body_size, depression_scores, constants, visits, missing_values",
    ),
    "unknown_nested_key": (
        lambda c: c["depression_scores"].update(scales="phq9"),
        "depression_scores.scales: unknown key (did you mean 'scale'?); allowed here: scale, scale_column, "
        "scale_codes, columns",
    ),
    "unknown_scale": (
        lambda c: c["depression_scores"].update(scale="phq-9"),
        "depression_scores.scale: 'phq-9' is not a scale of configs/scale_conversions.yaml (madrs, hamd17, "
        "qids_sr16, phq9) (did you mean 'phq9'?); a new scale is added there, with its range, response and "
        "remission rules and their sources",
    ),
    "scale_both_ways": (
        lambda c: c["depression_scores"].update(scale_column="scale", scale_codes={"phq9": ["PHQ9"]}),
        "depression_scores: give either 'scale' (the whole source is on one scale) or 'scale_column' with "
        "'scale_codes' (the scale is named on each row)",
    ),
    "a_score_mapped_as_a_plain_number": (
        lambda c: (c.pop("depression_scores"), c["numeric"].update(phq9_base="madrs_baseline")),
        "numeric.phq9_base: madrs_baseline is a depression score (MADRS points): map it under "
        "depression_scores.columns (with the scale it is recorded on: scale or scale_column)",
    ),
    "unknown_level": (
        lambda c: c["categorical"]["arm"]["codes"].update(structured_cap=["KAPP"]),
        "categorical.arm.codes.structured_cap: 'structured_cap' is not a level of psychotherapy (none, supportive, "
        "structured_kap) (did you mean 'structured_kap'?)",
    ),
    "derived_column": (
        lambda c: c["numeric"].update(responded="response_end"),
        "numeric.responded: response_end is derived from the baseline and end-of-induction scores, never read "
        "from a source",
    ),
    "column_filled_twice": (
        lambda c: c["numeric"].update(years="age"),
        "numeric.years: age is also filled by numeric.age",
    ),
    "wrong_section": (
        lambda c: c["numeric"].update(ect="prior_ect"),
        "numeric.ect: prior_ect is a bool column: map it under boolean",
    ),
    "constant_out_of_range": (
        lambda c: c["constants"].update(dose=900),
        "constants.dose: dose 900.0 is outside the possible range 0–300 mg/kg (racemic) or mg (esketamine)",
    ),
    "constant_not_a_level": (
        lambda c: c["constants"].update(route="IV"),
        "constants.route: 'IV' is not a known route (levels: iv_racemic, intranasal_esketamine, oral, im_sc; a "
        "constant is written as a canonical level)",
    ),
    "constant_not_whole": (
        lambda c: c["constants"].update(n_sessions=1.5),
        "constants.n_sessions: '1.5' is not a whole number (n_sessions)",
    ),
    "constant_not_a_number": (
        lambda c: c["constants"].update(dose="half"),
        "constants.dose: 'half' is not a number (dose)",
    ),
    "constant_flag_not_true_or_false": (
        lambda c: c["constants"].update(prior_ect="yes"),
        "constants.prior_ect: 'yes' is not a yes/no code for prior_ect (false, true)",
    ),
    "constant_without_a_value": (
        lambda c: c["constants"].update(route=None),
        "constants.route: needs a level, a number, true/false or text (got None)",
    ),
    "constant_cohort": (
        lambda c: c["constants"].update(cohort="kap_trial"),
        "constants.cohort: cohort is the source's name ('kap_trial'), set by the clean stage",
    ),
    "constant_scale": (
        lambda c: c["constants"].update(madrs_source_scale="phq9"),
        "constants.madrs_source_scale: madrs_source_scale is derived from the source's depression_scores (scale or "
        "scale_column), never read from a source",
    ),
    "duplicate_order_needs_updated_at": (
        lambda c: c.update(duplicate_order=["updated_at", "file_order"]),
        "duplicate_order: 'updated_at' needs updated_at_column (the raw column with the update time)",
    ),
    "duplicate_order_file_order_last": (
        lambda c: c.update(duplicate_order=["file_order", "completeness"]),
        "duplicate_order: 'file_order' must come last (it leaves no tie for a later key)",
    ),
    "per_timing_scores_in_a_wide_export": (
        lambda c: c["depression_scores"]["columns"].update(phq9_base={"baseline": "madrs_baseline"}),
        "depression_scores.columns.phq9_base: a per-timing mapping needs a long export (visits:); map the raw "
        "column to one canonical column",
    ),
}


@pytest.mark.parametrize("case", sorted(WIDE_MISTAKES))
def test_a_mistake_in_a_wide_config_is_refused_naming_its_key(tmp_path: Path, case: str) -> None:
    change, message = WIDE_MISTAKES[case]
    assert refused(tmp_path, changed(WIDE, change), "kap_trial").message == message


LONG_MISTAKES = {
    "no_baseline_visit": (
        lambda c: c["visits"]["timings"].pop("D0"),
        "visits.timings: no visit value is mapped to 'baseline'; every patient's baseline row is needed (e.g. '0': "
        "baseline); mapped: {'D1': 'first_dose', 'W4': 'end_of_induction', 'W8': 'week8'}; "
        "depression_scores.columns.madrs.baseline: no visit value is mapped to 'baseline' in visits.timings",
    ),
    "unknown_timing": (
        lambda c: c["visits"]["timings"].update(W12="week12"),
        "visits.timings.W12: 'week12' is not a timing of the contract (baseline, first_dose, acute, "
        "end_of_induction, week8) (did you mean 'week8'?)",
    ),
    "column_of_another_timing": (
        lambda c: c["visits"]["measures"]["cadss"].update(first_dose="sbp_rise_first_mmhg", week8="cadss_peak_first"),
        "visits.measures.cadss.week8: cadss_peak_first is measured at 'first_dose', not at 'week8'",
    ),
    "later_column_read_from_the_baseline_row": (
        lambda c: (c["visits"].pop("measures"), c["numeric"].update(cadss="cadss_peak_first")),
        "numeric.cadss: cadss_peak_first is measured at 'first_dose'; in a long export it is read from the row of "
        "that visit: map it per timing under visits.measures (scores under depression_scores.columns)",
    ),
    "scale_column": (
        lambda c: c["depression_scores"].update(scale=None, scale_column="scale", scale_codes={"madrs": ["M"]}),
        "depression_scores.scale_column: a long export needs one scale for the whole source: depression_scores.scale",
    ),
    "duplicate_order": (
        lambda c: c.update(duplicate_order=["completeness"]),
        "duplicate_order: not used in a long export: repeated rows of one patient and visit are compared (identical "
        "copies are duplicates, differing ones conflict); remove it",
    ),
    "score_not_per_timing": (
        lambda c: c["depression_scores"]["columns"].update(madrs="madrs_baseline"),
        "depression_scores.columns.madrs: in a long export map the score per timing, e.g. madrs: {baseline: "
        "madrs_baseline, end_of_induction: madrs_end}",
    ),
    "measure_at_an_unmapped_timing": (
        lambda c: c["visits"]["measures"]["cadss"].update(acute="cadss_peak_first", first_dose="sbp_rise_first_mmhg"),
        "visits.measures.cadss.acute: no visit value is mapped to 'acute' in visits.timings; "
        "visits.measures.cadss.acute: cadss_peak_first is measured at 'first_dose', not at 'acute'",
    ),
    "visit_column_mapped_as_data": (
        lambda c: c["visits"].update(column="age"),
        "visits.column: raw column 'age' is also mapped under numeric",
    ),
}


@pytest.mark.parametrize("case", sorted(LONG_MISTAKES))
def test_a_mistake_in_a_long_config_is_refused_naming_its_key(tmp_path: Path, case: str) -> None:
    change, message = LONG_MISTAKES[case]
    assert refused(tmp_path, changed(LONG, change), "esk_clinic").message == message


def test_the_clean_stage_refuses_a_config_mistake_with_exit_code_6_and_no_traceback(project_root: Path) -> None:
    write(project_root / "configs", changed(WIDE, lambda c: c["numeric"].update(age="agee")), "kap_trial")
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["clean"]["sources"] = ["kap_trial"]
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["clean"])
    assert result.exit_code == ExitCode.CONFIG
    assert "numeric.age: 'agee' is not a column of the cohort contract" in result.output
    assert "Traceback" not in result.output
    assert not (project_root / "data").exists()  # refused before any data is read


def test_a_config_without_an_export_file_is_refused_by_the_clean_stage(project_root: Path) -> None:
    write(project_root / "configs", changed(WIDE, lambda c: c.update(files={})), "kap_trial")
    configs = project_root / "configs"
    contract, scales = (
        load_contract(configs / "cohort_schema.yaml"),
        load_scale_conversions(configs / "scale_conversions.yaml"),
    )
    with pytest.raises(ConfigError) as info:
        load_source_config("kap_trial", ProjectPaths(project_root), contract, scales)
    assert info.value.message == "files.export: missing: the path of the export (CSV or Parquet) the clean stage reads"


def test_a_bids_constant_naming_another_cohort_is_refused(project_root: Path) -> None:
    path = project_root / "configs" / "sources" / "ds005917.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("cohort: ds005917", "cohort: nimh"), encoding="utf-8")
    contract = load_contract(project_root / "configs" / "cohort_schema.yaml")
    with pytest.raises(ConfigError) as info:
        load_source_config("ds005917", ProjectPaths(project_root), contract, None)  # type: ignore[arg-type]
    assert info.value.message.startswith("adapter.constants.cohort: 'nimh' must be the source's name 'ds005917'")


# --- one row per patient: constants, a scale without a MADRS conversion ------------------------------------------


@pytest.fixture(scope="module")
def wide_spec(configs: Path) -> TabularSourceSpec:
    return load_tabular_spec(configs / "sources" / "kap_trial.yaml")


def harmonised(rows: list[dict], spec: TabularSourceSpec, contract: CohortContract, scales: ScaleConversions):
    staged = stage_tabular(pd.DataFrame(rows, dtype="string"), spec, source_file="export.csv")
    result = harmonise(staged.rows, rules_from_tabular_spec(spec), contract, scales)
    assert len(result.cohort) + len(result.quarantine) == len(rows)
    return result


def patient(**values: object) -> dict[str, object]:
    row = {"id": "1", "age": "40", "gender": "f", "arm": "KAP", "phq9_base": "20", "phq9_wk4": "10", "phq9_wk8": "8"}
    return row | {key: None if value is None else str(value) for key, value in values.items()}


def test_outcomes_follow_the_recorded_scale_s_own_rules(wide_spec, fixture_contract, registry) -> None:
    rows = [
        patient(id="half", phq9_base=20, phq9_wk4=10, phq9_wk8=11),  # 10 <= 20 / 2: response; 11 > 10: not held
        patient(id="short", phq9_base=20, phq9_wk4=11),  # a 45 % drop: no response
        patient(id="five", phq9_base=20, phq9_wk4=5),  # remission is PHQ-9 < 5: 5 is not
        patient(id="four", phq9_base=20, phq9_wk4=4),
    ]
    cohort = harmonised(rows, wide_spec, fixture_contract, registry).cohort.set_index("patient_id")
    assert cohort["response_end"].tolist() == [True, False, True, True]
    assert cohort["remission_end"].tolist() == [False, False, False, True]
    assert cohort["sustained_week8"].tolist() == [False, False, True, True]
    # PHQ-9 points never become MADRS points: the predictor and the MADRS-only outcome stay missing
    assert cohort[["madrs_baseline", "madrs_end", "madrs_pct_change_acute"]].isna().all().all()
    assert set(cohort["madrs_source_scale"]) == {"phq9"}


def test_missing_madrs_points_are_counted_by_scale_and_column(wide_spec, fixture_contract, registry) -> None:
    result = harmonised([patient(id="a"), patient(id="b", phq9_wk8=None)], wide_spec, fixture_contract, registry)
    assert result.not_on_madrs == {"phq9": {"madrs_baseline": 2, "madrs_end": 2, "madrs_week8": 1}}


def test_a_score_is_range_checked_on_its_own_scale(wide_spec, fixture_contract, registry) -> None:
    result = harmonised([patient(phq9_base=28)], wide_spec, fixture_contract, registry)
    assert result.quarantine["message"].tolist() == ["madrs_baseline 28.0 is outside the PHQ-9 range 0–27"]


def test_constants_fill_every_row(wide_spec, fixture_contract, registry) -> None:
    cohort = harmonised([patient(id="a"), patient(id="b")], wide_spec, fixture_contract, registry).cohort
    assert cohort[["route", "dose", "n_sessions", "cohort"]].drop_duplicates().values.tolist() == [
        ["iv_racemic", 0.5, 6, "kap_trial"]
    ]


def test_a_flag_constant_is_written_canonically_whatever_the_source_s_codes(
    wide_spec, fixture_contract, registry
) -> None:
    spec = wide_spec.model_copy(
        update={"boolean_codes": {"true": ["ja"], "false": ["nein"]}, "constants": {"prior_ect": False}}
    )
    cohort = harmonised([patient()], spec, fixture_contract, registry).cohort
    assert cohort["prior_ect"].tolist() == [False]


def test_a_psychotherapy_constant_none_is_a_level_not_a_missing_marker(wide_spec, fixture_contract, registry) -> None:
    spec = wide_spec.model_copy(
        update={"categorical": {"gender": wide_spec.categorical["gender"]}, "constants": {"psychotherapy": "none"}}
    )
    cohort = harmonised([patient()], spec, fixture_contract, registry).cohort
    assert cohort["psychotherapy"].tolist() == ["none"]


def test_raw_columns_mapped_to_nothing_are_listed(wide_spec) -> None:
    frame = pd.DataFrame([patient() | {"comments": "x", "rater": "y"}])
    assert stage_tabular(frame, wide_spec, "export.csv").unused_columns == {"export.csv": ("comments", "rater")}


def test_the_scorer_s_chunked_staging_refuses_a_long_export(configs: Path) -> None:
    spec = load_tabular_spec(configs / "sources" / "esk_clinic.yaml")
    with pytest.raises(PipelineError, match="describes a long export"):
        stage_tabular(read_table(COHORTS / "esk_clinic" / "visits.csv"), spec, "visits.csv")


# --- long exports -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_spec(configs: Path) -> TabularSourceSpec:
    return load_tabular_spec(configs / "sources" / "esk_clinic.yaml")


VISITS = read_table(COHORTS / "esk_clinic" / "visits.csv")


def test_the_fixture_visit_table_is_accounted_for_row_by_row(long_spec, fixture_contract, registry) -> None:
    staged = stage_long(VISITS, long_spec, "visits.csv")
    assert (staged.rows_in, len(staged.rows), len(staged.excluded)) == (7, 5, 2)  # patients
    assert staged.visits.rows_in == len(VISITS) == sum(staged.visits.dispositions.values()) == 24
    assert staged.visits.dispositions == {
        "used": 13, "unmapped_visit": 2, "duplicate": 1, "conflict": 4, "missing_id": 1, "no_baseline": 3,
    }  # fmt: skip
    assert staged.visits.unmapped_visits == {"SCR": 1, "W2": 1}
    cleaned = clean_source("esk_clinic", staged, rules_from_tabular_spec(long_spec), fixture_contract, registry)
    cleaned.check_conservation()
    assert sorted(cleaned.cohort["patient_id"]) == ["E01", "E04", "E05", "E06"]
    assert staged.unused_columns == {"visits.csv": ("notes",)}


def visit_rows(*rows: tuple) -> pd.DataFrame:
    columns = ["subject", "visit", "age", "sex", "dose_mg", "madrs", "cadss"]
    return pd.DataFrame([dict(zip(columns, map(str, row), strict=True)) for row in rows], dtype="string")


def test_an_invalid_baseline_quarantines_the_patient_and_is_never_completed_from_a_later_visit(
    long_spec, fixture_contract, registry
) -> None:
    frame = visit_rows(("P1", "D0", 250, "F", 56, 30, ""), ("P1", "W4", 45, "F", 56, 12, ""))
    staged = stage_long(frame, long_spec, "visits.csv")
    assert staged.rows["age"].tolist() == ["250"]  # the baseline row's value, not W4's 45
    result = harmonise(staged.rows, rules_from_tabular_spec(long_spec), fixture_contract, registry)
    assert result.cohort.empty
    assert result.quarantine[["reason_code", "column", "source_row"]].values.tolist() == [
        ["impossible_value", "age", 1]
    ]


def test_a_patient_without_a_baseline_row_is_quarantined(long_spec) -> None:
    staged = stage_long(
        visit_rows(("P1", "W4", 45, "F", 56, 12, ""), ("P1", "W8", 45, "F", 56, 10, "")), long_spec, "v"
    )
    assert staged.rows.empty
    assert staged.excluded.iloc[0][["reason_code", "source_row", "value"]].tolist() == ["missing_baseline", 1, "W4, W8"]
    assert staged.excluded.iloc[0]["message"] == (
        "no row at a baseline visit (visit 'D0'); a later visit is never used as the baseline: its 2 row(s) "
        "(visits W4, W8) are not used"
    )
    assert staged.visits.dispositions["no_baseline"] == 2


def test_rows_at_unmapped_visits_are_counted_not_used(long_spec) -> None:
    frame = visit_rows(("P1", "D0", 45, "F", 56, 30, ""), ("P1", "W12", 45, "F", 56, 9, ""), ("P1", "", 1, 1, 1, 1, ""))
    staged = stage_long(frame, long_spec, "visits.csv")
    assert staged.visits.unmapped_visits == {"(missing)": 1, "W12": 1}
    assert staged.visits.dispositions["unmapped_visit"] == 2
    assert staged.rows["madrs_baseline"].tolist() == ["30"]


def test_identical_repeats_are_duplicates_and_differing_ones_conflict(long_spec) -> None:
    frame = visit_rows(
        ("P1", "D0", 45, "F", 56, 30, ""),
        ("P1", "W4", "", "", "", "12", ""),
        ("P1", "W4", "", "", "", "12.0", ""),  # the same rating, written differently
        ("P1", "W8", "", "", "", "10", ""),
        ("P1", "W8", "", "", "", "11", ""),
    )
    staged = stage_long(frame, long_spec, "visits.csv")
    assert staged.rows[["madrs_end", "madrs_week8"]].values.tolist() == [["12", None]]
    quarantine = staged.visits.quarantine
    assert quarantine[["source_row", "reason_code"]].values.tolist() == [
        [3, "duplicate_record"], [4, "inconsistent"], [5, "inconsistent"],
    ]  # fmt: skip
    assert (
        quarantine.iloc[0]["message"]
        == "visit 'W4' (end_of_induction) repeats data row 2 with the same values; that row is used"
    )


def test_visit_values_match_whatever_their_spelling(long_spec) -> None:
    visits = long_spec.visits.model_copy(update={"timings": {"0": "baseline", "4": "end_of_induction"}, "measures": {}})
    scores = long_spec.depression_scores.model_copy(
        update={"columns": {"madrs": {"baseline": "madrs_baseline", "end_of_induction": "madrs_end"}}}
    )
    spec = long_spec.model_copy(update={"visits": visits, "depression_scores": scores})
    frame = pd.DataFrame({"subject": ["P1", "P1", "P2", "P2"], "visit": [0.0, 4.0, 0.0, 4.0], "age": [40] * 4,
                          "sex": ["F"] * 4, "dose_mg": [56] * 4, "madrs": [30, 12, 31, 20]})  # fmt: skip
    assert stage_long(frame, spec, "visits.parquet").rows["madrs_end"].tolist() == [12, 20]
    written = frame.assign(visit=[" 0", "4.0", "0.00", "4"])
    assert stage_long(written, spec, "visits.csv").rows["madrs_end"].tolist() == [12, 20]


def test_a_long_export_missing_a_column_names_it(long_spec) -> None:
    with pytest.raises(PipelineError, match="missing required column\\(s\\): visit") as info:
        stage_long(VISITS.drop(columns=["visit"]), long_spec, "visits.csv")
    assert info.value.file == "visits.csv"


def test_a_bids_target_typo_is_refused_with_the_closest_name(project_root: Path) -> None:
    path = project_root / "configs" / "sources" / "ds005917.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("BMI: bmi", "BMI: bmii"), encoding="utf-8")
    contract = load_contract(project_root / "configs" / "cohort_schema.yaml")
    with pytest.raises(ConfigError) as info:
        load_source_config("ds005917", ProjectPaths(project_root), contract, None)  # type: ignore[arg-type]
    assert info.value.message == (
        "adapter.participants.numeric.BMI: 'bmii' is not a column of the cohort contract "
        "(configs/cohort_schema.yaml) (did you mean 'bmi'?)"
    )
