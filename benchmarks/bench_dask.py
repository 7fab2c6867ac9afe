"""Scale-out scoring: the single-machine path against ``--engine dask`` with 1 and 2 workers, and how the Dask
path's cost grows from 1M to 10M rows.

Input: a folder of Parquet partitions (``--partition-rows`` rows each, default 500k) in the scorer's canonical
layout, patients resampled from ``data/processed/acute/train.parquet`` (run ``dvc repro`` first) with unique ids
and ~0.5 % impossible ages (so the rejects path runs). Inputs are cached under ``benchmarks/_work/dask/``
(git-ignored); the first N rows of the largest input are the same rows at every size.

Each measurement runs in its own child process:

* ``single``: ``pipeline.scoring.score_file`` (what ``trd score FILE`` runs) on each partition in turn, in one
  process; peak memory is that process's ``VmHWM``;
* ``dask N``: a LocalCluster like the one ``--workers N`` starts (N single-threaded worker processes on
  127.0.0.1), then ``pipeline.scoring.dask_engine.score_dataset`` on the folder.

"start s" is the one-off cost before scoring: for the single path, importing the pipeline; for Dask, starting
the cluster and importing the pipeline in every worker process (which a long-running cluster pays once, not per
job). "job s" is the rest: for Dask, submitting, loading and hash-checking the model on every worker, scoring,
the duplicate pass and the commit. Rows/s = input rows / job seconds; "with start" divides by both. Peak memory
is each process's ``VmHWM`` (its peak RSS since its program started): the single process, each Dask worker,
and the Dask client (which, with a LocalCluster, also runs the scheduler and the nannies). CPU s is the job's
CPU time (user + system, all threads) summed over those processes: on a machine whose cores are shared with
other work, it shows the engine's overhead more reliably than wall time. The growth table fits ``job seconds =
fixed + rows / throughput`` by least squares over the sizes, separating the per-job overhead from the per-row cost.

    .venv/bin/python benchmarks/bench_dask.py                                # 1M, 3M, 10M rows (~40 min, 2 cores)
    .venv/bin/python benchmarks/bench_dask.py --sizes 200000 1000000 --partition-rows 100000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK = REPO_ROOT / "benchmarks" / "_work" / "dask"
DEFAULT_SIZES = (1_000_000, 3_000_000, 10_000_000)
GENERATOR_VERSION = 1  # bump when the generated files change, so cached inputs are rebuilt
INVALID_RATE = 0.005


# --------------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------------


def input_folder(n_rows: int, partition_rows: int, model: Path, seed: int) -> Path:
    """``n_rows`` canonical rows in ``ceil(n_rows / partition_rows)`` Parquet partitions (cached)."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    from pipeline.features import FeatureSpec  # noqa: PLC0415

    folder = WORK / f"input_{n_rows}_{partition_rows}_{seed}_v{GENERATOR_VERSION}"
    if (folder / "_COMPLETE").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    columns = FeatureSpec.load(model / "artifacts" / "feature_spec.json").input_columns
    source = REPO_ROOT / "data" / "processed" / "acute" / "train.parquet"
    if not source.is_file():
        sys.exit(f"{source} not found: run `dvc repro` first")
    pool = pd.read_parquet(source)[columns].reset_index(drop=True)
    for k, start in enumerate(range(0, n_rows, partition_rows)):
        n = min(partition_rows, n_rows - start)
        rng = np.random.default_rng([seed, k])  # partition k is the same rows whatever n_rows is
        part = pool.iloc[rng.integers(0, len(pool), n)].reset_index(drop=True)
        part.insert(0, "patient_id", [f"B{i:09d}" for i in range(start, start + n)])
        invalid = rng.random(n) < INVALID_RATE
        part.loc[invalid, "age"] = 250.0  # impossible: rejected with a reason
        part.to_parquet(folder / f"part-{k:04d}.parquet", index=False)
    (folder / "_COMPLETE").write_text("")
    return folder


def partitions_of(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


# --------------------------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------------------------


def code_digest() -> str:
    """Digest of the pipeline source this process imports (the snapshot, see ``snapshot_code``)."""
    import hashlib  # noqa: PLC0415

    import pipeline  # noqa: PLC0415

    digest = hashlib.sha256()
    for path in sorted(Path(pipeline.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_code() -> Path:
    """Copy pipeline/ aside; children (and their Dask workers) import the copy through PYTHONPATH, so that edits
    made to the working tree while the benchmark runs do not mix code versions between runs."""
    folder = WORK / "code"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(REPO_ROOT / "pipeline", folder / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far: less sensitive than wall time to other work
    on the machine, so it shows the engine's overhead even when the cores are shared."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_mb() -> float:
    """This process's peak RSS since it started its program: ``VmHWM``, not ``ru_maxrss``, which Linux carries
    across exec from the spawning process (a worker would report at least its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best available


def child_single(folder: Path, model: Path, chunk_size: int, scratch: Path) -> dict:
    started = time.perf_counter()
    from pipeline.scoring import build_context, score_file  # noqa: PLC0415

    import_seconds = time.perf_counter() - started
    started, cpu = time.perf_counter(), _cpu_seconds()
    rows = 0
    for i, part in enumerate(partitions_of(folder)):
        ctx = build_context(
            model=str(model), task="acute", input_format_name="canonical", source_file=part.name, explain=False,
            top_k=3,
        )  # fmt: skip
        summary = score_file(part, scratch / f"scores-{i}.parquet", ctx, chunk_size=chunk_size)
        rows += summary.rows
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    return {
        "rows": rows, "seconds": seconds, "start_seconds": import_seconds, "cpu_seconds": cpu,
        "peak_rss_mb": _peak_mb(),
    }  # fmt: skip


def _import_pipeline() -> tuple[float, str]:
    """Run on each worker: import the scoring code (pandas, scikit-learn, skops, MLflow, ...); seconds, where."""
    started = time.perf_counter()
    import pipeline.scoring.dask_engine  # noqa: PLC0415

    return time.perf_counter() - started, pipeline.scoring.dask_engine.__file__


def child_dask(folder: Path, model: Path, chunk_size: int, scratch: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster  # noqa: PLC0415

    from pipeline.scoring import build_context  # noqa: PLC0415
    from pipeline.scoring.dask_engine import score_dataset  # noqa: PLC0415

    ctx = build_context(
        model=str(model), task="acute", input_format_name="canonical", source_file=folder.name, explain=False, top_k=3
    )
    started = time.perf_counter()
    # the settings of pipeline.scoring.dask_engine.dask_client for --workers N
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(workers)
        cluster_seconds = time.perf_counter() - started
        # a fresh worker process imports the pipeline once (seconds; paid again only if it restarts). Done here
        # so that the job below measures what a job on an already running cluster costs.
        started = time.perf_counter()
        imported = client.run(_import_pipeline)
        import_seconds = time.perf_counter() - started
        if not all(Path(where).is_relative_to(WORK) for _, where in imported.values()):
            sys.exit(f"a worker imported the working tree, not the snapshot: {imported}")
        started, cpu, worker_cpu = time.perf_counter(), _cpu_seconds(), client.run(_cpu_seconds)
        summary = score_dataset(
            folder, scratch / "scores", ctx, chunk_size=chunk_size, scheduler=cluster.scheduler_address
        )
        seconds = time.perf_counter() - started
        after = client.run(_cpu_seconds)
        # client (+ scheduler and nannies, which LocalCluster runs here) and every worker
        client_cpu = _cpu_seconds() - cpu
        workers_cpu = sum(after[w] - worker_cpu.get(w, 0.0) for w in after)
        worker_peaks = client.run(_peak_mb)
        restarted = summary.workers_used > workers  # a worker died and was replaced: numbers are suspect
        # the fixed cost of a job on a running cluster: 1,000 rows in one partition
        import pyarrow.parquet as pq  # noqa: PLC0415

        (scratch / "tiny").mkdir()
        pq.write_table(pq.read_table(partitions_of(folder)[0]).slice(0, 1000), scratch / "tiny" / "part-0.parquet")
        started = time.perf_counter()
        score_dataset(
            scratch / "tiny", scratch / "tiny-scores", ctx, chunk_size=chunk_size, scheduler=cluster.scheduler_address
        )
        tiny_seconds = time.perf_counter() - started
    return {
        "rows": summary.rows, "seconds": seconds, "start_seconds": cluster_seconds + import_seconds,
        "cpu_seconds": client_cpu + workers_cpu, "client_cpu_seconds": client_cpu,
        "cluster_seconds": cluster_seconds, "import_seconds": import_seconds,
        "client_peak_rss_mb": _peak_mb(),
        "worker_peak_rss_mb": sorted(worker_peaks.values()), "model_loads": summary.model_loads,
        "partitions": summary.partitions, "restarted": restarted, "tiny_seconds": tiny_seconds,
    }  # fmt: skip


def run_child(kind: str, folder: Path, args: argparse.Namespace, workers: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_dask_", dir=WORK) as scratch:
        command = [
            sys.executable, __file__, "--child", kind, "--input", str(folder), "--scratch", scratch,
            "--model", str(args.model), "--chunk-size", str(args.chunk_size), "--workers", str(workers),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(args.code)}
        run = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, check=False)
    if run.returncode != 0:
        sys.exit(f"{kind} child failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


def fit_overhead(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``seconds = fixed + rows / throughput``: (fixed seconds, rows per second)."""
    import numpy as np  # noqa: PLC0415

    rows = np.array([p[0] for p in points], dtype=float)
    seconds = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(rows, seconds, 1)
    return float(intercept), float(1 / slope) if slope > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--partition-rows", type=int, default=500_000)
    parser.add_argument("--chunk-size", type=int, default=50_000, help="as trd score --chunk-size")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "acute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["single", "dask"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import pipeline  # noqa: PLC0415

        if not Path(pipeline.__file__).is_relative_to(WORK):
            sys.exit(f"the child imported {pipeline.__file__}, not the snapshot")
    if args.child == "single":
        code = code_digest()
        print(json.dumps(child_single(args.input, args.model, args.chunk_size, args.scratch) | {"code": code}))
        return
    if args.child == "dask":
        code = code_digest()
        result = child_dask(args.input, args.model, args.chunk_size, args.scratch, args.workers)
        print(json.dumps(result | {"code": code}))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    # a private copy of the model: `dvc repro` may rewrite models/ while this runs
    snapshot = WORK / "model"
    shutil.rmtree(snapshot, ignore_errors=True)
    shutil.copytree(args.model, snapshot)
    model_name, args.model = args.model, snapshot
    args.code = snapshot_code()
    sizes = sorted(args.sizes)
    largest = sizes[-1]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"partitions of {args.partition_rows:,} rows, chunks of {args.chunk_size:,}; model {model_name}"
    )
    folders = {n: input_folder(n, args.partition_rows, args.model, args.seed) for n in sizes}

    n_parts = len(partitions_of(folders[largest]))
    print(f"\n== {largest:,} rows in {n_parts} partitions: single machine vs Dask (LocalCluster on 127.0.0.1) ==")
    print(
        f"{'path':<17} {'start s':>7} {'job s':>7} {'job rows/s':>10} {'vs single':>9} {'with start':>10} "
        f"{'CPU s':>7} {'CPU us/row':>10}  peak RSS MB"
    )
    single = run_child("single", folders[largest], args)
    base = single["rows"] / single["seconds"]
    print(
        f"{'single machine':<17} {single['start_seconds']:>7.1f} {single['seconds']:>7.1f} {base:>10,.0f} "
        f"{'1.00x':>9} {single['rows'] / (single['seconds'] + single['start_seconds']):>10,.0f} "
        f"{single['cpu_seconds']:>7.1f} {1e6 * single['cpu_seconds'] / single['rows']:>10.1f}  "
        f"{single['peak_rss_mb']:,.0f} (the one process)"
    )
    growth: list[tuple[int, float]] = []
    dask_results = []
    for workers in (1, 2):
        result = run_child("dask", folders[largest], args, workers)
        dask_results.append(result)
        rate = result["rows"] / result["seconds"]
        with_start = result["rows"] / (result["seconds"] + result["start_seconds"])
        peaks = ", ".join(f"{p:,.0f}" for p in result["worker_peak_rss_mb"])
        flag = "  (a worker restarted: numbers suspect)" if result["restarted"] else ""
        print(
            f"{f'dask, {workers} worker(s)':<17} {result['start_seconds']:>7.1f} {result['seconds']:>7.1f} "
            f"{rate:>10,.0f} {rate / base:>8.2f}x {with_start:>10,.0f} "
            f"{result['cpu_seconds']:>7.1f} {1e6 * result['cpu_seconds'] / result['rows']:>10.1f}"
            f"  workers {peaks}; client+scheduler {result['client_peak_rss_mb']:,.0f}; "
            f"model loads {result['model_loads']}{flag}"
        )
        print(
            f"{'':<17} (start = cluster {result['cluster_seconds']:.1f} s + pipeline imports on the workers "
            f"{result['import_seconds']:.1f} s; CPU s of the client+scheduler {result['client_cpu_seconds']:.1f}; "
            f"a 1,000-row job afterwards: {result['tiny_seconds']:.1f} s)"
        )
        if workers == 2:
            growth.append((result["rows"], result["seconds"]))

    print("\n== Dask, 2 workers: job cost against input size (running cluster, imports done) ==")
    print(
        f"{'rows':>12} {'partitions':>10} {'job s':>7} {'rows/s':>9} {'max worker MB':>13} {'client MB':>9} "
        f"{'1k-row job s':>12} {'CPU us/row':>10}"
    )
    measured = {largest: result}
    for n in sizes[:-1]:
        measured[n] = run_child("dask", folders[n], args, 2)
        growth.append((measured[n]["rows"], measured[n]["seconds"]))
    for n in sizes:
        r = measured[n]
        print(
            f"{r['rows']:>12,} {r['partitions']:>10} {r['seconds']:>7.1f} {r['rows'] / r['seconds']:>9,.0f} "
            f"{max(r['worker_peak_rss_mb']):>13,.0f} {r['client_peak_rss_mb']:>9,.0f} {r['tiny_seconds']:>12.1f} "
            f"{1e6 * r['cpu_seconds'] / r['rows']:>10.1f}"
        )
    if len(growth) >= 2:
        fixed, throughput = fit_overhead(growth)
        print(f"fit: job seconds = {fixed:.1f} + rows / {throughput:,.0f}  (fixed per-job overhead + per-row cost)")
    codes = {r["code"] for r in [single, *dask_results, *measured.values()]}
    if len(codes) > 1:
        print(f"WARNING: pipeline/ changed while this ran ({len(codes)} versions): the runs are not comparable")
    else:
        print(f"pipeline/ source digest {codes.pop()} for every run; load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
