"""The BIDS adapter: a golden run on a hand-made fixture, one negative test per rule, and the real release.

The fixture (tests/data/ds005917_mini/, see its README) uses the committed configs/sources/ds005917.yaml, so
these tests also check that file. Tests on the real release read the shared mirror and skip without it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ConfigError, PipelineError
from pipeline.fetch import fetch_source, load_source_spec
from pipeline.harmonise import harmonise
from pipeline.paths import ProjectPaths
from pipeline.quarantine import QUARANTINE_DTYPES, Reason
from pipeline.scales import ScaleConversions
from pipeline.sources.bids import harmonise_rules, stage_bids, stage_source_folder
from pipeline.sources.bids_phenotype import Disposition
from pipeline.sources.bids_spec import BidsAdapter, load_bids_spec

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "configs" / "sources"
FIXTURE = ROOT / "tests" / "data" / "ds005917_mini"


def _materialise_fixture() -> Path:
    """Lay the fixture out under the real BIDS file names in a temporary folder.

    The committed files carry a ``.fixture.tsv`` suffix so that nothing in the repository is named like the
    public dataset's files (which are fetched, never committed).
    """
    target = Path(tempfile.mkdtemp(prefix="ds005917-mini-")) / "ds005917"
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("README.md"))
    for fixture_file in list(target.rglob("*.fixture.tsv")):
        fixture_file.rename(fixture_file.with_name(fixture_file.name.replace(".fixture.tsv", ".tsv")))
    atexit.register(shutil.rmtree, target.parent, True)
    return target


MINI = _materialise_fixture()
SHARED = Path(os.environ.get("TRD_DATA_MIRROR") or ROOT.parent / "shared" / "datasets")
REAL = SHARED / "ds005917"
needs_real = pytest.mark.skipif(not (REAL / "participants.tsv").is_file(), reason="no ds005917 mirror beside us")

SPEC = load_source_spec("ds005917", SOURCES)
ADAPTER = SPEC.adapter
PHENOTYPE = "phenotype/phenotype.tsv"

STAGED_DTYPES = {
    "patient_id": "string",
    "age": "float64",
    "bmi": "float64",
    "sex": "string",
    "madrs_baseline": "float64",
    "madrs_acute": "float64",
    "madrs_placebo_acute": "float64",
    "cohort": "string",
    "site": "string",
    "route": "string",
    "dose": "float64",
    "n_sessions": "Int64",
    "psychotherapy": "string",
    "madrs_source_scale": "string",
    "source_file": "string",
    "source_row": "Int64",
}


def golden(name: str, dtypes: dict[str, str]) -> pd.DataFrame:
    """A hand-written expected table; an empty cell is missing."""
    return pd.read_csv(
        MINI / "expected" / name, sep="\t", dtype=dtypes, keep_default_na=False, na_values=[""]
    ).reset_index(drop=True)


def stage(folder: Path = MINI, adapter: BidsAdapter = ADAPTER):
    return stage_bids(folder, adapter, "ds005917")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A writable copy of the mini fixture, for one edit per negative test."""
    target = tmp_path / "ds005917"
    shutil.copytree(MINI, target, ignore=shutil.ignore_patterns("expected", "README.md"))
    return target


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"fixture edit did not apply: {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# --- the golden run ----------------------------------------------------------------------------------------


def test_staged_rows_match_the_golden_table() -> None:
    rows = stage().rows
    assert dict(rows.dtypes.astype(str)) == STAGED_DTYPES
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), golden("staged.tsv", STAGED_DTYPES), check_exact=True)


def test_excluded_participants_match_the_golden_table() -> None:
    staged = stage()
    expected = golden("excluded.tsv", QUARANTINE_DTYPES)
    pd.testing.assert_frame_equal(staged.excluded.reset_index(drop=True), expected, check_exact=True)
    assert staged.rows_in == 8 == len(staged.rows) + len(staged.excluded)


def test_phenotype_quarantine_matches_the_golden_table() -> None:
    (account,) = stage().phenotype
    expected = golden("phenotype_quarantine.tsv", QUARANTINE_DTYPES)
    pd.testing.assert_frame_equal(account.quarantine.reset_index(drop=True), expected, check_exact=True)


def test_every_phenotype_row_has_one_disposition() -> None:
    (account,) = stage().phenotype
    assert account.file == PHENOTYPE
    assert account.rows_in == 22
    assert dict(account.dispositions) == {
        "used": 13,
        "duplicate": 1,
        "conflict": 2,
        "orphan": 1,
        "missing_id": 0,
        "ineligible_participant": 2,
        "ignored_session": 2,
        "unknown_session": 1,
    }
    assert sum(account.dispositions.values()) == account.rows_in


def test_the_log_carries_counts_but_no_identifiers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.sources.bids"):
        stage()
    assert "8 participants: 6 staged, 2 excluded" in caplog.text
    assert "ses-x9" in caplog.text  # the unknown session is named, so a new release's sessions are noticed
    assert "sub-" not in caplog.text


def test_byte_order_mark_crlf_and_blank_lines_are_tolerated(copy: Path) -> None:
    text = (copy / "participants.tsv").read_text(encoding="utf-8")
    (copy / "participants.tsv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n\r\n")
    pd.testing.assert_frame_equal(stage(copy).rows, stage().rows)


# --- the participants table --------------------------------------------------------------------------------


def test_a_missing_participant_id_is_excluded_and_its_ratings_become_orphans(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "sub-02\t41", "n/a\t41")
    staged = stage(copy)
    assert staged.rows_in == len(staged.rows) + len(staged.excluded) == 8
    missing = staged.excluded[staged.excluded["reason_code"] == Reason.MISSING_ID]
    assert missing[["source_row", "column"]].values.tolist() == [[2, "participant_id"]]
    assert staged.phenotype[0].dispositions[Disposition.ORPHAN] == 1 + 2  # sub-99 and sub-02's two rows


def test_a_repeated_participant_id_is_an_error(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "sub-08\t33", "sub-01\t33")
    with pytest.raises(PipelineError, match="repeats data row 1") as info:
        stage(copy)
    assert (info.value.row, info.value.column) == (8, "participant_id")


def test_an_undeclared_group_is_an_error_not_an_exclusion(copy: Path) -> None:
    # 'mdd' is a patient: treating it as ineligible would drop them without anyone noticing
    rewrite(copy / "participants.tsv", "MDD\tp\tn/a", "mdd\tp\tn/a")
    with pytest.raises(PipelineError, match=r"'mdd', not one of the declared levels \['MDD', 'BP', 'HC'\]") as info:
        stage(copy)
    assert (info.value.row, info.value.column) == (2, "group")
    assert str(info.value.file).endswith("participants.tsv")
    assert "adapter.eligibility.levels" in info.value.hint


def test_a_missing_group_is_an_error(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "HC\td\tp", "n/a\td\tp")
    with pytest.raises(PipelineError, match="group is missing") as info:
        stage(copy)
    assert info.value.row == 4


def test_a_non_numeric_age_is_an_error_naming_row_and_column(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "sub-05\t52", "sub-05\tfifty-two")
    with pytest.raises(PipelineError, match="'fifty-two' is not a number") as info:
        stage(copy)
    assert (info.value.row, info.value.column) == (5, "age")
    assert "n/a" in info.value.hint


def test_values_of_excluded_participants_are_not_parsed(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "sub-04\t25", "sub-04\tunknown")
    assert len(stage(copy).rows) == 6


# --- the phenotype table -----------------------------------------------------------------------------------


def test_a_non_numeric_score_is_quarantined_and_left_missing(copy: Path) -> None:
    rewrite(copy / PHENOTYPE, "sub-01\tses-d2\t12", "sub-01\tses-d2\ttwelve")
    staged = stage(copy)
    row = staged.rows.set_index("patient_id").loc["sub-01"]
    assert pd.isna(row["madrs_acute"])
    assert row["madrs_baseline"] == 34  # the participant's other sessions stay
    (account,) = staged.phenotype
    wrong = account.quarantine[account.quarantine["reason_code"] == Reason.WRONG_TYPE]
    assert wrong[["source_row", "patient_id", "column", "value"]].values.tolist() == [
        [2, "sub-01", "MADRS_Total", "twelve"]
    ]
    assert account.dispositions[Disposition.USED] == 13  # the row is still used: one value is missing


@pytest.mark.parametrize("text", ["inf", "1e", "12 13", "--4"])
def test_float_spellings_that_are_not_ratings_are_wrong_type(copy: Path, text: str) -> None:
    rewrite(copy / PHENOTYPE, "sub-01\tses-b0\t34", f"sub-01\tses-b0\t{text}")
    (account,) = stage(copy).phenotype
    assert account.quarantine["reason_code"].tolist().count(Reason.WRONG_TYPE) == 1


@pytest.mark.parametrize("text", ["nan", "NA", "N/A", "null", "."])
def test_the_shared_missing_markers_are_missing_in_bids_tables_too(copy: Path, text: str) -> None:
    rewrite(copy / PHENOTYPE, "sub-01\tses-b0\t34", f"sub-01\tses-b0\t{text}")
    staged = stage(copy)
    (account,) = staged.phenotype
    assert Reason.WRONG_TYPE not in account.quarantine["reason_code"].tolist()
    assert pd.isna(staged.rows.set_index("patient_id").loc["sub-01", "madrs_baseline"])


def test_repeats_equal_as_numbers_are_duplicates_not_conflicts(copy: Path) -> None:
    rewrite(
        copy / PHENOTYPE,
        "sub-05\tses-d2\t20\t9\t15\nsub-05\tses-d2\t20",
        "sub-05\tses-d2\t20\t9\t15\nsub-05\tses-d2\t20.0",
    )
    staged = stage(copy)
    assert staged.rows.set_index("patient_id").loc["sub-05", "madrs_acute"] == 20
    assert staged.phenotype[0].dispositions[Disposition.DUPLICATE] == 1


def test_a_repeat_that_adds_a_value_to_na_is_a_conflict(copy: Path) -> None:
    # first row n/a, second 20: taking the value would be a silent guess
    rewrite(copy / PHENOTYPE, "sub-05\tses-d2\t20\t9\t15\nsub-05", "sub-05\tses-d2\tn/a\t9\t15\nsub-05")
    staged = stage(copy)
    assert pd.isna(staged.rows.set_index("patient_id").loc["sub-05", "madrs_acute"])
    (account,) = staged.phenotype
    conflicts = account.quarantine[account.quarantine["reason_code"] == Reason.INCONSISTENT]
    assert conflicts[["source_row", "value"]].values.tolist() == [[13, "n/a"], [14, "20"], [16, "22"], [17, "25"]]


def test_a_phenotype_row_without_participant_id_is_quarantined(copy: Path) -> None:
    rewrite(copy / PHENOTYPE, "sub-99\tses-b0", "n/a\tses-b0")
    (account,) = stage(copy).phenotype
    assert account.dispositions[Disposition.MISSING_ID] == 1
    assert account.dispositions[Disposition.ORPHAN] == 0
    assert Reason.MISSING_ID in account.quarantine["reason_code"].tolist()


def test_a_missing_session_id_counts_as_unknown(copy: Path) -> None:
    rewrite(copy / PHENOTYPE, "sub-08\tses-x9", "sub-08\tn/a")
    assert stage(copy).phenotype[0].dispositions[Disposition.UNKNOWN_SESSION] == 1


# --- unreadable input: one PipelineError naming file, row and column ------------------------------------------


def test_a_missing_column_is_named(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "\tBMI\t", "\tweight\t")
    with pytest.raises(PipelineError, match=r"required column\(s\) \['BMI'\] missing") as info:
        stage(copy)
    assert info.value.column == "BMI"
    assert str(info.value.file).endswith("participants.tsv")
    assert "tab-separated" in info.value.hint


def test_a_missing_phenotype_column_is_named(copy: Path) -> None:
    rewrite(copy / PHENOTYPE, "MADRS_Total", "MADRS")
    with pytest.raises(PipelineError, match="MADRS_Total") as info:
        stage(copy)
    assert str(info.value.file).endswith(PHENOTYPE)


def test_a_comma_separated_file_says_tab_separated_was_expected(copy: Path) -> None:
    path = copy / "participants.tsv"
    path.write_text(path.read_text(encoding="utf-8").replace("\t", ","), encoding="utf-8")
    with pytest.raises(PipelineError, match=r"expected tab-separated values.*comma-separated") as info:
        stage(copy)
    assert str(info.value.file).endswith("participants.tsv")


@pytest.mark.parametrize(("content", "message"), [(b"", "empty"), (b"\n \n", "empty"), (None, "not found")])
def test_an_empty_or_absent_file_says_fetch(copy: Path, content: bytes | None, message: str) -> None:
    path = copy / PHENOTYPE
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(PipelineError, match=message) as info:
        stage(copy)
    assert str(info.value.file).endswith(PHENOTYPE)
    assert "trd fetch" in info.value.hint


def test_a_header_without_rows_is_an_error(copy: Path) -> None:
    path = copy / "participants.tsv"
    path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="no data rows"):
        stage(copy)


def test_a_row_with_a_missing_field_is_named(copy: Path) -> None:
    rewrite(copy / PHENOTYPE, "sub-03\tses-b0\t29\t12\t17", "sub-03\tses-b0\t29\t12")
    with pytest.raises(PipelineError, match="has 4 tab-separated fields on line 10, the header has 5") as info:
        stage(copy)
    assert info.value.row == 9


def test_text_that_is_not_utf8_is_an_error(copy: Path) -> None:
    path = copy / "participants.tsv"
    path.write_bytes(path.read_bytes().replace(b"sub-03", b"sub-\xe903"))
    with pytest.raises(PipelineError, match="not UTF-8"):
        stage(copy)


def test_a_repeated_header_column_is_an_error(copy: Path) -> None:
    rewrite(copy / "participants.tsv", "infusion_2", "age")
    with pytest.raises(PipelineError, match=r"repeats columns \['age'\]"):
        stage(copy)


def test_a_cohort_without_eligible_participants_is_typed_and_empty(copy: Path) -> None:
    path = copy / "participants.tsv"
    path.write_text(path.read_text(encoding="utf-8").replace("\tMDD\t", "\tHC\t"), encoding="utf-8")
    staged = stage(copy)
    assert staged.rows.empty
    assert dict(staged.rows.dtypes.astype(str)) == STAGED_DTYPES
    assert len(staged.excluded) == staged.rows_in == 8


# --- the adapter section of the source file -------------------------------------------------------------------


def adapter_with(**changes: object) -> dict:
    raw = ADAPTER.model_dump(mode="python")
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list | tuple) else node[key]
        node[last] = value
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"eligibility__include": ["SCZ"]}, "not among levels"),
        ({"phenotype__0__ignore_sessions": ["ses-d2"]}, "both mapped"),
        ({"constants__madrs_acute": 3.0}, "more than once"),
        ({"constants__source_row": 1}, "filled by the adapter itself"),
        ({"constants__prior_ect": True}, "constants.prior_ect"),
        ({"participants__path": "../participants.tsv"}, "relative path"),
        ({"participants__numeric": {"age": "Age"}}, "pattern"),
        ({"phenotype__0__path": "participants.tsv"}, "different file"),
        ({"missing_values": [""]}, "at least 1 character"),
        ({"participants__colour": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_an_invalid_adapter_section_is_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BidsAdapter.model_validate(adapter_with(**changes))


def test_every_column_the_source_file_fills_is_canonical() -> None:
    contract = load_contract(ROOT / "configs" / "cohort_schema.yaml")
    filled = {*ADAPTER.targets, *(c.canonical for c in SPEC.categorical.values())}
    assert filled - set(contract.names) == set()
    for entry in SPEC.categorical.values():  # code lists name only levels the contract knows
        levels = contract.column(entry.canonical).levels
        assert entry.passthrough or set(entry.codes) <= set(levels)


# --- the real release ----------------------------------------------------------------------------------------


@needs_real
def test_the_source_file_matches_the_release_data_dictionary() -> None:
    participants = json.loads((REAL / "participants.json").read_text(encoding="utf-8"))
    phenotype = json.loads((REAL / "phenotype" / "phenotype.json").read_text(encoding="utf-8"))
    assert ADAPTER.eligibility.levels == participants["group"]["Levels"]
    sessions = set(phenotype["session_id"]["Levels"])
    (table,) = ADAPTER.phenotype
    assert set(table.sessions) | set(table.ignore_sessions) == sessions
    assert "ketamine" in phenotype["session_id"]["Levels"]["ses-d2"]
    assert "placebo" in phenotype["session_id"]["Levels"]["ses-p2"]
    sex_codes = {code for codes in SPEC.categorical["sex"].codes.values() for code in codes}
    assert sex_codes == set(participants["sex"]["Levels"]) - {"n/a"}


@needs_real
def test_the_real_release_gives_the_documented_counts() -> None:
    staged = stage(REAL)
    rows = staged.rows
    assert staged.rows_in == 58 == len(rows) + len(staged.excluded)
    assert len(rows) == 33
    assert staged.excluded["reason_code"].unique().tolist() == [Reason.INELIGIBLE]
    assert staged.excluded["value"].value_counts().to_dict() == {"HC": 22, "BP": 3}

    assert rows["madrs_baseline"].notna().sum() == 32
    ketamine = rows[rows["madrs_acute"].notna()]
    assert len(ketamine) == 27
    assert (ketamine["madrs_acute"] <= 0.5 * ketamine["madrs_baseline"]).sum() == 6
    placebo = rows[rows["madrs_placebo_acute"].notna()]
    assert len(placebo) == 26
    assert (placebo["madrs_placebo_acute"] <= 0.5 * placebo["madrs_baseline"]).sum() == 1

    demographics = rows[["age", "sex", "bmi"]]
    assert demographics.isna().any(axis=1).sum() == 1
    assert demographics.isna().all(axis=1).sum() == 1
    assert set(rows["sex"].dropna()) == {"F", "M"}

    (account,) = staged.phenotype
    assert account.rows_in == 236
    quarantined = ("orphan", "missing_id", "duplicate", "conflict", "unknown_session")
    assert {k: account.dispositions[k] for k in quarantined} == dict.fromkeys(quarantined, 0)
    assert account.quarantine.empty


# --- hand-over to the shared harmonisation --------------------------------------------------------------------


def test_the_mini_cohort_harmonises_without_quarantine(contract: CohortContract, scales: ScaleConversions) -> None:
    staged = stage()
    result = harmonise(staged.rows, harmonise_rules(SPEC), contract, scales)
    assert result.quarantine.empty
    cohort = result.cohort.set_index("patient_id")
    assert list(cohort.index) == staged.rows["patient_id"].tolist()
    assert cohort.loc["sub-01", ["sex", "route", "psychotherapy", "madrs_source_scale", "cohort", "site"]].tolist() == [
        "F",
        "iv_racemic",
        "none",
        "madrs",
        "ds005917",
        "NIMH",
    ]
    assert cohort["response_acute"].tolist() == [True, pd.NA, False, False, pd.NA, False]


def test_an_unknown_sex_code_is_left_for_harmonisation_to_quarantine(
    copy: Path, contract: CohortContract, scales: ScaleConversions
) -> None:
    rewrite(copy / "participants.tsv", "sub-02\t41\tM", "sub-02\t41\tX")
    staged = stage(copy)
    assert staged.rows.set_index("patient_id").loc["sub-02", "sex"] == "X"  # raw, as written
    result = harmonise(staged.rows, harmonise_rules(SPEC), contract, scales)
    assert result.quarantine[["patient_id", "reason_code"]].values.tolist() == [["sub-02", Reason.UNKNOWN_CODE]]


def test_a_broken_source_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ds005917.yaml"
    path.write_text((SOURCES / "ds005917.yaml").read_text(encoding="utf-8").replace("include: [MDD]", "include: []"))
    with pytest.raises(ConfigError, match=r"ds005917\.adapter\.eligibility\.include") as info:
        load_bids_spec(path)
    assert info.value.file == path


@needs_real
def test_fetch_then_clean_entry_point_on_the_real_release(
    project_root: Path, contract: CohortContract, scales: ScaleConversions
) -> None:
    paths = ProjectPaths(project_root)
    spec_path = paths.sources_dir / "ds005917.yaml"
    fetch_source(load_source_spec("ds005917", paths.sources_dir), paths.external_dir / "ds005917", mirror=SHARED)
    staged, rules, report = stage_source_folder(spec_path, paths)
    assert report["phenotype"][PHENOTYPE]["rows_in"] == 236
    assert report["phenotype"][PHENOTYPE]["values_wrong_type"] == 0
    assert "sub-" not in json.dumps(report)  # it goes to reports/: counts only

    result = harmonise(staged.rows, rules, contract, scales)
    assert result.quarantine.empty
    cohort = result.cohort
    assert len(cohort) == 33
    assert (cohort["response_acute"].notna().sum(), cohort["response_acute"].sum()) == (27, 6)
    assert (cohort["response_placebo_acute"].notna().sum(), cohort["response_placebo_acute"].sum()) == (26, 1)
