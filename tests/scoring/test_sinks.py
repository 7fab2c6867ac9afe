"""`trd score` outputs: spreadsheet formulas neutralised in CSV outputs, outputs that must not be written (the
input, folders, devices, read-only folders), both outputs committed or neither, one run at a time per output,
and what a killed run leaves behind removed by the next one. Both engines."""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

import pipeline.io as pio
from pipeline.contract import CohortContract
from pipeline.errors import ExitCode, PipelineError
from pipeline.io import neutralise_formulas, output_lock, remove_stale_temps
from tests.scoring.helpers import canonical_rows, invoke, save_test_model, score_in_background, write

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, contract: CohortContract) -> Path:
    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", lambda X: 0.08 * (X["bmi"] - 28))


def score(source: Path, out: Path | str, model_dir: Path, *extra: str) -> tuple[int, str]:
    return invoke("score", str(source), "-o", str(out), "--model", str(model_dir), *extra)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------------------------------------------
# CSV injection
# --------------------------------------------------------------------------------------------------------------


def test_neutralise_formulas_prefixes_formulas_and_keeps_numbers() -> None:
    cells = ["=1+1", "+SUM(A1)", "-cmd", "@x", "\tx", "\rx", "=", "-1.5", "+3", "-2e-3", ".5", "abc", " =x", None]
    expected = ["'=1+1", "'+SUM(A1)", "'-cmd", "'@x", "'\tx", "'\rx", "'=", "-1.5", "+3", "-2e-3", ".5", "abc", " =x"]
    table = pa.table(
        {
            "text": cells,
            "large": pa.array(cells, pa.large_string()),
            "category": pa.array(cells).dictionary_encode(),
            "number": pa.array([-1.5] * len(cells)),
        }
    )
    result = neutralise_formulas(table)
    assert result.schema == table.schema
    for column in ("text", "large", "category"):
        assert result.column(column).to_pylist() == [*expected, None], column
    assert result.column("number") == table.column("number")


def test_csv_outputs_neutralise_formulas_and_parquet_keeps_values(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 8).astype(object)
    rows.loc[0, "patient_id"] = '=HYPERLINK("http://x","y")'
    rows.loc[1, "patient_id"] = "@SUM(1)"
    rows.loc[2, "patient_id"] = "-2"  # a number: unchanged
    rows.loc[3, "route"] = "=1+1"  # rejected (unknown code): its value lands in the rejects file
    rows.loc[3, "patient_id"] = "+cmd"
    source = write(rows, tmp_path / "in.csv")
    assert score(source, tmp_path / "s.csv", model_dir)[0] == ExitCode.ROWS_REJECTED
    assert score(source, tmp_path / "s.parquet", model_dir)[0] == ExitCode.ROWS_REJECTED

    with (tmp_path / "s.csv").open(newline="") as handle:
        scored_ids = [r["patient_id"] for r in csv.DictReader(handle)]
    assert scored_ids[:3] == ['\'=HYPERLINK("http://x","y")', "'@SUM(1)", "-2"]
    with (tmp_path / "s.rejects.csv").open(newline="") as handle:
        reject = next(csv.DictReader(handle))
    assert (reject["patient_id"], reject["value"]) == ("'+cmd", "'=1+1")
    # numbers are untouched: the CSV's probabilities are the Parquet output's
    parquet = pd.read_parquet(tmp_path / "s.parquet")
    assert parquet["patient_id"].tolist()[:2] == ['=HYPERLINK("http://x","y")', "@SUM(1)"]
    assert pd.read_parquet(tmp_path / "s.rejects.parquet")["value"].tolist() == ["=1+1"]
    assert pd.read_csv(tmp_path / "s.csv")["p_response"].tolist() == parquet["p_response"].tolist()


# --------------------------------------------------------------------------------------------------------------
# outputs that must not be written
# --------------------------------------------------------------------------------------------------------------


def test_output_or_rejects_file_equal_to_the_input_is_a_usage_error(tmp_path, model_dir, contract) -> None:
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    before = source.read_bytes()
    os.link(source, tmp_path / "hardlink.csv")
    (tmp_path / "symlink.csv").symlink_to(source)
    rejects_named = write(canonical_rows(contract, 5), tmp_path / "s.rejects.csv")
    cases = [
        (source, source, "the output would overwrite the input"),
        (source, tmp_path / "sub" / ".." / "in.csv", "the output would overwrite the input"),
        (source, tmp_path / "hardlink.csv", "the output would overwrite the input"),
        (source, tmp_path / "symlink.csv", "the output would overwrite the input"),
        (rejects_named, tmp_path / "s.csv", "the rejects file would overwrite the input"),
    ]
    (tmp_path / "sub").mkdir()
    for given, output, message in cases:
        code, text = score(given, output, model_dir)
        assert code == ExitCode.USAGE, text
        assert message in text
    assert source.read_bytes() == before
    assert names(tmp_path) == ["hardlink.csv", "in.csv", "s.rejects.csv", "sub", "symlink.csv"]


def make_target(kind: str, folder: Path) -> str:
    if kind == "folder":
        (folder / "s.csv").mkdir()
    elif kind == "rejects-folder":
        (folder / "s.rejects.csv").mkdir()
    elif kind == "fifo":
        os.mkfifo(folder / "s.csv")
    elif kind == "symlink-to-device":
        (folder / "s.csv").symlink_to("/dev/full")
    else:
        return kind  # /dev/full, /dev/null
    return str(folder / "s.csv")


@pytest.mark.parametrize("kind", ["folder", "rejects-folder", "fifo", "symlink-to-device", "/dev/full", "/dev/null"])
def test_output_that_is_not_a_regular_file_is_exit_7_and_untouched(tmp_path, model_dir, contract, kind) -> None:
    """As root a rename would replace a device node: refused before anything is written."""
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    output = make_target(kind, tmp_path)
    before = names(tmp_path)
    code, text = score(source, output, model_dir)
    assert code == ExitCode.OUTPUT, text
    named = tmp_path / "s.rejects.csv" if kind == "rejects-folder" else output
    assert f"{named}: the output is" in text
    assert "Traceback" not in text
    assert names(tmp_path) == before
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write into, even root: the immutable attribute (root) or mode 0555 (other users)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_folder_is_exit_7(tmp_path, model_dir, contract, read_only_folder) -> None:
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    code, text = score(source, read_only_folder / "s.csv", model_dir)
    assert code == ExitCode.OUTPUT, text
    assert str(read_only_folder / "s.csv") in text
    assert "not writable" in text
    assert "Traceback" not in text
    assert names(read_only_folder) == []


@pytest.mark.parametrize("earlier", [True, False], ids=["earlier-output", "no-earlier-output"])
def test_failed_second_rename_rolls_back_the_first(tmp_path, model_dir, contract, monkeypatch, earlier) -> None:
    """Scores renamed into place, then the rejects rename fails: the scores are rolled back, so the two files
    are always from the same run (both earlier ones, or neither)."""
    source = write(canonical_rows(contract, 20), tmp_path / "in.csv")
    if earlier:
        (tmp_path / "s.csv").write_text("earlier scores\n")
        (tmp_path / "s.rejects.csv").write_text("earlier rejects\n")
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "s.rejects.csv" and ".trd-" in Path(src).name and Path(src).name.startswith(".s.rej"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(pio.os, "replace", failing_replace)
    code, text = score(source, tmp_path / "s.csv", model_dir)
    assert code == ExitCode.OUTPUT, text
    assert "s.rejects.csv" in text
    assert "Input/output error" in text
    if earlier:
        assert (tmp_path / "s.csv").read_text() == "earlier scores\n"
        assert (tmp_path / "s.rejects.csv").read_text() == "earlier rejects\n"
        assert names(tmp_path) == ["in.csv", "s.csv", "s.rejects.csv"]
    else:
        assert names(tmp_path) == ["in.csv"]


# --------------------------------------------------------------------------------------------------------------
# one run at a time; what a killed run leaves
# --------------------------------------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_at_once_and_is_removed_on_release(tmp_path) -> None:
    target = tmp_path / "s.csv"
    with output_lock(target):
        assert names(tmp_path) == [".s.csv.lock"]
        started = time.monotonic()
        with pytest.raises(PipelineError, match="another run is writing") as refused, output_lock(target):
            pass
        assert time.monotonic() - started < 1
        assert refused.value.exit_code == ExitCode.OUTPUT
    assert names(tmp_path) == []
    with output_lock(target):  # free again
        pass


def test_only_temporary_files_of_dead_processes_are_removed(tmp_path) -> None:
    target = tmp_path / "s.csv"
    dead, alive = dead_pid(), os.getpid()
    stale = [tmp_path / f".s.csv.trd-{dead}-abc123.tmp", tmp_path / f".s.csv.trd-{dead}-x_9.tmp"]
    kept = [
        tmp_path / f".s.csv.trd-{alive}-abc123.tmp",  # a live process's
        tmp_path / f".s.rejects.csv.trd-{dead}-abc.tmp",  # another output's
        tmp_path / f".s.csv.trd-{dead}-abc.tmp.bak",  # not the pattern
        tmp_path / "s.csv",
    ]
    for path in [*stale, *kept]:
        path.write_text("x")
    (tmp_path / f".s.csv.trd-{dead}-dir0.tmp").mkdir()  # a staging folder (Dask engine)
    (tmp_path / f".s.csv.trd-{dead}-dir0.tmp" / "part.parquet").write_text("x")
    removed = remove_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted([*(p.name for p in stale), f".s.csv.trd-{dead}-dir0.tmp"])
    assert names(tmp_path) == sorted(p.name for p in kept)


def test_second_run_stops_at_once_and_a_killed_run_is_cleaned_up(tmp_path, model_dir, contract) -> None:
    """Run A is scoring; run B into the same output stops at once (exit 7). A is killed with SIGKILL: its
    temporary files stay, named with its pid; run C removes them and writes both outputs."""
    process, out = score_in_background(
        contract, tmp_path, model_dir, "s.csv", pieces=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    source = tmp_path / "big.csv"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(list(tmp_path.glob(f".s*.trd-{process.pid}-*.tmp"))) < 2:
            time.sleep(0.05)
        assert process.poll() is None, "run A finished before the test could race it"

        started = time.monotonic()
        code, text = score(source, out, model_dir)
        assert code == ExitCode.OUTPUT, text
        assert "another run is writing this output" in text
        assert time.monotonic() - started < 30  # B did not wait for A (A needs much longer)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    left = sorted(p.name for p in tmp_path.glob(".s*.tmp"))
    assert left, "SIGKILL should leave A's temporary files"
    assert all(f".trd-{process.pid}-" in name for name in left)

    code, text = score(source, out, model_dir)
    assert code == 0, text
    assert names(tmp_path) == ["big.csv", "s.csv", "s.rejects.csv"]
    assert len(pd.read_csv(out)) == 30 * 2000


# --------------------------------------------------------------------------------------------------------------
# the Dask engine: the output folder
# --------------------------------------------------------------------------------------------------------------


def test_dask_output_in_use_is_refused_before_any_work(tmp_path, model_dir, contract) -> None:
    (tmp_path / "in").mkdir()
    source = write(canonical_rows(contract, 10), tmp_path / "in" / "a.csv")
    with output_lock(tmp_path / "out"):
        started = time.monotonic()
        code, text = score(source.parent, tmp_path / "out", model_dir, "--engine", "dask", "--workers", "1")
        assert time.monotonic() - started < 10  # refused before a cluster is started
    assert code == ExitCode.OUTPUT, text
    assert "another run is writing this output" in text
    assert names(tmp_path) == ["in"]


def test_dask_cleans_killed_staging_and_neutralises_failed_partitions(
    tmp_path, model_dir, contract, one_worker_cluster
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write(canonical_rows(contract, 30), folder / "a.csv")
    (folder / "=HYPERLINK(1).csv").write_bytes(b"\x1f\x8b not really gzip")  # unreadable, with a formula name
    dead = dead_pid()
    stale = tmp_path / f".out.trd-{dead}-0123abcd.tmp"
    (stale / "_work").mkdir(parents=True)  # a staging folder left by a killed client
    live = tmp_path / f".out.trd-{os.getpid()}-0123abcd.tmp"
    live.mkdir()
    code, text = score(
        folder, tmp_path / "out", model_dir, "--engine", "dask", "--scheduler", one_worker_cluster.scheduler_address
    )
    assert code == ExitCode.ROWS_REJECTED, text
    assert names(tmp_path) == sorted(["in", "out", live.name])
    raw = (tmp_path / "out" / "failed_partitions.csv").read_text()
    assert '"\'=HYPERLINK(1).csv"' in raw  # the cell a spreadsheet would have run
    assert "=HYPERLINK" not in raw.replace("'=HYPERLINK", "")
