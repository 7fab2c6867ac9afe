"""Scale-out batch scoring on a Dask cluster: ``trd score INPUT -o OUTPUT --engine dask``.

INPUT is a file, a glob (quote it) or a folder of CSV/Parquet partitions; OUTPUT is a folder::

    OUTPUT/scored/part-00000.parquet   scored rows of input partition 0 (the first in sorted order), ...
    OUTPUT/rejects/part-00000.parquet  its rejected rows, with reasons (same columns as the single-machine rejects)
    OUTPUT/failed_partitions.csv       partitions that could not be read at all (header only when none; formulas
                                       neutralised as in the single-machine CSV output)
    OUTPUT/_manifest.json              per-partition row counts, the model's identity and hash, totals
    OUTPUT/_SUCCESS                    written last, for readers that prefer a marker to the atomic rename

``dask.dataframe.read_parquet(OUTPUT / "scored")`` (or pandas/pyarrow) reads the scored rows as one table.

One implementation
    Each partition is one Dask task (``distributed`` futures, pipeline/scoring/dask_tasks.py) that scores the
    partition chunk by chunk with :func:`pipeline.scoring.chunks.score_chunks`, the local engine's own code
    (staging, harmonisation, validation, features, prediction, explanations, per-chunk row conservation).
    Nothing about scoring is re-implemented here; this module only distributes partitions, reconciles duplicates
    across them and commits the result. Futures rather than
    ``dask.dataframe.map_partitions``: a partition yields two outputs (scores and rejects), a corrupt partition
    must not fail the job, and a task streams its partition chunk by chunk, so memory per worker is bounded by
    the chunk size, not the partition size.

Row numbering and partition order
    ``source_row`` is the 1-based data row within its partition and a ``source_file`` column names the
    partition; partitions are numbered in natural order of their paths (pipeline/scoring/partitions.py). Files
    are written with fixed Parquet settings, chunking depends only on the input, and the manifest holds no times
    or worker names, so the same input gives byte-identical output whatever the number of workers.

Duplicate patient ids
    Within a partition, the chunk scorer keeps the first row of a patient and rejects later ones, as the
    local engine does within a file. Across partitions, a second pass after scoring applies the same rule
    in (partition order, row order): the client collects the 64-bit hashes of the scored ids of each partition
    (8 bytes per scored row, the same hash the single-machine path keeps), finds ids already scored in an
    earlier partition, and Dask tasks move those rows from the partition's scores to its rejects
    (``duplicate_record``, naming the earlier partition). Only partitions with such duplicates are rewritten.
    Scoring a single file therefore gives exactly the single-machine output, plus the ``source_file`` column.

Unreadable partitions
    A partition that cannot be read or does not match the input contract (corrupt Parquet, bad UTF-8, missing
    columns, ...) is reported in ``failed_partitions.csv`` and the manifest with the single-machine path's
    message naming the file, and the other partitions are scored; the CLI then exits 5. Its rows are unknown, so
    they are outside ``rows in == scored + rejected``, which holds over every partition that was read. If
    every partition fails, nothing is written and the error is raised (exit 3), as for a single bad file. Model
    problems, lost rows and unreachable storage are not partition failures: they stop the job.

Nothing partial
    The local engine's commit policy (pipeline.scoring.sinks.committed_outputs): everything is written under a
    hidden staging folder beside OUTPUT (``.OUTPUT.trd-<pid>-<token>.tmp``: a folder left by a killed client is
    removed by the next run into OUTPUT, under the lock that also stops a second run into OUTPUT at once,
    exit 7); tasks write through temporary files renamed into place, so a retried task rewrites identical
    bytes. The first pass writes to ``_work/``; the second reads from there and writes ``scored/`` and
    ``rejects/``, so it too can be retried. When every count checks out, the manifest and ``_SUCCESS`` are
    written and, once the cluster is closed, the folder is renamed onto OUTPUT (a previous output is moved aside
    first, then deleted: a reader sees the old output, none, or the new one, never part of one). A failure,
    Ctrl-C or SIGTERM removes the staging folder and leaves OUTPUT as it was.

Worker failure
    A worker that dies mid-job is Dask's business: the scheduler reruns its running tasks and recomputes any
    finished result it held elsewhere. Retries are harmless because tasks write whole files by rename.

The model on the workers
    Loaded and hash-checked once per worker by a ``WorkerPlugin`` (pipeline/scoring/plugin.py). Workers need no
    access to the project, the model folder or the MLflow registry; they need the input and output paths (shared
    storage on a multi-node cluster; on a LocalCluster, the local disk).

Limits
    One task per file: a single large file is scored by one worker (split big exports into partitions). The
    client holds 8 bytes per scored row for the duplicate pass (80 MB for 10M rows). The commit is a POSIX
    directory rename: INPUT and OUTPUT must be on a local or shared POSIX filesystem, not an object store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster, as_completed

from pipeline.errors import ExitCode, PipelineError
from pipeline.io import write_csv
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.dask_tasks import finalize_partition, score_partition, unify
from pipeline.scoring.dedupe import duplicates_across_partitions
from pipeline.scoring.partitions import (
    FAILED_FILE,
    MANIFEST_FILE,
    REJECTS_DIR,
    SCORED_DIR,
    SUCCESS_FILE,
    WORK_DIR,
    FinalizeJob,
    Partition,
    PartitionResult,
    discover_partitions,
)
from pipeline.scoring.plugin import model_on_workers, plugin_for
from pipeline.scoring.progress import progress_bar
from pipeline.scoring.sinks import check_output_parent, committed_outputs

log = logging.getLogger(__name__)

SCHEDULER_TIMEOUT_S = 10  # connecting to --scheduler
WORKERS_TIMEOUT_S = 60  # a scheduler with no worker yet


@dataclass(frozen=True)
class DaskScoreSummary:
    rows: int
    scored: int
    rejected: int
    partitions: int
    failed: tuple[tuple[str, str], ...]  # (partition name, message)
    seconds: float
    output: Path
    workers_used: int  # distinct workers whose results were kept (a restarted worker counts anew)
    model_loads: int  # distinct model loads behind those results: one per worker, not one per partition

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        failed = f", {len(self.failed)} partition(s) unreadable" if self.failed else ""
        return (
            f"{self.rows} rows in {self.partitions} partition(s): {self.scored} scored, {self.rejected} rejected"
            f"{failed}, in {self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s) -> {self.output}"
        )


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the given scheduler, or of a LocalCluster on loopback with ``workers`` single-threaded workers."""
    # the scheduler and nannies of a LocalCluster log every start, stop and retry at INFO: keep them quiet
    # unless debug logging was asked for (trd -v)
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise PipelineError(
                f"cannot connect to the Dask scheduler at {scheduler} ({exc})", exit_code=ExitCode.USAGE,
                hint="check the address (tcp://host:8786) and that the scheduler is running",
            ) from None  # fmt: skip
        try:
            try:
                client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            except TimeoutError:
                raise PipelineError(
                    f"the Dask scheduler at {scheduler} has no workers", exit_code=ExitCode.USAGE,
                    hint="start workers with `dask worker " + scheduler + "`",
                ) from None  # fmt: skip
            yield client
        finally:
            client.close()
        return
    # one thread per worker process: scoring is CPU-bound pandas/NumPy code that holds the GIL much of the time,
    # and each worker then holds one partition's chunk at a time
    n_workers = workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _check_output(output: Path, source: str | Path, partitions: Sequence[Partition]) -> None:
    if output.suffix.lower() == ".csv":
        raise PipelineError(
            "with --engine dask the output is a folder of Parquet partitions", file=output, exit_code=ExitCode.USAGE,
            hint="name a folder, e.g. -o scores/",
        )  # fmt: skip
    check_output_parent(output)
    if output.exists() and not (output.is_dir() and (output / MANIFEST_FILE).is_file()):
        raise PipelineError(
            "the output exists and is not the output of an earlier `trd score --engine dask`", file=output,
            exit_code=ExitCode.USAGE, hint="give a new folder name (it is replaced only if it holds a _manifest.json)",
        )  # fmt: skip
    resolved = output.resolve()
    if any(resolved == Path(p.path).resolve() or resolved in Path(p.path).resolve().parents for p in partitions):
        raise PipelineError("the output would overwrite the input", file=output, exit_code=ExitCode.USAGE)
    if Path(source).is_dir() and Path(source).resolve() in resolved.parents:
        # the next run would read this output's partitions as input
        raise PipelineError(
            "the output folder is inside the input folder", file=output, exit_code=ExitCode.USAGE,
            hint="write the output beside the input, not in it",
        )  # fmt: skip


def _gather(client: Client, futures: list[Any], advance: Callable[[int], None]) -> list[Any]:
    """Results in submission order; the first task error cancels the rest and is raised."""
    by_key = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in as_completed(futures, loop=client.loop):
            results[by_key[future.key]] = future.result()
            advance(1)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def _file_rows(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def _plan_second_pass(
    staging: Path,
    partitions: Sequence[Partition],
    ok: Sequence[PartitionResult],
    duplicates: dict[int, tuple[np.ndarray, tuple[str, ...]]],
) -> list[FinalizeJob]:
    """Move partitions that need no change into place; return jobs for the others (duplicates, schema, empty)."""
    scored_schema = unify([r.scored_schema for r in ok if r.scored_schema is not None])
    rejects_schema = unify([r.rejects_schema for r in ok if r.rejects_schema is not None])
    work = staging / WORK_DIR
    jobs = []
    for r in ok:
        p = partitions[r.index]
        positions, earlier = duplicates.get(r.index, (np.empty(0, dtype=np.int64), ()))
        sources = (work / f"scored-{p.part}", work / f"rejects-{p.part}")
        unchanged = (
            not positions.size
            and all(f.exists() for f in sources)
            and r.scored_schema is not None
            and r.scored_schema.equals(scored_schema, check_metadata=False)
            and r.rejects_schema is not None
            and r.rejects_schema.equals(rejects_schema, check_metadata=False)
        )
        if unchanged:  # the usual case: a rename, no rewrite
            sources[0].rename(staging / SCORED_DIR / p.part)
            sources[1].rename(staging / REJECTS_DIR / p.part)
        else:
            jobs.append(FinalizeJob(p, str(staging), positions, earlier, scored_schema, rejects_schema))
    return jobs


def _check_counts(
    staging: Path,
    partitions: Sequence[Partition],
    results: Sequence[PartitionResult],
    duplicates: dict[int, tuple[np.ndarray, tuple[str, ...]]],
    moved: dict[int, int],
) -> list[dict[str, Any]]:
    """Check, from the files on disk, that every row read is in exactly one output; return the manifest entries."""
    entries = []
    for r in results:
        p = partitions[r.index]
        entry: dict[str, Any] = {"index": p.index, "source_file": p.name, "rows": r.rows, "error": r.error}
        if r.error is None:
            n_scored = _file_rows(staging / SCORED_DIR / p.part)
            n_rejected = _file_rows(staging / REJECTS_DIR / p.part)
            n_moved = len(duplicates[r.index][0]) if r.index in duplicates else 0
            if moved.get(r.index, 0) != n_moved or n_scored != r.scored - n_moved:
                raise PipelineError(
                    f"partition {p.name}: {n_moved} duplicate rows to move, {moved.get(r.index, 0)} moved",
                    hint="this is a bug, please report it", exit_code=ExitCode.INTERNAL,
                )  # fmt: skip
            if n_scored + n_rejected != r.rows:
                raise PipelineError(
                    f"partition {p.name}: {r.rows} rows in but {n_scored} scored + {n_rejected} rejected",
                    hint="a row was lost: this is a bug, please report it", exit_code=ExitCode.INTERNAL,
                )  # fmt: skip
            entry |= {
                "scored": n_scored,
                "rejected": n_rejected,
                "scored_file": f"{SCORED_DIR}/{p.part}",
                "rejects_file": f"{REJECTS_DIR}/{p.part}",
            }
        entries.append(entry)
    return entries


def _write_reports(staging: Path, ctx: ScoringContext, entries: list[dict[str, Any]]) -> dict[str, int]:
    failed = [e for e in entries if e["error"]]
    failed_table = pa.table(
        {
            "partition": pa.array([e["index"] for e in failed], pa.int64()),
            "source_file": pa.array([e["source_file"] for e in failed], pa.string()),
            "message": pa.array([e["error"] for e in failed], pa.string()),
        }
    )
    write_csv(failed_table, staging / FAILED_FILE)  # a file name like "=cmd.csv" is neutralised
    totals = {
        "rows": sum(e["rows"] for e in entries),
        "scored": sum(e.get("scored", 0) for e in entries),
        "rejected": sum(e.get("rejected", 0) for e in entries),
        "failed_partitions": len(failed),
    }
    info = ctx.bundle.info
    manifest = {
        "engine": "dask",
        "input_format": ctx.spec.name,
        "explain": ctx.explain,
        "model": {
            "name": info.registered_model_name,
            "version": ctx.model_version,
            "task": info.task,
            "sha256": info.estimator_sha256,
        },
        **totals,
        "partitions": entries,
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return totals


def score_dataset(
    source: str | Path,
    output: Path,
    ctx: ScoringContext,
    *,
    chunk_size: int,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> DaskScoreSummary:
    """Score every partition of ``source`` on Dask into the folder ``output``, atomically (module docstring)."""
    started = time.perf_counter()
    output = Path(output)
    partitions = discover_partitions(source)
    _check_output(output, source, partitions)
    names = {p.index: p.name for p in partitions}
    token = uuid.uuid4().hex[:12]  # this job's task keys
    # the staging folder is committed or removed after the cluster (and its writers) is gone
    with committed_outputs(output, folder=True) as (staging,):
        for folder in (staging / WORK_DIR, staging / SCORED_DIR, staging / REJECTS_DIR):
            folder.mkdir()
        with (
            dask_client(scheduler, workers) as client,
            model_on_workers(client, plugin_for(ctx)) as plugin_name,
            progress_bar(progress, len(partitions), unit="partitions") as advance,
        ):
            # first pass: one task per partition
            futures = client.map(
                score_partition, partitions, work_dir=str(staging / WORK_DIR), plugin_name=plugin_name,
                chunk_size=chunk_size, key=[f"trd-score-{token}-{p.index}" for p in partitions],
            )  # fmt: skip
            results: list[PartitionResult] = _gather(client, futures, advance)
            ok = [r for r in results if r.error is None]
            if not ok:
                shown = "\n".join(f"  {r.error}" for r in results[:5])
                raise PipelineError(f"no partition could be scored:\n{shown}", file=str(source))
            if sum(r.rows for r in ok) == 0:
                raise PipelineError(
                    "the input has a header but no rows", file=str(source),
                    hint="a nightly export with no patients usually means the export failed; check it",
                )  # fmt: skip

            # second pass: duplicates across partitions, one schema
            duplicates = duplicates_across_partitions(ok, names)
            jobs = _plan_second_pass(staging, partitions, ok, duplicates)
            keys = [f"trd-final-{token}-{j.partition.index}" for j in jobs]
            moved_rows = _gather(client, client.map(finalize_partition, jobs, key=keys), lambda n: None)
            moved = {j.partition.index: n for j, n in zip(jobs, moved_rows, strict=True)}

        # what is committed: checked counts, the reports, the marker
        entries = _check_counts(staging, partitions, results, duplicates, moved)
        shutil.rmtree(staging / WORK_DIR)
        totals = _write_reports(staging, ctx, entries)
        (staging / SUCCESS_FILE).write_bytes(b"")
    return DaskScoreSummary(
        rows=totals["rows"], scored=totals["scored"], rejected=totals["rejected"], partitions=len(partitions),
        failed=tuple((names[r.index], r.error) for r in results if r.error is not None),
        seconds=time.perf_counter() - started, output=output, workers_used=len({r.worker for r in results}),
        model_loads=len({r.load_id for r in results}),
    )  # fmt: skip
