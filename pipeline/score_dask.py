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
    Each partition is one Dask task (``distributed`` futures) that reads the partition in chunks with
    :func:`pipeline.score.iter_chunks` and passes every chunk to :func:`pipeline.score.score_frame`, the
    single-machine scorer's own per-chunk function (staging, harmonisation, validation, features, prediction,
    explanations, per-chunk row conservation). Nothing about scoring is re-implemented here; this module only
    distributes partitions, reconciles duplicates across them and commits the result. Futures rather than
    ``dask.dataframe.map_partitions``: a partition yields two outputs (scores and rejects), a corrupt partition
    must not fail the job, and a task streams its partition chunk by chunk, so memory per worker is bounded by
    the chunk size, not the partition size.

Row numbering
    ``source_row`` is the 1-based data row within its partition, as in the single-machine path, and a
    ``source_file`` column names the partition (its path relative to INPUT, or the file name for a single
    file). (source_file, source_row) identifies an input row; no task needs to know how many rows the earlier
    partitions hold, which would serialise the job (a CSV's row count is only known once it is read).

Partition order and determinism
    Partitions are sorted by relative path in natural order (``part.2`` before ``part.10``) and numbered; output
    partition ``part-<i>.parquet`` holds input partition *i* (zero-padded to at least 5 digits), whichever worker
    scored it and however often it was retried. Files are written with fixed Parquet settings, chunking depends
    only on the input, and the manifest holds no times or worker names, so the same input gives byte-identical
    output whatever the number of workers.

Duplicate patient ids
    Within a partition, :func:`score_frame` keeps the first row of a patient and rejects later ones, as the
    single-machine path does within a file. Across partitions, a second pass after scoring applies the same rule
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
    Everything is written under a hidden staging folder beside OUTPUT (``.OUTPUT.trd-<pid>-<token>.tmp``, the
    temporary-file pattern of pipeline.io: a folder left by a killed client is removed by the next run into
    OUTPUT, under the lock that also stops a second run into OUTPUT at once, exit 7); tasks write
    through temporary files renamed into place, so a retried task rewrites identical bytes. The first pass writes
    to ``_work/``; the second reads from there and writes ``scored/`` and ``rejects/``, so it too can be retried.
    When every count checks out, the manifest and ``_SUCCESS`` are written and the folder is renamed onto OUTPUT
    (a previous output is moved aside first, then deleted: a reader sees the old output, none, or the new one,
    never part of one). A failure, Ctrl-C or SIGTERM removes the staging folder and leaves OUTPUT as it was.

Worker failure
    A worker that dies mid-job is Dask's business: the scheduler reruns its running tasks and recomputes any
    finished result it held elsewhere. Retries are harmless because tasks write whole files by rename.

The model on the workers
    The client loads the model (hash-checked) and ships the bundle's artifact files to every worker in a
    ``WorkerPlugin``. The plugin's ``setup`` runs once per worker (also on a worker that joins or restarts
    during the job): it writes the files to the worker's local folder, loads them with
    :func:`pipeline.model.load_bundle` (so the estimator's SHA-256 is checked on that worker, and pickle files
    are refused there too) and checks that the hash is the one the client loaded. Tasks take the loaded bundle
    from the plugin, so the model is loaded once per worker, not once per partition. Workers need no access to
    the project, the model folder or the MLflow registry; they need the input and output paths (shared storage
    on a multi-node cluster; on a LocalCluster, the local disk).

Limits
    One task per file: a single large file is scored by one worker (split big exports into partitions). The
    client holds 8 bytes per scored row for the duplicate pass (80 MB for 10M rows). The commit is a POSIX
    directory rename: INPUT and OUTPUT must be on a local or shared POSIX filesystem, not an object store.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from pipeline.contract import CohortContract
from pipeline.errors import ExitCode, ModelError, PipelineError
from pipeline.harmonise import HarmoniseRules
from pipeline.io import output_lock, remove_stale_temps, replace_folder, temp_path, write_csv
from pipeline.model import Bundle, load_bundle
from pipeline.quarantine import Reason
from pipeline.scales import ScaleConversions
from pipeline.score import (
    SUPPORTED_SUFFIXES,
    ScoringContext,
    SeenIds,
    TableSink,
    _check_input_path,
    _check_output_parent,
    _terminate_as_interrupt,
    iter_chunks,
    progress_bar,
    score_frame,
)
from pipeline.sources.spec import TabularSourceSpec

log = logging.getLogger(__name__)

SCORED_DIR = "scored"
REJECTS_DIR = "rejects"
WORK_DIR = "_work"
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
FAILED_FILE = "failed_partitions.csv"
MIN_PART_DIGITS = 5
SCHEDULER_TIMEOUT_S = 10  # connecting to --scheduler
WORKERS_TIMEOUT_S = 60  # a scheduler with no worker yet
GLOB_CHARS = frozenset("*?[")


# --------------------------------------------------------------------------------------------------------------
# partitions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """One input file: its place in the sorted order, where it is, and the name its rows are reported under."""

    index: int
    path: str  # absolute; on a multi-node cluster, the same path must be readable on every worker
    name: str  # relative to INPUT (POSIX), or the file name for a single file: the rows' ``source_file``
    part: str  # output file name, e.g. part-00000.parquet


def _natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders embedded numbers numerically (part.2 before part.10); ties broken by the text."""
    pieces = re.split(r"(\d+)", name)
    # odd positions of re.split with a capturing group are the digit runs, so types never mix at one position
    return tuple(int(p) if i % 2 else p for i, p in enumerate(pieces)), name


def _is_hidden(relative: Path) -> bool:
    # Hadoop/Spark/Dask convention: _SUCCESS, _metadata, .staging folders are not data
    return any(part.startswith((".", "_")) for part in relative.parts)


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard: partition names are reported relative to it."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()


def discover_partitions(source: str | Path) -> list[Partition]:
    """The CSV/Parquet partitions of INPUT (a file, a folder searched recursively, or a glob), sorted."""
    text = str(source)
    path = Path(text)
    if path.is_file():
        _check_input_path(path)  # a single bad file fails at once, as in the single-machine path
        root, files = path.parent, [path]
    elif path.is_dir():
        root = path
        files = [
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not _is_hidden(p.relative_to(path))
        ]
    elif GLOB_CHARS & set(text):
        root = _glob_root(text)
        files = [
            Path(p)
            for p in glob.glob(text, recursive=True)  # pathlib's glob takes no absolute patterns
            if Path(p).is_file() and Path(p).suffix.lower() in SUPPORTED_SUFFIXES
        ]
    else:
        raise PipelineError(
            "input not found", file=text, hint="give a file, a folder of partitions, or a quoted glob ('in/*.parquet')"
        )
    if not files:
        raise PipelineError(
            "no .csv or .parquet partitions found", file=text, hint="check the folder or the glob pattern"
        )
    named = sorted(((Path(os.path.relpath(p, root)).as_posix(), p) for p in files), key=lambda x: _natural_key(x[0]))
    digits = max(MIN_PART_DIGITS, len(str(len(named) - 1)))
    return [
        Partition(index=i, path=str(p.absolute()), name=name, part=f"part-{i:0{digits}d}.parquet")
        for i, (name, p) in enumerate(named)
    ]


# --------------------------------------------------------------------------------------------------------------
# the model on every worker
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextTemplate:
    """A :class:`ScoringContext` without its model and per-file state: what the client ships to workers."""

    spec: TabularSourceSpec
    rules: HarmoniseRules
    contract: CohortContract
    scales: ScaleConversions
    explain: bool
    top_k: int
    model_version: str

    @classmethod
    def of(cls, ctx: ScoringContext) -> ContextTemplate:
        return cls(ctx.spec, ctx.rules, ctx.contract, ctx.scales, ctx.explain, ctx.top_k, ctx.model_version)

    def context(self, bundle: Bundle, source_file: str) -> ScoringContext:
        # a fresh SeenIds per partition: duplicates within a partition are found by score_frame, across
        # partitions by the second pass (see the module docstring)
        return ScoringContext(
            bundle=bundle, spec=self.spec, rules=self.rules, contract=self.contract, scales=self.scales,
            source_file=source_file, explain=self.explain, top_k=self.top_k, model_version=self.model_version,
        )  # fmt: skip


class ScoringWorkerPlugin(WorkerPlugin):
    """Loads and hash-checks the model once per worker; tasks read ``bundle`` from here."""

    def __init__(self, *, artifacts: dict[str, bytes], expected_sha256: str, template: ContextTemplate) -> None:
        self.artifacts = artifacts
        self.expected_sha256 = expected_sha256
        self.template = template
        self.bundle: Bundle | None = None
        self.load_id = ""
        self.folder: str | None = None

    def setup(self, worker: Any) -> None:
        folder = Path(tempfile.mkdtemp(prefix="trd-model-", dir=worker.local_directory))
        self.folder = str(folder)
        try:
            (folder / "artifacts").mkdir()
            for name, data in self.artifacts.items():
                (folder / "artifacts" / name).write_bytes(data)
            bundle = load_bundle(folder)  # checks the estimator's SHA-256 against model_info.json, here
            if bundle.info.estimator_sha256 != self.expected_sha256:
                raise ModelError(
                    f"worker {worker.address}: model hash {bundle.info.estimator_sha256[:12]}… is not the "
                    f"{self.expected_sha256[:12]}… the client loaded",
                    hint="the model changed during the job; run it again",
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.bundle = bundle
        self.load_id = uuid.uuid4().hex
        log.info("worker %s loaded model %s… (load %s)", worker.address, self.expected_sha256[:12], self.load_id)

    def teardown(self, worker: Any) -> None:
        self.bundle = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def plugin_for(ctx: ScoringContext) -> ScoringWorkerPlugin:
    """The plugin that carries ``ctx``'s model (its artifact files, as bytes) and settings to the workers."""
    artifacts_dir = ctx.bundle.path / "artifacts"
    artifacts = {p.name: p.read_bytes() for p in sorted(artifacts_dir.iterdir()) if p.is_file()}
    return ScoringWorkerPlugin(
        artifacts=artifacts, expected_sha256=ctx.bundle.info.estimator_sha256, template=ContextTemplate.of(ctx)
    )


@contextmanager
def model_on_workers(client: Client, plugin: ScoringWorkerPlugin) -> Iterator[str]:
    """Register ``plugin`` on every worker (raising the first worker's error) and yield its name."""
    name = f"trd-score-{plugin.expected_sha256[:12]}-{uuid.uuid4().hex[:8]}"
    try:
        client.register_plugin(plugin, name=name)
        yield name
    finally:
        with contextlib.suppress(Exception):  # the workers may already be gone (interrupt, cluster shutdown)
            client.unregister_worker_plugin(name)


def _loaded_plugin(name: str) -> tuple[Any, ScoringWorkerPlugin]:
    worker = get_worker()
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, ScoringWorkerPlugin) or plugin.bundle is None:
        raise ModelError(
            f"the model is not loaded on worker {worker.address}", hint="see the worker's log for the load error"
        )
    return worker, plugin


# --------------------------------------------------------------------------------------------------------------
# first pass: score each partition (runs on the workers)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionResult:
    """What a scored partition reports back to the client (small: 8 bytes per scored row)."""

    index: int
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    error: str | None = None
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))  # scored ids, in file order
    scored_schema: pa.Schema | None = None  # None: no chunk was read (an empty partition)
    rejects_schema: pa.Schema | None = None
    worker: str = ""
    load_id: str = ""


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _publish(tmp: Path, final: Path) -> None:
    # no mkdir: if the staging folder was removed (job cancelled), a late task must fail, not recreate it
    os.replace(tmp, final)


def id_hashes(patient_ids: pd.Series) -> np.ndarray:
    """64-bit hashes of patient ids, as the single-machine duplicate check computes them."""
    return pd.util.hash_pandas_object(patient_ids.astype("string"), index=False).to_numpy(dtype=np.uint64)


def _with_source_file(frame: pd.DataFrame, name: str, before: str) -> pd.DataFrame:
    """Add the partition's name as a column (in place: the frame is score_frame's own, fresh result)."""
    frame.insert(frame.columns.get_loc(before), "source_file", pd.array([name] * len(frame), dtype="string"))
    return frame


def _schema(frame: pd.DataFrame) -> pa.Schema:
    return pa.Schema.from_pandas(frame, preserve_index=False)


@dataclass
class _Tally:
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    hashes: list[np.ndarray] = field(default_factory=list)
    schemas: list[pa.Schema | None] = field(default_factory=lambda: [None, None])  # scored, rejects


def _score_into(
    partition: Partition, ctx: ScoringContext, sinks: tuple[TableSink, TableSink], chunk_size: int
) -> _Tally:
    tally = _Tally()
    path = Path(partition.path)
    _check_input_path(path)
    for frame in iter_chunks(path, chunk_size):
        if frame.empty:
            continue
        out, rej = score_frame(frame, tally.rows + 1, ctx)  # the single-machine scorer, unchanged
        tally.rows += len(frame)
        tally.scored += len(out)
        tally.rejected += len(rej)
        out = _with_source_file(out, partition.name, before="source_row")
        rej = _with_source_file(rej, partition.name, before="source_row")
        for i, part in enumerate((out, rej)):
            if len(part):
                sinks[i].write(part)
            if tally.schemas[i] is None:
                tally.schemas[i] = _schema(part.iloc[:0])  # typed from an empty frame if nothing is written
        if len(out):
            tally.hashes.append(id_hashes(out["patient_id"]))
    return tally


def score_partition(partition: Partition, work_dir: str, plugin_name: str, chunk_size: int) -> PartitionResult:
    """Score one partition into ``work_dir``; an unreadable partition is reported, not raised."""
    worker, plugin = _loaded_plugin(plugin_name)
    work = Path(work_dir)
    if not work.is_dir():
        raise PipelineError(
            f"worker {worker.address} cannot see the staging folder",
            file=work,
            exit_code=ExitCode.USAGE,
            hint="on a multi-node cluster, OUTPUT and INPUT must be on storage every worker mounts at the same path",
        )
    assert plugin.bundle is not None  # checked by _loaded_plugin
    ctx = plugin.template.context(plugin.bundle, partition.name)
    finals = (work / f"scored-{partition.part}", work / f"rejects-{partition.part}")
    tmps = (_tmp_beside(finals[0]), _tmp_beside(finals[1]))
    sinks = (TableSink(tmps[0], ".parquet"), TableSink(tmps[1], ".parquet"))
    try:
        try:
            tally = _score_into(partition, ctx, sinks, chunk_size)
        except PipelineError as exc:
            if exc.exit_code != ExitCode.INPUT:  # model, bug or configuration: stop the job
                raise
            reported = copy.copy(exc)
            reported.file = partition.name  # relative, so the report does not depend on where INPUT lives
            return PartitionResult(partition.index, error=str(reported), worker=worker.address, load_id=plugin.load_id)
        finally:
            for sink in sinks:
                if sink.writer is not None:
                    sink.writer.close()
        for i, sink in enumerate(sinks):
            if sink.writer is not None:
                tally.schemas[i] = sink.schema
                _publish(tmps[i], finals[i])
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return PartitionResult(
        partition.index, rows=tally.rows, scored=tally.scored, rejected=tally.rejected,
        hashes=np.concatenate(tally.hashes) if tally.hashes else np.empty(0, dtype=np.uint64),
        scored_schema=tally.schemas[0], rejects_schema=tally.schemas[1], worker=worker.address,
        load_id=plugin.load_id,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# second pass: duplicates across partitions, one schema for all partitions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalizeJob:
    """Move a partition's later-duplicate rows from its scores to its rejects, and/or cast it to the schema."""

    partition: Partition
    staging: str
    positions: np.ndarray  # row positions in the partition's scored file, ascending
    earlier: tuple[str, ...]  # for each position, the partition where the id was scored first
    scored_schema: pa.Schema
    rejects_schema: pa.Schema


def duplicates_across_partitions(
    results: Sequence[PartitionResult], names: dict[int, str]
) -> dict[int, tuple[np.ndarray, tuple[str, ...]]]:
    """Scored rows whose id was scored in an earlier partition (client side, ``results`` in partition order).

    Returns, for each partition that has any, their positions in its scored file and, for each, the name of the
    partition where the id was scored first.
    """
    seen = SeenIds()
    found: dict[int, tuple[np.ndarray, tuple[str, ...]]] = {}
    for k, result in enumerate(results):
        if not len(result.hashes):
            continue
        repeated = seen.contains(result.hashes)
        if repeated.any():
            positions = np.flatnonzero(repeated)
            pending = result.hashes[positions]
            first = np.full(len(pending), "", dtype=object)
            for earlier in results[:k]:  # rare path: name the partition where each id was scored
                hit = (first == "") & np.isin(pending, earlier.hashes)
                first[hit] = names[earlier.index]
            found[result.index] = (positions, tuple(first))
        seen.add(np.unique(result.hashes[~repeated]))
    return found


def unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """One schema for every output partition: a column that is all-null in one partition takes the others' type."""
    return pa.unify_schemas(list(schemas), promote_options="permissive")


def finalize_partition(job: FinalizeJob) -> int:
    """Write ``scored/`` and ``rejects/`` for one partition from its first-pass files; return rows moved."""
    staging, part = Path(job.staging), job.partition.part
    work = staging / WORK_DIR
    moved: list[pa.Table] = []

    scored_src, scored_dst = work / f"scored-{part}", staging / SCORED_DIR / part
    tmp = _tmp_beside(scored_dst)
    try:
        with pq.ParquetWriter(tmp, job.scored_schema, compression="zstd") as writer:
            if scored_src.exists():
                source = pq.ParquetFile(scored_src)
                offset = 0
                for group in range(source.num_row_groups):  # one row group at a time: bounded memory
                    table = source.read_row_group(group)
                    n = table.num_rows
                    local = job.positions[(job.positions >= offset) & (job.positions < offset + n)] - offset
                    if local.size:
                        moved.append(table.take(pa.array(local)).select(["source_file", "source_row", "patient_id"]))
                        keep = np.ones(n, dtype=bool)
                        keep[local] = False
                        table = table.filter(pa.array(keep))
                    if table.num_rows:
                        writer.write_table(table.cast(job.scored_schema))
                    offset += n
                source.close()
        _publish(tmp, scored_dst)
    finally:
        tmp.unlink(missing_ok=True)

    rejects_src, rejects_dst = work / f"rejects-{part}", staging / REJECTS_DIR / part
    tables = [pq.read_table(rejects_src).cast(job.rejects_schema)] if rejects_src.exists() else []
    if moved:
        ids = pa.concat_tables(moved)
        n = ids.num_rows
        patient = ids.column("patient_id").to_pylist()
        duplicates = {
            "source_file": ids.column("source_file").to_pylist(),
            "source_row": ids.column("source_row").to_pylist(),
            "patient_id": patient,
            "reason_code": [str(Reason.DUPLICATE)] * n,
            "column": ["patient_id"] * n,
            "value": patient,
            "message": [f"this patient id was scored earlier, in partition {e}" for e in job.earlier],
        }
        tables.append(pa.Table.from_pydict(duplicates, schema=job.rejects_schema))
    rejects = pa.concat_tables(tables) if tables else job.rejects_schema.empty_table()
    rejects = rejects.sort_by("source_row")  # stable; rows are rejected at most once, so there are no ties
    tmp = _tmp_beside(rejects_dst)
    try:
        pq.write_table(rejects, tmp, compression="zstd")
        _publish(tmp, rejects_dst)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(t.num_rows for t in moved)


# --------------------------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------------------------


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
    _check_output_parent(output)
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


def _remove(staging: Path) -> None:
    """Remove the staging folder; retry, in case a cancelled task on a remote worker was creating a file in it."""
    for _ in range(10):
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            return
        time.sleep(0.2)
    log.warning("could not remove the staging folder %s; delete it by hand", staging)


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
    token = uuid.uuid4().hex[:12]
    with ExitStack() as stack:
        stack.enter_context(_terminate_as_interrupt())
        stack.enter_context(output_lock(output))  # a second run into OUTPUT stops here (exit 7)
        remove_stale_temps(output)  # staging folders of killed runs
        staging = temp_path(output, token)
        for folder in (staging, staging / WORK_DIR, staging / SCORED_DIR, staging / REJECTS_DIR):
            folder.mkdir()
        # registered first, so it runs last: after the cluster (and its writers) is gone
        stack.callback(_remove, staging)
        client = stack.enter_context(dask_client(scheduler, workers))
        plugin_name = stack.enter_context(model_on_workers(client, plugin_for(ctx)))
        advance = stack.enter_context(progress_bar(progress, len(partitions), unit="partitions"))

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

        # commit
        entries = _check_counts(staging, partitions, results, duplicates, moved)
        shutil.rmtree(staging / WORK_DIR)
        totals = _write_reports(staging, ctx, entries)
        (staging / SUCCESS_FILE).write_bytes(b"")
        replace_folder(staging, output)  # the old output is moved aside, then deleted
    return DaskScoreSummary(
        rows=totals["rows"], scored=totals["scored"], rejected=totals["rejected"], partitions=len(partitions),
        failed=tuple((names[r.index], r.error) for r in results if r.error is not None),
        seconds=time.perf_counter() - started, output=output, workers_used=len({r.worker for r in results}),
        model_loads=len({r.load_id for r in results}),
    )  # fmt: skip
