"""`trd score --engine dask`: a real LocalCluster on loopback (2 worker processes), shared by the tests.

What is checked: equality with the single-machine path (one file; and many partitions against the same rows
concatenated in partition order), conservation of rows, duplicates across partitions, a corrupt partition, a
worker killed mid-job, the model loaded and hash-checked once per worker, byte-identical reruns, and nothing
left behind by a failed or interrupted job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.contract import CohortContract
from pipeline.errors import ExitCode, ModelError, PipelineError
from pipeline.scoring import ScoringContext, build_context, score_file
from pipeline.scoring.dask_engine import score_dataset
from pipeline.scoring.partitions import FAILED_FILE, MANIFEST_FILE, discover_partitions
from pipeline.scoring.plugin import model_on_workers, plugin_for
from tests.conftest import REPO_ROOT
from tests.scoring.helpers import canonical_rows, save_test_model

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.timeout(180)

runner = CliRunner()
CHUNK = 100


# --------------------------------------------------------------------------------------------------------------
# fixtures: a small model (as in test_score.py) and one cluster for the module
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, contract: CohortContract) -> Path:
    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", lambda X: 0.08 * (X["bmi"] - 28))


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    """Two single-threaded worker processes (with nannies, which restart a killed worker) on 127.0.0.1."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local


@pytest.fixture
def client(cluster: distributed.LocalCluster) -> Iterator[distributed.Client]:
    """A client for the test's own inspection; waits until both workers are up (one may have been killed)."""
    with distributed.Client(cluster, set_as_default=False) as inspector:
        inspector.wait_for_workers(2, timeout=60)
        yield inspector


def make_ctx(model_dir: Path, *, explain: bool = False) -> ScoringContext:
    return build_context(
        model=str(model_dir), task="acute", input_format_name="canonical", source_file="in", explain=explain, top_k=2
    )


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def with_bad_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """A few rows each reason rejects, and a duplicated id within the frame."""
    rows = rows.astype(object)
    rows.loc[1, "age"] = 250  # impossible
    rows.loc[2, "route"] = "Spravto"  # unknown code
    rows.loc[3, "bmi"] = "heavy"  # wrong type
    rows.loc[4, "patient_id"] = rows.loc[0, "patient_id"]  # duplicated id
    rows.loc[5, "bmi"] = np.nan  # missing: scored as missing (madrs_baseline is required by the test model)
    return rows


def read_output(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(folder / "scored"), pd.read_parquet(folder / "rejects")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def single_machine(source: Path, tmp: Path, ctx: ScoringContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = tmp / "single.parquet"
    score_file(source, out, ctx, chunk_size=CHUNK)
    return pd.read_parquet(out), pd.read_parquet(tmp / "single.rejects.parquet")


def assert_same_columns_equal(dask_frame: pd.DataFrame, single: pd.DataFrame) -> None:
    """Equal values, column by column (Arrow string flavours aside); floats within 1e-12 (absolute), since a
    BLAS kernel may round a dot product differently for another batch shape; bit equality across workers is
    checked separately on the same partitions."""
    assert list(dask_frame.columns) == list(single.columns)
    assert len(dask_frame) == len(single)
    for column in single.columns:
        left, right = dask_frame[column].reset_index(drop=True), single[column].reset_index(drop=True)
        if pd.api.types.is_float_dtype(right):
            np.testing.assert_allclose(left.to_numpy(), right.to_numpy(), rtol=0, atol=1e-12, err_msg=column)
        else:
            assert (
                left.astype(object).where(left.notna(), None).tolist()
                == right.astype(object).where(right.notna(), None).tolist()
            ), column


# --------------------------------------------------------------------------------------------------------------
# partition discovery (no cluster)
# --------------------------------------------------------------------------------------------------------------


def test_partitions_are_found_sorted_naturally_and_named_stably(tmp_path: Path) -> None:
    for name in ["b/part.1.parquet", "a/part.10.parquet", "a/part.2.csv", "_SUCCESS", "notes.txt", ".tmp/x.parquet"]:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    names = [p.name for p in discover_partitions(tmp_path / "in")]
    assert names == ["a/part.2.csv", "a/part.10.parquet", "b/part.1.parquet"]
    assert [p.part for p in discover_partitions(tmp_path / "in")] == [f"part-0000{i}.parquet" for i in range(3)]
    from_glob = discover_partitions(f"{tmp_path}/in/a/part.*")
    assert [p.name for p in from_glob] == ["part.2.csv", "part.10.parquet"]
    with pytest.raises(PipelineError, match=r"no \.csv or \.parquet"):
        discover_partitions(f"{tmp_path}/in/*.nothing")
    with pytest.raises(PipelineError, match="not found"):
        discover_partitions(tmp_path / "absent")


def test_output_that_is_not_ours_is_refused_before_any_work(tmp_path: Path, model_dir: Path, contract) -> None:
    source = write(canonical_rows(contract, 10), tmp_path / "in" / "day-1.parquet")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    cases = [
        (source, "mine", "not the output of an earlier"),
        (source, "scores.csv", "folder of Parquet"),
        (source, "absent/out", "output folder does not exist"),
        (source.parent, "in/out", "inside the input folder"),
        (source.parent, "in", "not the output of an earlier"),
    ]
    for given, output, message in cases:
        code, text = invoke("score", str(given), "-o", str(tmp_path / output), "--model", str(model_dir),
                            "--engine", "dask", "--workers", "1")  # fmt: skip
        assert code == ExitCode.USAGE, text
        assert message in text
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "mine"]
    code, text = invoke("score", str(source), "-o", str(tmp_path / "x.parquet"), "--model", str(model_dir),
                        "--workers", "2")  # fmt: skip
    assert code == ExitCode.USAGE
    assert "need --engine dask" in text


# --------------------------------------------------------------------------------------------------------------
# on the cluster
# --------------------------------------------------------------------------------------------------------------


def test_one_file_gives_the_single_machine_output(tmp_path, model_dir, contract, cluster, client) -> None:
    """Same rows, same probabilities (bit for bit), same explanations, same rejects, same exit code."""
    source = write(with_bad_rows(canonical_rows(contract, 450, seed=3)), tmp_path / "in.csv")
    expected_scored, expected_rejects = single_machine(source, tmp_path, make_ctx(model_dir, explain=True))
    out = tmp_path / "out"
    code, text = invoke(
        "score", str(source), "-o", str(out), "--model", str(model_dir), "--engine", "dask",
        "--scheduler", cluster.scheduler_address, "--chunk-size", str(CHUNK), "--explain", "--top-k", "2",
    )  # fmt: skip
    assert code == ExitCode.ROWS_REJECTED, text
    assert "450 rows in 1 partition(s): 446 scored, 4 rejected" in text
    scored, rejects = read_output(out)
    assert (scored["source_file"] == "in.csv").all()
    assert (rejects["source_file"] == "in.csv").all()
    assert_same_columns_equal(scored.drop(columns="source_file"), expected_scored)
    assert_same_columns_equal(rejects.drop(columns="source_file"), expected_rejects)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out", "single.parquet", "single.rejects.parquet"]


def partitioned_input(root: Path, contract: CohortContract) -> tuple[list[pd.DataFrame], list[str]]:
    """Four partitions (CSV and Parquet, nested, one header-only) with duplicates within and across them."""
    first = with_bad_rows(canonical_rows(contract, 300, seed=11))
    second = canonical_rows(contract, 250, seed=12)
    second["patient_id"] = [f"Q{i:05d}" for i in range(len(second))]
    third = canonical_rows(contract, 200, seed=13)
    third["patient_id"] = [f"R{i:05d}" for i in range(len(third))]
    second.loc[7, "patient_id"] = first.loc[10, "patient_id"]  # scored in the first partition: rejected here
    second.loc[8, "patient_id"] = first.loc[1, "patient_id"]  # rejected (age 250) in the first: scored here
    third.loc[0, "patient_id"] = second.loc[20, "patient_id"]  # scored in the second: rejected here
    third.loc[1, "patient_id"] = first.loc[10, "patient_id"]  # scored in the first: rejected here
    empty = canonical_rows(contract, 0)
    layout = [
        ("a/part.2.csv", first),
        ("a/part.10.parquet", second),
        ("b/part.1.parquet", third),
        ("b/part.3.csv", empty),
    ]
    for name, frame in layout:
        write(frame, root / name)
    (root / "_SUCCESS").write_bytes(b"")
    (root / "README.txt").write_text("not data")
    return [frame for _, frame in layout], [name for name, _ in layout]


def test_partitions_conserve_rows_and_equal_the_single_path_on_the_concatenation(
    tmp_path, model_dir, contract, cluster, client
) -> None:
    frames, names = partitioned_input(tmp_path / "in", contract)
    out = tmp_path / "out"
    summary = score_dataset(
        tmp_path / "in", out, make_ctx(model_dir), chunk_size=CHUNK, scheduler=cluster.scheduler_address
    )
    rows_in = sum(len(f) for f in frames)
    scored, rejects = read_output(out)
    assert summary.rows == rows_in == len(scored) + len(rejects) == summary.scored + summary.rejected
    assert summary.failed == ()
    assert scored["patient_id"].is_unique

    # the single-machine scorer on the same rows concatenated in partition order, renumbered per partition
    reference = write(pd.concat(frames, ignore_index=True), tmp_path / "all.csv")
    expected_scored, expected_rejects = single_machine(reference, tmp_path, make_ctx(model_dir))
    offsets = np.cumsum([0, *(len(f) for f in frames)])

    def locate(frame: pd.DataFrame) -> pd.DataFrame:
        k = np.searchsorted(offsets, frame["source_row"].to_numpy(), side="left") - 1
        located = frame.copy()
        located.insert(located.columns.get_loc("source_row"), "source_file", np.asarray(names, dtype=object)[k])
        located["source_row"] = frame["source_row"].to_numpy() - offsets[k]
        return located

    assert_same_columns_equal(scored, locate(expected_scored))
    expected_rejects = locate(expected_rejects)
    cross = rejects["message"].str.contains("in partition")
    assert_same_columns_equal(rejects.drop(columns="message"), expected_rejects.drop(columns="message"))
    assert rejects.loc[~cross, "message"].tolist() == expected_rejects.loc[~cross.to_numpy(), "message"].tolist()
    assert rejects.loc[cross, ["source_file", "source_row", "message"]].values.tolist() == [
        ["a/part.10.parquet", 8, "this patient id was scored earlier, in partition a/part.2.csv"],
        ["b/part.1.parquet", 1, "this patient id was scored earlier, in partition a/part.10.parquet"],
        ["b/part.1.parquet", 2, "this patient id was scored earlier, in partition a/part.2.csv"],
    ]

    # one output partition per input partition, readable as one table by dask.dataframe
    import dask.dataframe as dd

    assert sorted(p.name for p in (out / "scored").iterdir()) == [f"part-0000{i}.parquet" for i in range(4)]
    assert len(dd.read_parquet(out / "scored")) == len(scored)
    manifest = pd.read_json(out / MANIFEST_FILE, typ="series")
    assert [p["source_file"] for p in manifest["partitions"]] == names
    assert [p["rows"] for p in manifest["partitions"]] == [len(f) for f in frames]

    # the model was loaded once per worker, not once per partition
    assert summary.model_loads == summary.workers_used <= 2


def test_model_is_hash_checked_on_every_worker(model_dir, cluster, client) -> None:
    ctx = make_ctx(model_dir)
    plugin = plugin_for(ctx)
    with model_on_workers(client, plugin) as name:
        verified = client.run(lambda dask_worker: dask_worker.plugins[name].bundle.info.estimator_sha256)
    assert len(verified) == 2
    assert set(verified.values()) == {ctx.bundle.info.estimator_sha256}

    tampered = plugin_for(ctx)
    data = bytearray(tampered.artifacts["estimator.skops"])
    data[len(data) // 2] ^= 0xFF
    tampered.artifacts["estimator.skops"] = bytes(data)
    with pytest.raises(ModelError, match="does not match the recorded"), model_on_workers(client, tampered):
        pass

    other = plugin_for(ctx)
    other.expected_sha256 = "f" * 64  # the client announced another model than the files the worker got
    with pytest.raises(ModelError, match="is not the"), model_on_workers(client, other):
        pass


def test_corrupt_partition_is_named_and_the_others_are_scored(tmp_path, model_dir, contract, cluster, client) -> None:
    for i in range(4):
        rows = canonical_rows(contract, 120, seed=20 + i)
        rows["patient_id"] = [f"S{i}-{j:04d}" for j in range(len(rows))]
        write(rows, tmp_path / "in" / f"day-{i}.parquet")
    corrupt = tmp_path / "in" / "day-2.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[:-100])
    out = tmp_path / "out"
    code, text = invoke("score", str(tmp_path / "in"), "-o", str(out), "--model", str(model_dir), "--engine", "dask",
                        "--scheduler", cluster.scheduler_address)  # fmt: skip
    assert code == ExitCode.ROWS_REJECTED, text
    assert "partition not scored: day-2.parquet" in text
    failed = pd.read_csv(out / FAILED_FILE)
    assert failed["source_file"].tolist() == ["day-2.parquet"]
    assert failed["message"].str.contains("truncated or corrupt").all()
    scored, rejects = read_output(out)
    assert len(scored) == 360
    assert len(rejects) == 0
    assert sorted(scored["source_file"].unique()) == ["day-0.parquet", "day-1.parquet", "day-3.parquet"]

    # every partition unreadable: nothing is written and the input error is raised, as for one bad file
    for i in (0, 1, 3):
        (tmp_path / "in" / f"day-{i}.parquet").write_bytes(b"PAR1 not parquet")
    code, text = invoke("score", str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "--model", str(model_dir),
                        "--engine", "dask", "--scheduler", cluster.scheduler_address)  # fmt: skip
    assert code == ExitCode.INPUT, text
    assert "no partition could be scored" in text
    assert "day-0.parquet" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_same_input_same_bytes_and_reruns_replace_the_output(tmp_path, model_dir, contract, cluster, client) -> None:
    """Determinism: two runs write identical files; a rerun onto an earlier output replaces it whole."""
    partitioned_input(tmp_path / "in", contract)
    ctx = make_ctx(model_dir)
    for name in ("a", "b", "a"):
        score_dataset(tmp_path / "in", tmp_path / name, ctx, chunk_size=CHUNK, scheduler=cluster.scheduler_address)
    files = folder_bytes(tmp_path / "a")
    assert files == folder_bytes(tmp_path / "b")
    assert {"_SUCCESS", MANIFEST_FILE, FAILED_FILE, "scored/part-00001.parquet"} <= set(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "in"]


def test_interrupted_job_leaves_the_destination_as_it_was(
    tmp_path, model_dir, contract, cluster, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the first partition: no staging folder remains and an earlier output is untouched."""
    import pipeline.scoring.dask_engine as engine

    partitioned_input(tmp_path / "in", contract)
    ctx = make_ctx(model_dir)
    score_dataset(tmp_path / "in", tmp_path / "out", ctx, chunk_size=CHUNK, scheduler=cluster.scheduler_address)
    before = folder_bytes(tmp_path / "out")
    real = engine.as_completed

    def interrupted(*args, **kwargs):
        yield next(iter(real(*args, **kwargs)))
        assert list(tmp_path.glob(".out.trd-*/_work")), "interrupted outside the job"
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score_dataset(tmp_path / "in", tmp_path / "out", ctx, chunk_size=CHUNK, scheduler=cluster.scheduler_address)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert folder_bytes(tmp_path / "out") == before


@pytest.mark.slow
def test_workers_option_starts_a_local_cluster_with_the_same_output(tmp_path, model_dir, contract, cluster) -> None:
    """`--workers 1` (a fresh LocalCluster) and the shared 2-worker cluster write identical files."""
    partitioned_input(tmp_path / "in", contract)
    common = ["--model", str(model_dir), "--engine", "dask", "--chunk-size", str(CHUNK)]
    code_a, text_a = invoke("score", str(tmp_path / "in"), "-o", str(tmp_path / "a"), *common,
                            "--scheduler", cluster.scheduler_address)  # fmt: skip
    code_b, text_b = invoke("score", str(tmp_path / "in"), "-o", str(tmp_path / "b"), *common, "--workers", "1")
    assert code_a == code_b == ExitCode.ROWS_REJECTED, text_a + text_b
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


@pytest.mark.slow
def test_sigterm_leaves_nothing(tmp_path, model_dir, contract, cluster, client) -> None:
    """SIGTERM to the `trd score --engine dask` process mid-job: no output folder and no staging folder remain."""
    for i in range(6):
        rows = canonical_rows(contract, 4000, seed=40 + i)
        rows["patient_id"] = [f"T{i}-{j:05d}" for j in range(len(rows))]
        write(rows, tmp_path / "in" / f"part-{i}.csv")
    env = {**os.environ, "TRD_PROJECT_ROOT": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "score", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
         "--model", str(model_dir), "--engine", "dask", "--scheduler", cluster.scheduler_address,
         "--chunk-size", str(CHUNK)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline and not list(tmp_path.glob(".out.trd-*/_work/scored-*")):
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 130, stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_killed_worker_is_recovered_and_the_output_is_exact(tmp_path, model_dir, contract, cluster, client) -> None:
    """SIGKILL a worker while it runs a partition: Dask reruns the work; the output is byte-identical.

    Last in the module: the nanny restarts the worker, which takes a few seconds.
    """
    for i in range(6):
        rows = canonical_rows(contract, 1500, seed=30 + i)
        rows["patient_id"] = [f"K{i}-{j:05d}" for j in range(len(rows))]
        write(rows, tmp_path / "in" / f"part-{i}.csv")
    ctx = make_ctx(model_dir)
    undisturbed = score_dataset(
        tmp_path / "in", tmp_path / "ref", ctx, chunk_size=300, scheduler=cluster.scheduler_address
    )
    client.wait_for_workers(2, timeout=60)
    pids = client.run(os.getpid)

    outcome: dict[str, object] = {}

    def job() -> None:
        try:
            outcome["summary"] = score_dataset(
                tmp_path / "in", tmp_path / "out", ctx, chunk_size=300, scheduler=cluster.scheduler_address
            )
        except BaseException as exc:  # reported to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline and thread.is_alive():
        done = list(tmp_path.glob(".out.trd-*/_work/scored-*"))
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("trd-score-") for k in keys)]
        if done and busy and busy[0] in pids:
            killed = pids[busy[0]]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    thread.join(timeout=150)
    assert killed is not None, "the job finished before a worker could be killed"
    assert "error" not in outcome, outcome.get("error")
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    summary = outcome["summary"]
    assert summary.rows == undisturbed.rows == 9_000 == summary.scored
    assert folder_bytes(tmp_path / "out") == folder_bytes(tmp_path / "ref")
