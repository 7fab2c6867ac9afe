"""What runs on the Dask workers: the two passes over each partition.

First pass (:func:`score_partition`, one task per partition): the partition is read chunk by chunk and every
chunk goes through :func:`pipeline.scoring.chunks.score_chunks`, the local engine's own code (staging,
harmonisation, validation, features, prediction, explanations, per-chunk row conservation), so memory per
worker is bounded by the chunk size, not the partition size. A partition that cannot be read or does not match
the input contract is reported back, not raised, so that the other partitions are scored.

Second pass (:func:`finalize_partition`, only for partitions that need it): rows whose patient id was scored in
an earlier partition move from the scores to the rejects (``duplicate_record``, naming that partition), and every
file is cast to one schema. Tasks write whole files through temporary names renamed into place, so a retried
task rewrites identical bytes.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ExitCode, PipelineError
from pipeline.quarantine import Reason
from pipeline.scoring.chunks import score_chunks
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.dedupe import id_hashes
from pipeline.scoring.inputs import check_input_path
from pipeline.scoring.partitions import (
    REJECTS_DIR,
    SCORED_DIR,
    WORK_DIR,
    FinalizeJob,
    Partition,
    PartitionResult,
)
from pipeline.scoring.plugin import loaded_plugin
from pipeline.scoring.sinks import TableSink

# --------------------------------------------------------------------------------------------------------------
# first pass: score each partition
# --------------------------------------------------------------------------------------------------------------


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _publish(tmp: Path, final: Path) -> None:
    # no mkdir: if the staging folder was removed (job cancelled), a late task must fail, not recreate it
    os.replace(tmp, final)


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
    check_input_path(path)
    for n, scored, rejects in score_chunks(path, ctx, chunk_size):  # the local engine's own code, unchanged
        tally.rows += n
        tally.scored += len(scored)
        tally.rejected += len(rejects)
        out = _with_source_file(scored, partition.name, before="source_row")
        rej = _with_source_file(rejects, partition.name, before="source_row")
        for i, part in enumerate((out, rej)):
            if len(part):
                sinks[i].write(part)
            if tally.schemas[i] is None:
                tally.schemas[i] = _schema(part.iloc[:0])  # typed from an empty frame if nothing is written
        if len(out):
            tally.hashes.append(id_hashes(out["patient_id"]))
        del scored, rejects, out, rej  # one chunk in memory at a time
    return tally


def score_partition(partition: Partition, work_dir: str, plugin_name: str, chunk_size: int) -> PartitionResult:
    """Score one partition into ``work_dir``; an unreadable partition is reported, not raised."""
    worker, plugin = loaded_plugin(plugin_name)
    work = Path(work_dir)
    if not work.is_dir():
        raise PipelineError(
            f"worker {worker.address} cannot see the staging folder",
            file=work,
            exit_code=ExitCode.USAGE,
            hint="on a multi-node cluster, OUTPUT and INPUT must be on storage every worker mounts at the same path",
        )
    assert plugin.bundle is not None  # checked by loaded_plugin
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
