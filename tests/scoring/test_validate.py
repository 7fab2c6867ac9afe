"""`trd validate`: the scorer's checks without predicting, with counts per reason and a progress bar."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from pipeline.contract import CohortContract
from pipeline.errors import ExitCode, PipelineError
from pipeline.scoring import build_context, validate_file
from tests.scoring.helpers import canonical_rows, invoke, save_test_model, write


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, contract: CohortContract) -> Path:
    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", lambda X: 0.08 * (X["bmi"] - 28))


def test_validate_reports_without_scoring(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 10).astype(object)
    rows.loc[2, "sex"] = "x"
    source = write(rows, tmp_path / "in.csv")
    code, text = invoke("validate", str(source), "--model", str(model_dir))
    assert code == ExitCode.ROWS_REJECTED
    assert "10 rows, 9 valid, 1 would be rejected" in text
    assert "unknown_code: 1" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_validate_counts_each_reason_and_duplicates_as_the_scorer_does(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 30).astype(object)
    rows.loc[3, "sex"] = "x"
    rows.loc[[5, 6], "madrs_baseline"] = ""  # required by the model's scoring rule
    rows.loc[20, "patient_id"] = rows.loc[10, "patient_id"]
    rows.loc[25, "patient_id"] = rows.loc[5, "patient_id"]  # the earlier row had too little data: this one is valid
    source = write(rows, tmp_path / "in.csv")
    ctx = build_context(
        model=str(model_dir), task="acute", input_format_name="canonical", source_file="in.csv", explain=False, top_k=1
    )
    report = validate_file(source, ctx, chunk_size=7, progress=False)
    assert (report.rows, report.valid, report.rejected) == (30, 26, 4)
    assert report.rejected_by_reason == {"unknown_code": 1, "insufficient_data": 2, "duplicate_record": 1}
    assert report.missing_by_column["madrs_baseline"] == 0  # rows below the scoring rule are not counted here


def test_validate_draws_a_bar_with_the_time_remaining(tmp_path, model_dir, contract, monkeypatch) -> None:
    import pipeline.scoring.validate as validate

    shown = io.StringIO()
    real = validate.progress_bar
    console = Console(file=shown, force_terminal=True, width=160)
    monkeypatch.setattr(validate, "progress_bar", lambda *a, **k: real(*a, **k, console=console))
    source = write(canonical_rows(contract, 500), tmp_path / "in.parquet")
    ctx = build_context(
        model=str(model_dir), task="acute", input_format_name="canonical", source_file="in.parquet", explain=False,
        top_k=1,
    )  # fmt: skip
    assert validate_file(source, ctx, chunk_size=100, progress=True).rows == 500
    assert "checking rows" in shown.getvalue()
    assert "ETA" in shown.getvalue()


def test_validate_refuses_a_file_without_rows(tmp_path, model_dir, contract) -> None:
    source = tmp_path / "in.csv"
    source.write_text(",".join(canonical_rows(contract, 1).columns) + "\n", encoding="utf-8")
    ctx = build_context(
        model=str(model_dir), task="acute", input_format_name="canonical", source_file="in.csv", explain=False, top_k=1
    )
    with pytest.raises(PipelineError, match="header but no rows"):
        validate_file(source, ctx, chunk_size=100, progress=False)
    assert pd.read_csv(source).empty
