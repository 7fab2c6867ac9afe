"""`trd score` on one file (the local engine): happy paths, every kind of bad input, atomic outputs, the model
checks."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.contract import CohortContract
from pipeline.errors import ExitCode
from pipeline.features import build_features
from pipeline.modelling.bundle import load_bundle
from tests.conftest import REPO_ROOT
from tests.scoring.helpers import (
    PREDICTORS,
    canonical_layout,
    canonical_rows,
    invoke,
    save_test_model,
    score_in_background,
    write,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, contract: CohortContract) -> Path:
    def logit(X: pd.DataFrame) -> pd.Series:
        return 0.08 * (X["bmi"] - 28) - 0.05 * X["benzodiazepine_mg_deq"]

    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", logit)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_happy_path_scores_every_row(tmp_path, model_dir, contract, suffix: str) -> None:
    rows = canonical_rows(contract, 250)
    source = write(rows, tmp_path / f"in{suffix}")
    out = tmp_path / f"scores{suffix}"
    code, text = invoke("score", str(source), "-o", str(out), "--model", str(model_dir), "--chunk-size", "100")
    assert code == 0, text
    scored = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert len(scored) == 250
    assert scored["patient_id"].tolist() == rows["patient_id"].tolist()
    assert scored["p_response"].between(0, 1).all()
    assert set(scored["risk_band"]) <= {"low", "intermediate", "high"}
    assert (scored["model_sha256"] == load_bundle(model_dir).info.estimator_sha256).all()
    assert "250 rows: 250 scored, 0 rejected" in text


def test_scores_equal_the_training_path(tmp_path, model_dir, contract) -> None:
    """One code path: the CLI's probability equals features built and predicted the way training does."""
    from pipeline.harmonise import harmonise, rules_from_tabular_spec
    from pipeline.scales import load_scale_conversions
    from pipeline.sources.tabular import stage_tabular

    rows = canonical_rows(contract, 40, seed=9)
    out = tmp_path / "scores.csv"
    assert invoke("score", str(write(rows, tmp_path / "in.csv")), "-o", str(out), "--model", str(model_dir))[0] == 0
    fmt = canonical_layout(contract)
    scales = load_scale_conversions(REPO_ROOT / "configs" / "scale_conversions.yaml")
    staged = stage_tabular(rows.astype(str), fmt, "x", required=["patient_id", *PREDICTORS])
    rules = rules_from_tabular_spec(fmt, constants={"cohort": "scoring_input"})
    cohort = harmonise(staged.rows, rules, contract, scales).cohort
    bundle = load_bundle(model_dir)
    expected = bundle.predict(build_features(cohort, bundle.feature_spec))
    np.testing.assert_allclose(pd.read_csv(out)["p_response"].to_numpy(), expected, rtol=0, atol=1e-12)


def test_explanations_are_readable_and_machine_readable(tmp_path, model_dir, contract) -> None:
    out = tmp_path / "scores.parquet"
    source = write(canonical_rows(contract, 30), tmp_path / "in.csv")
    code, _ = invoke("score", str(source), "-o", str(out), "--model", str(model_dir), "--explain", "--top-k", "2")
    assert code == 0
    scored = pd.read_parquet(out)
    assert {"drivers", "driver_1_feature", "driver_1_contribution", "driver_2_feature"} <= set(scored.columns)
    assert scored["drivers"].str.contains("the probability").all()
    assert set(scored["driver_1_feature"]) <= set(PREDICTORS)


def test_rejected_rows_are_written_with_reasons(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 12).astype(object)
    rows.loc[1, "age"] = 250  # impossible
    rows.loc[2, "route"] = "Spravto"  # unknown code
    rows.loc[3, "bmi"] = "heavy"  # wrong type
    rows.loc[4, "patient_id"] = rows.loc[0, "patient_id"]  # duplicated id
    rows.loc[5, "bmi"] = np.nan  # missing is fine: scored as missing
    rows.loc[6, "bmi"] = 1e300  # huge
    out = tmp_path / "scores.csv"
    code, text = invoke("score", str(write(rows, tmp_path / "in.csv")), "-o", str(out), "--model", str(model_dir))
    assert code == ExitCode.ROWS_REJECTED, text
    rejects = pd.read_csv(tmp_path / "scores.rejects.csv")
    scored = pd.read_csv(out)
    assert len(scored) + len(rejects) == 12
    reasons = dict(zip(rejects["source_row"], rejects["reason_code"], strict=True))
    assert reasons == {
        2: "impossible_value",
        3: "unknown_code",
        4: "wrong_type",
        5: "duplicate_record",
        7: "impossible_value",
    }
    assert rejects.set_index("source_row").loc[3, "column"] == "route"
    assert 6 in scored["source_row"].tolist()
    assert "5 rejected" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"patient_id,age,sex,bmi,madrs_baseline,route,family_history_aud,benzodiazepine_mg_deq\n", "no rows"),
        (b"patient_id;age;sex\nP1;40;F\n", "missing required column"),
        (
            "patient_id,age,sex,bmi,madrs_baseline,route,family_history_aud,benzodiazepine_mg_deq\nP\xe91,40,F,25,30,oral,no,0\n".encode(
                "latin-1"
            ),
            "UTF-8",
        ),
    ],
)
def test_bad_csv_inputs_fail_clearly_and_write_nothing(tmp_path, model_dir, content: bytes, message: str) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(content)
    out = tmp_path / "scores.csv"
    code, text = invoke("score", str(source), "-o", str(out), "--model", str(model_dir))
    assert code == ExitCode.INPUT, text
    assert message in text
    assert "in.csv" in text
    assert "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_missing_column_lists_every_missing_column(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 5).drop(columns=["bmi", "route"])
    code, text = invoke(
        "score", str(write(rows, tmp_path / "in.csv")), "-o", str(tmp_path / "o.csv"), "--model", str(model_dir)
    )
    assert code == ExitCode.INPUT
    assert "bmi" in text
    assert "route" in text


def test_truncated_parquet_is_refused(tmp_path, model_dir, contract) -> None:
    source = write(canonical_rows(contract, 50), tmp_path / "in.parquet")
    source.write_bytes(source.read_bytes()[:-100])
    code, text = invoke("score", str(source), "-o", str(tmp_path / "o.parquet"), "--model", str(model_dir))
    assert code == ExitCode.INPUT
    assert "truncated" in text or "corrupt" in text


def test_unreadable_path_and_missing_output_folder(tmp_path, model_dir, contract) -> None:
    code, text = invoke("score", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(model_dir))
    assert code == ExitCode.INPUT
    assert "not found" in text
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    code, text = invoke("score", str(source), "-o", str(tmp_path / "absent" / "o.csv"), "--model", str(model_dir))
    assert code == ExitCode.USAGE
    assert "output folder does not exist" in text


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_failed_write_names_the_output_and_leaves_nothing(tmp_path, model_dir, contract, monkeypatch, suffix) -> None:
    """A disk that fills up mid-run (the write happens on the background thread) is a clear error, not a traceback."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    class FullDiskWriter:
        def __init__(self, path, *args, **kwargs) -> None:
            Path(path).write_bytes(b"PAR1")  # a partial file, as a real writer leaves

        def write_table(self, table) -> None:
            raise OSError(28, "No space left on device")

    if suffix == ".parquet":
        monkeypatch.setattr(pq, "ParquetWriter", FullDiskWriter)
    else:
        monkeypatch.setattr(pacsv, "CSVWriter", FullDiskWriter)
    source = write(canonical_rows(contract, 300), tmp_path / "in.csv")
    out = tmp_path / "out" / f"scores{suffix}"
    out.parent.mkdir()
    code, text = invoke("score", str(source), "-o", str(out), "--model", str(model_dir), "--chunk-size", "100")
    assert code == ExitCode.OUTPUT
    assert "No space left on device" in text
    assert f"scores{suffix}" in text
    assert "Traceback" not in text
    assert list(out.parent.iterdir()) == []


def test_tampered_model_is_refused(tmp_path, model_dir, contract) -> None:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    estimator = copy / "artifacts" / "estimator.skops"
    data = bytearray(estimator.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle
    estimator.write_bytes(bytes(data))
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    code, text = invoke("score", str(source), "-o", str(tmp_path / "o.csv"), "--model", str(copy))
    assert code == ExitCode.MODEL
    assert "does not match the recorded" in text
    (copy / "artifacts" / "model.pkl").write_bytes(b"not allowed")
    code, text = invoke("score", str(source), "-o", str(tmp_path / "o.csv"), "--model", str(copy))
    assert code == ExitCode.MODEL
    assert "pickle" in text


def test_interrupted_run_leaves_no_output(tmp_path, model_dir, contract) -> None:
    """A SIGTERM mid-run (as `kill` sends) leaves neither the output nor the rejects file."""
    process, _ = score_in_background(
        contract, tmp_path, model_dir, "scores.csv", pieces=40, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".scores.csv.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert process.poll() is None, "the scorer finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv"]
