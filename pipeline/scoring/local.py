"""The local engine: ``trd score FILE -o OUTPUT`` scores one file in this process, chunk by chunk.

Bounded memory: one chunk is scored while the previous one is written (sinks.BackgroundWrites), so memory does
not grow with the number of rows (except 8 bytes per distinct patient id, to catch duplicates). The scores and
the rejects file are committed together or not at all (sinks.committed_outputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ExitCode, PipelineError
from pipeline.scoring.chunks import score_chunks
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.inputs import SUPPORTED_SUFFIXES, check_input_path, expected_rows
from pipeline.scoring.progress import progress_bar
from pipeline.scoring.sinks import (
    BackgroundWrites,
    TableSink,
    check_output_parent,
    check_output_paths,
    committed_outputs,
    rejects_path,
)


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    scored: int
    rejected: int
    seconds: float
    output: Path
    rejects: Path

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        return (
            f"{self.rows} rows: {self.scored} scored, {self.rejected} rejected, in {self.seconds:.1f} s "
            f"({self.rows_per_second:,.0f} rows/s) -> {self.output}"
            + (f" (rejects: {self.rejects})" if self.rejected else "")
        )


def score_file(
    input_path: Path,
    output_path: Path,
    ctx: ScoringContext,
    *,
    chunk_size: int,
    progress: bool = False,
) -> ScoreSummary:
    """Score ``input_path`` chunk by chunk into ``output_path`` and its rejects file, atomically."""
    started = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    check_input_path(input_path)
    reject_file = rejects_path(output_path)
    check_output_paths(input_path, output_path, reject_file)
    kind = output_path.suffix.lower()
    if kind not in SUPPORTED_SUFFIXES:
        raise PipelineError(
            f"unsupported output type '{output_path.suffix}'", file=output_path, exit_code=ExitCode.USAGE,
            hint="name the output .csv or .parquet",
        )  # fmt: skip
    check_output_parent(output_path)
    rows = scored = rejected = 0
    total, estimated = expected_rows(input_path) if progress else (None, False)
    with (
        committed_outputs(output_path, reject_file) as (out_tmp, rej_tmp),
        progress_bar(progress, total, estimated=estimated) as advance,
        BackgroundWrites() as writes,  # exits first: writes end before the files are renamed
    ):
        sink, reject_sink = TableSink(out_tmp, kind, output_path), TableSink(rej_tmp, kind, reject_file)
        empty_scored = empty_rejects = None
        for n, out, rej in score_chunks(input_path, ctx, chunk_size):
            rows += n
            scored += len(out)
            rejected += len(rej)
            writes.submit([(target, part) for target, part in ((sink, out), (reject_sink, rej)) if len(part)])
            # copies: an empty slice would keep the whole chunk alive through the next one
            empty_scored, empty_rejects = out.iloc[:0].copy(), rej.iloc[:0].copy()
            advance(n)
            del out, rej  # one chunk in memory at a time: dropped before the next is read
        if rows == 0:
            empty = "has no rows" if input_path.suffix.lower() == ".parquet" else "has a header but no rows"
            raise PipelineError(
                f"the file {empty}", file=input_path,
                hint="a nightly export with no patients usually means the export failed; check it",
            )  # fmt: skip
        writes.wait()
        sink.close(empty_scored)
        reject_sink.close(empty_rejects)
        if scored + rejected != rows:  # pragma: no cover (score_frame checks each chunk)
            raise PipelineError("row count mismatch", exit_code=ExitCode.INTERNAL)
    return ScoreSummary(rows, scored, rejected, time.perf_counter() - started, output_path, reject_file)
