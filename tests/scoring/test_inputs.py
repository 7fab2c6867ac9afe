"""The scorer's readers (pipeline.scoring.inputs): awkward but valid files are read correctly; broken ones are
refused with exit 3 and a message naming the file, row and column, never the row's content; under --engine dask
they are listed in failed_partitions.csv and the other partitions are scored."""

from __future__ import annotations

import gzip
import io
import logging
import os
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.scoring.inputs as inputs
from pipeline.contract import CohortContract
from pipeline.errors import ExitCode
from pipeline.scoring.inputs import expected_rows, iter_chunks
from tests.scoring.helpers import canonical_rows, invoke, save_test_model, write

pytestmark = pytest.mark.timeout(300)
SECRET = "SECRET-ID-4711"  # stands for an identifier or clinical value in a bad row


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, contract: CohortContract) -> Path:
    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", lambda X: 0.08 * (X["bmi"] - 28))


def score_csv(source: Path, out: Path, model_dir: Path, chunk_size: int = 100) -> tuple[int, str]:
    return invoke("score", str(source), "-o", str(out), "--model", str(model_dir), "--chunk-size", str(chunk_size))


def assert_refused(code: int, text: str, folder: Path, inputs: list[str], *needles: str) -> None:
    """Exit 3, a message with every needle, no traceback, no secret, and nothing written beside the inputs."""
    assert code == ExitCode.INPUT, text
    for needle in needles:
        assert needle in text, text
    assert "Traceback" not in text
    assert SECRET not in text
    assert sorted(p.name for p in folder.iterdir()) == sorted(inputs)


# --------------------------------------------------------------------------------------------------------------
# read correctly
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\r", "\r\n"], ids=["cr", "crlf"])
def test_other_line_endings_give_the_same_scores(tmp_path, model_dir, contract, newline: str) -> None:
    """Old Mac exports end lines with a lone CR: the header must not swallow the whole file."""
    lf = write(canonical_rows(contract, 250), tmp_path / "lf.csv")
    other = tmp_path / "other.csv"
    other.write_bytes(lf.read_bytes().replace(b"\n", newline.encode()))
    assert inputs._csv_header(other)[1] < 100  # the header is the first line, not the whole file
    assert score_csv(lf, tmp_path / "a.csv", model_dir)[0] == 0
    code, text = score_csv(other, tmp_path / "b.csv", model_dir)
    assert code == 0, text
    assert "250 rows: 250 scored" in text
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_header_longer_than_a_block_is_read(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 150)
    reference = write(rows, tmp_path / "ref.csv")
    rows["x" * (inputs.CSV_BLOCK_SIZE + 1000)] = "extra"  # one column name longer than Arrow's block
    code, text = score_csv(write(rows, tmp_path / "in.csv"), tmp_path / "b.csv", model_dir)
    assert code == 0, text
    assert score_csv(reference, tmp_path / "a.csv", model_dir)[0] == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize("chunk_size", [100, 1000])
def test_a_row_longer_than_a_block_is_read_and_chunks_stay_bounded(tmp_path, model_dir, contract, chunk_size) -> None:
    rows = canonical_rows(contract, 400).astype(object)
    reference = write(rows, tmp_path / "ref.csv")
    rows["notes"] = ""
    rows.loc[250, "notes"] = "n" * (3 * inputs.CSV_BLOCK_SIZE)  # Arrow: "straddling object"
    source = write(rows, tmp_path / "in.csv")
    sizes = [len(chunk) for chunk in iter_chunks(source, chunk_size)]
    assert sum(sizes) == 400
    assert max(sizes) <= chunk_size + inputs.CSV_BLOCK_SIZE // 40  # still about chunk_size rows at a time
    code, text = score_csv(source, tmp_path / "b.csv", model_dir, chunk_size)
    assert code == 0, text
    assert score_csv(reference, tmp_path / "a.csv", model_dir, chunk_size)[0] == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_a_row_longer_than_the_largest_block_is_refused(tmp_path, model_dir, contract, monkeypatch) -> None:
    monkeypatch.setattr(inputs, "CSV_MAX_BLOCK_SIZE", 4 * inputs.CSV_BLOCK_SIZE)  # a small cap keeps the test fast
    rows = canonical_rows(contract, 300).astype(object)
    rows["notes"] = ""
    rows.loc[200, "notes"] = SECRET * (10 * inputs.CSV_BLOCK_SIZE // len(SECRET))  # over twice the cap
    source = write(rows, tmp_path / "in.csv")
    code, text = score_csv(source, tmp_path / "o.csv", model_dir)
    assert_refused(code, text, tmp_path, ["in.csv"], "in.csv", "longer than 2 MB", "what to do")


# --------------------------------------------------------------------------------------------------------------
# refused: exit 3, where the problem is, never what the row holds
# --------------------------------------------------------------------------------------------------------------


def bad_row_file(folder: Path, contract: CohortContract, bad: bytes, row: int = 2345, n: int = 3000) -> Path:
    """A CSV of ``n`` rows whose data row ``row`` is replaced by ``bad`` (past the first block and chunk)."""
    lines = write(canonical_rows(contract, n), folder / "in.csv").read_bytes().split(b"\n")
    lines[row] = bad  # lines[0] is the header
    (folder / "in.csv").write_bytes(b"\n".join(lines))
    return folder / "in.csv"


@pytest.mark.parametrize(
    ("bad", "needles"),
    [
        (f"{SECRET},41".encode(), ["row 2345", "column 'sex'", "2 fields where the header has 8"]),
        (
            f"{SECRET},41,F,25,30,oral,no,0,extra".encode(),
            ["row 2345", "column 'benzodiazepine_mg_deq'", "9 fields where the header has 8"],
        ),
        (f"P1,41,F,25,30,oral,{SECRET}\xe9,0".encode("latin-1"), ["row 2345", "column 'family_history_aud'", "UTF-8"]),
    ],
    ids=["too-few-fields", "too-many-fields", "not-utf8"],
)
def test_unparsable_row_is_named_by_row_and_column_not_content(
    tmp_path, model_dir, contract, caplog, bad: bytes, needles: list[str]
) -> None:
    source = bad_row_file(tmp_path, contract, bad)
    with caplog.at_level(logging.DEBUG):
        code, text = score_csv(source, tmp_path / "o.csv", model_dir, chunk_size=500)
    assert_refused(code, text, tmp_path, ["in.csv"], "in.csv", *needles)
    assert SECRET not in caplog.text


def test_arrow_messages_are_scrubbed_of_row_text() -> None:
    """Any Arrow CSV message: what follows Arrow's own words (a quoted row) is dropped; the row number kept."""
    error = inputs._csv_error(
        f"CSV parse error: Row #12: Some new problem: {SECRET},1,2", Path("in.csv"), ["patient_id", "age"]
    )
    assert error.row == 11
    assert SECRET not in str(error)
    assert "Some new problem" in str(error)


def test_nested_parquet_column_is_refused_by_name(tmp_path, model_dir, contract) -> None:
    table = pa.Table.from_pandas(canonical_rows(contract, 20), preserve_index=False)
    table = table.append_column("visits", pa.array([[1, 2]] * 20, pa.list_(pa.int64())))
    pq.write_table(table, tmp_path / "in.parquet")
    code, text = score_csv(tmp_path / "in.parquet", tmp_path / "o.parquet", model_dir)
    assert_refused(code, text, tmp_path, ["in.parquet"], "in.parquet", "column 'visits'", "nested", "flatten")


def test_parquet_without_row_groups_is_refused(tmp_path, model_dir, contract) -> None:
    schema = pa.Table.from_pandas(canonical_rows(contract, 1), preserve_index=False).schema
    pq.ParquetWriter(tmp_path / "in.parquet", schema).close()  # a footer, no row group
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 0
    code, text = score_csv(tmp_path / "in.parquet", tmp_path / "o.parquet", model_dir)
    assert_refused(code, text, tmp_path, ["in.parquet"], "in.parquet", "has no rows")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_parquet_is_refused(tmp_path, model_dir, contract, keep: float) -> None:
    source = write(canonical_rows(contract, 500), tmp_path / "in.parquet")
    data = source.read_bytes()
    source.write_bytes(data[: int(len(data) * keep)])
    code, text = score_csv(source, tmp_path / "o.parquet", model_dir)
    assert_refused(code, text, tmp_path, ["in.parquet"], "in.parquet", "truncated or corrupt")


def test_header_only_csv_is_refused(tmp_path, model_dir) -> None:
    (tmp_path / "in.csv").write_bytes(b"patient_id,age,sex,bmi,madrs_baseline,route,family_history_aud\r")
    code, text = score_csv(tmp_path / "in.csv", tmp_path / "o.csv", model_dir)
    assert_refused(code, text, tmp_path, ["in.csv"], "in.csv", "header but no rows")


def packed(kind: str, csv_bytes: bytes, path: Path) -> Path:
    if kind == "gzip":
        path.write_bytes(gzip.compress(csv_bytes))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("export.csv", csv_bytes)
    else:
        pq.write_table(pa.Table.from_pandas(pd.read_csv(io.BytesIO(csv_bytes))), path)
    return path


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("gzip", ["a gzip archive, not CSV text", "gunzip"]),
        ("zip", ["a zip archive or an Excel workbook", "unzip"]),
        ("parquet", ["a Parquet file, not CSV text", "name it .parquet"]),
    ],
)
def test_binary_file_named_csv_is_refused_with_what_it_is(tmp_path, model_dir, contract, kind, needles) -> None:
    csv_bytes = canonical_rows(contract, 30).to_csv(index=False).encode()
    source = packed(kind, csv_bytes, tmp_path / "in.csv")
    code, text = score_csv(source, tmp_path / "o.csv", model_dir)
    assert_refused(code, text, tmp_path, ["in.csv"], "in.csv", *needles)


def test_fifo_input_is_refused_without_blocking(tmp_path, model_dir) -> None:
    os.mkfifo(tmp_path / "in.csv")  # opening it would wait for a writer forever
    code, text = score_csv(tmp_path / "in.csv", tmp_path / "o.csv", model_dir)
    assert_refused(code, text, tmp_path, ["in.csv"], "in.csv", "not a regular file")


# --------------------------------------------------------------------------------------------------------------
# --engine dask: each bad partition is listed, the others are scored
# --------------------------------------------------------------------------------------------------------------


def test_dask_lists_unreadable_partitions_and_scores_the_others(
    tmp_path, model_dir, contract, one_worker_cluster
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = canonical_rows(contract, 200, seed=1)
    good["patient_id"] = [f"G{i:04d}" for i in range(len(good))]
    write(good, folder / "a-good.csv")
    cr = canonical_rows(contract, 100, seed=2)
    cr["patient_id"] = [f"C{i:04d}" for i in range(len(cr))]
    (folder / "b-cr.csv").write_bytes(cr.to_csv(index=False).replace("\n", "\r").encode())  # read, not failed
    bad_row_file(folder, contract, f"{SECRET},41".encode(), row=150, n=200).rename(folder / "c-bad-row.csv")
    packed("gzip", good.to_csv(index=False).encode(), folder / "d-gzip.csv")
    nested = pa.Table.from_pandas(good.head(5), preserve_index=False)
    pq.write_table(nested.append_column("visits", pa.array([[1]] * 5, pa.list_(pa.int64()))), folder / "e.parquet")
    truncated = write(good.head(50), folder / "f.parquet")
    truncated.write_bytes(truncated.read_bytes()[:-100])

    out = tmp_path / "out"
    code, text = invoke("score", str(folder), "-o", str(out), "--model", str(model_dir), "--engine", "dask",
                        "--scheduler", one_worker_cluster.scheduler_address, "--chunk-size", "100")  # fmt: skip
    assert code == ExitCode.ROWS_REJECTED, text
    assert "300 rows in 6 partition(s): 300 scored, 0 rejected, 4 partition(s) unreadable" in text
    assert SECRET not in text
    assert "Traceback" not in text
    failed = pd.read_csv(out / "failed_partitions.csv")
    assert failed["source_file"].tolist() == ["c-bad-row.csv", "d-gzip.csv", "e.parquet", "f.parquet"]
    messages = dict(zip(failed["source_file"], failed["message"], strict=True))
    assert "row 150, column 'sex'" in messages["c-bad-row.csv"]
    assert "gzip archive" in messages["d-gzip.csv"]
    assert "column 'visits'" in messages["e.parquet"]
    assert "truncated or corrupt" in messages["f.parquet"]
    assert SECRET not in (out / "failed_partitions.csv").read_text()
    assert SECRET not in (out / "_manifest.json").read_text()
    scored = pd.read_parquet(out / "scored")
    assert sorted(scored["source_file"].unique()) == ["a-good.csv", "b-cr.csv"]
    assert len(scored) == 300


def test_csv_chunks_hold_chunk_size_rows_whatever_the_row_width(tmp_path, contract) -> None:
    """Memory is bounded by --chunk-size in rows: Arrow's fixed-size blocks are gathered to that many rows."""
    rows = canonical_rows(contract, 60_000, seed=3)
    rows["patient_id"] = [f"P{i:07d}" for i in range(len(rows))]
    source = write(rows, tmp_path / "in.csv")
    sizes = [len(chunk) for chunk in iter_chunks(source, 20_000)]
    assert sum(sizes) == len(rows)
    assert len(sizes) >= 2
    # each chunk but the last reaches chunk_size and overshoots by less than one Arrow block (rows >= 40 bytes)
    assert all(20_000 <= n < 20_000 + 2**19 // 40 for n in sizes[:-1])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_expected_rows_is_exact_for_parquet_and_close_for_csv(tmp_path, contract, suffix: str) -> None:
    """The progress bar's total: Parquet's footer count; for CSV the first MiB's line breaks scaled to the size."""
    rows = canonical_rows(contract, 30_000, seed=4)
    total, estimated = expected_rows(write(rows, tmp_path / f"in{suffix}"))
    assert estimated == (suffix == ".csv")
    assert total is not None
    assert abs(total - 30_000) <= (0 if suffix == ".parquet" else 30_000 * 0.05)  # CSV: within 5 %


def test_expected_rows_is_unknown_without_line_breaks(tmp_path) -> None:
    source = tmp_path / "one_line.csv"
    source.write_bytes(b"patient_id,age")
    assert expected_rows(source) == (None, True)
