"""No confident score without data: the minimum-data rule (insufficient_data), the applicability columns
(n_missing_predictors, outside_training_range), the fallback for models saved before them, and the params check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import app
from pipeline.contract import CohortContract
from pipeline.errors import ConfigError, ExitCode
from pipeline.features import ScoringRule, insufficient_data
from pipeline.modelling.bundle import MANIFEST_FILE, load_bundle
from pipeline.tasks import TaskSpec, task_predictors
from tests.scoring.helpers import PREDICTORS, invoke, runner, save_test_model, write

SECRET = "ZZSECRET"  # in every patient id: it must never reach the messages
FULL = {
    "age": "45", "sex": "F", "bmi": "28.0", "madrs_baseline": "30", "route": "iv_racemic",
    "family_history_aud": "no", "benzodiazepine_mg_deq": "5.0",
}  # fmt: skip


def patient(pid: str, **values: str) -> dict[str, str]:
    """A complete, in-range patient; ``values`` override cells ("" leaves one empty)."""
    return {"patient_id": f"{SECRET}-{pid}", **FULL, **values}


def frame(*rows: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["patient_id", *PREDICTORS])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, contract: CohortContract) -> Path:
    def logit(X: pd.DataFrame) -> pd.Series:
        return 0.08 * (X["bmi"] - 28) - 0.05 * X["benzodiazepine_mg_deq"]

    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", logit)


def score(rows: pd.DataFrame, folder: Path, model: Path, suffix: str = ".parquet", *extra: str) -> tuple:
    source = write(rows, folder / "in.csv")
    out = folder / f"scores{suffix}"
    code, text = invoke("score", str(source), "-o", str(out), "--model", str(model), *extra)
    read = pd.read_parquet if suffix == ".parquet" else (lambda p: pd.read_csv(p, keep_default_na=False))
    return code, text, read(out), read(folder / f"scores.rejects{suffix}")


def test_a_row_with_only_a_patient_id_is_rejected_not_scored(tmp_path, model_dir) -> None:
    empty = dict.fromkeys(PREDICTORS, "")
    code, text, scored, rejects = score(frame(patient("1"), patient("2", **empty)), tmp_path, model_dir)
    assert code == ExitCode.ROWS_REJECTED, text
    assert scored["source_row"].tolist() == [1]
    assert rejects["source_row"].tolist() == [2]
    reject = rejects.iloc[0]
    assert reject["reason_code"] == "insufficient_data"
    assert reject["column"] == "madrs_baseline"
    assert pd.isna(reject["value"])
    assert "required predictor(s) missing: madrs_baseline" in reject["message"]
    assert "7 of 7 predictors missing (max 5)" in reject["message"]
    assert SECRET not in reject["message"]
    assert SECRET not in text


def test_a_complete_row_scores_with_no_missing_predictor_and_no_flag(tmp_path, model_dir) -> None:
    code, text, scored, rejects = score(frame(patient("1"), patient("2", bmi="")), tmp_path, model_dir)
    assert code == 0, text
    assert rejects.empty
    assert scored["n_missing_predictors"].tolist() == [0, 1]
    assert scored["outside_training_range"].tolist() == ["", ""]  # known ranges, nothing outside them
    assert str(scored["n_missing_predictors"].dtype) == "int64"


def test_values_outside_the_training_range_are_flagged_by_name(tmp_path, model_dir) -> None:
    ranges = load_bundle(model_dir).info.training_ranges
    above = f"{ranges['bmi'][1] + 5:.1f}"  # inside the contract's 12-80, above anything the model was trained on
    rows = frame(patient("1", bmi=above), patient("2", bmi=above, age="99"), patient("3"))
    code, text, scored, _ = score(rows, tmp_path, model_dir, ".csv")
    assert code == 0, text
    assert scored["outside_training_range"].tolist() == ["bmi", "age,bmi", ""]
    assert above not in text  # the value is in the output, never in the messages


def test_the_missing_count_limit_and_the_required_predictor_each_reject(tmp_path, model_dir) -> None:
    five = dict.fromkeys(["age", "sex", "bmi", "family_history_aud", "benzodiazepine_mg_deq"], "")
    six = {**five, "route": ""}
    rows = frame(patient("1", **five), patient("2", **six), patient("3", madrs_baseline=""))
    code, _, scored, rejects = score(rows, tmp_path, model_dir)
    assert code == ExitCode.ROWS_REJECTED
    assert scored["source_row"].tolist() == [1]
    assert scored["n_missing_predictors"].tolist() == [5]  # the limit (floor(0.75 * 7)) is still scored
    by_row = rejects.set_index("source_row")
    assert by_row.loc[2, "reason_code"] == "insufficient_data"
    assert "6 of 7 predictors missing (max 5)" in by_row.loc[2, "message"]
    assert "required" not in by_row.loc[2, "message"]
    assert pd.isna(by_row.loc[2, "column"])
    assert by_row.loc[3, "column"] == "madrs_baseline"


def test_a_later_complete_row_of_the_same_patient_is_scored(tmp_path, model_dir) -> None:
    """An id rejected for too little data is not 'already scored': the next, complete row of that patient is."""
    rows = frame(patient("1", madrs_baseline=""), patient("1"), patient("1"))
    code, _, scored, rejects = score(rows, tmp_path, model_dir, ".parquet", "--chunk-size", "1")
    assert code == ExitCode.ROWS_REJECTED
    assert scored["source_row"].tolist() == [2]
    assert rejects["reason_code"].tolist() == ["insufficient_data", "duplicate_record"]


@pytest.mark.parametrize("explain", [False, True])
def test_the_columns_and_their_types_are_there_even_when_nothing_is_scored(tmp_path, model_dir, explain) -> None:
    empty = dict.fromkeys(PREDICTORS, "")
    extra = ("--explain",) if explain else ()
    code, _, scored, rejects = score(frame(patient("1", **empty)), tmp_path, model_dir, ".parquet", *extra)
    assert code == ExitCode.ROWS_REJECTED
    assert scored.empty
    assert len(rejects) == 1
    schema = pq.read_schema(tmp_path / "scores.parquet")
    assert schema.field("n_missing_predictors").type == pa.int64()
    assert schema.field("outside_training_range").type in (pa.string(), pa.large_string())
    assert list(scored.columns).index("n_missing_predictors") == list(scored.columns).index("risk_band") + 1
    code, _, scored_csv, _ = score(frame(patient("1", **empty)), tmp_path, model_dir, ".csv", *extra)
    assert {"n_missing_predictors", "outside_training_range"} <= set(scored_csv.columns)


def test_validate_counts_the_rows_with_too_little_data(tmp_path, model_dir) -> None:
    source = write(frame(patient("1"), patient("2", madrs_baseline="")), tmp_path / "in.csv")
    code, text = invoke("validate", str(source), "--model", str(model_dir))
    assert code == ExitCode.ROWS_REJECTED
    assert "2 rows, 1 valid, 1 would be rejected" in text
    assert "insufficient_data: 1" in text
    assert "row 2: insufficient_data: not enough data for a score" in text


def legacy_copy(model_dir: Path, folder: Path) -> Path:
    """The model as an earlier version of the pipeline saved it: no manifest, no rule, no ranges."""
    copy = folder / "legacy"
    shutil.copytree(model_dir, copy)
    info_path = copy / "artifacts" / "model_info.json"
    info = json.loads(info_path.read_text())
    for key in ("bundle_format", "scoring_rule", "training_ranges"):
        info.pop(key)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    (copy / "artifacts" / MANIFEST_FILE).unlink()
    return copy


def test_a_model_saved_before_the_rule_gets_the_fallback_and_a_warning(tmp_path, model_dir) -> None:
    legacy = legacy_copy(model_dir, tmp_path)
    four = dict.fromkeys(["age", "sex", "bmi", "benzodiazepine_mg_deq"], "")
    rows = frame(patient("1", madrs_baseline=""), patient("2", **four), patient("3", bmi="60"))
    code, text, scored, rejects = score(rows, tmp_path, legacy)
    assert code == ExitCode.ROWS_REJECTED, text
    # fallback: at most half of the 7 predictors (3) missing, no required predictor
    assert scored["source_row"].tolist() == [1, 3]
    assert "4 of 7 predictors missing (max 3)" in rejects["message"].iloc[0]
    assert scored["outside_training_range"].isna().all()  # unknown, not "nothing outside"
    stderr = runner.invoke(app, ["validate", str(tmp_path / "in.csv"), "--model", str(legacy)]).stderr
    for note in ("stores no minimum-data rule", "stores no training ranges", "saved before model manifests"):
        assert note in text
        assert stderr.count(note) == 1, note  # said once per run
    assert "model manifest sha256 none" in text


def test_the_rule_check_names_only_predictors() -> None:
    cohort = pd.DataFrame({"patient_id": ["a", "b"], "x": [np.nan, 1.0], "y": [2.0, np.nan]})
    found = insufficient_data(cohort, ["x", "y"], ScoringRule(required_predictors=("x",), max_missing_fraction=0.5))
    assert found.mask.tolist() == [True, False]
    assert found.columns.tolist() == ["x"]
    assert "2.0" not in found.messages[0]


def test_a_typo_in_the_required_predictors_is_a_config_error(contract: CohortContract) -> None:
    task = TaskSpec(
        description="a typo in the scoring rule", target="response_end", prediction_time="first_dose",
        scoring=ScoringRule(required_predictors=("madrs_baseline", "madrs_24")),
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        task_predictors(task, contract, "course_early")
    assert error.value.exit_code == ExitCode.CONFIG
    assert "tasks.course_early.scoring.required_predictors" in str(error.value)
    assert "did you mean 'madrs_24h'" in str(error.value)
    # an early marker is not a predictor of a baseline task
    baseline = TaskSpec(
        description="a baseline task", target="response_end", prediction_time="baseline",
        scoring=ScoringRule(required_predictors=("madrs_24h",)),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="'madrs_24h' is not a predictor"):
        task_predictors(baseline, contract, "course")


def test_the_train_stage_refuses_a_typo_before_reading_data(project_root: Path) -> None:
    from pipeline.modelling.training import load_training_inputs
    from pipeline.stage import StageContext

    params_file = project_root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["tasks"]["acute"]["scoring"]["required_predictors"] = ["madrs_basline"]
    params_file.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"tasks\.acute\.scoring\.required_predictors.*madrs_basline") as error:
        load_training_inputs(StageContext.open("acute"))
    assert "madrs_baseline" in str(error.value)


def test_every_benefit_task_requires_the_baseline_depression_score(contract: CohortContract) -> None:
    """Response is defined from madrs_baseline; a harm task (blood-pressure event) needs its own predictors."""
    from pipeline.params import parse_section, read_params_file
    from pipeline.tasks import TasksParams
    from tests.conftest import REPO_ROOT

    tasks = parse_section(TasksParams, read_params_file(REPO_ROOT / "params.yaml"), "tasks", "params.yaml")
    for name, task in tasks.root.items():
        if task.outcome is None or task.outcome.kind == "benefit":
            assert "madrs_baseline" in task.scoring.required_predictors, name
        task_predictors(task, contract, name)  # every rule names predictors of its task
    assert "madrs_24h" in tasks.get("course_early").scoring.required_predictors
    assert {"sbp_baseline", "route"} <= set(tasks.get("safety_first_session").scoring.required_predictors)


def test_help_documents_the_columns_the_reason_and_the_manifest() -> None:
    code, text = invoke("score", "--help")
    assert code == 0
    flat = " ".join(text.split())
    for word in ("n_missing_predictors", "outside_training_range", "insufficient_data", "manifest"):
        assert word in flat, word
