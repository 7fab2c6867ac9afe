"""Where scores go: table writers, and the one commit policy of both engines (:func:`committed_outputs`).

Nothing partial: outputs are written to temporary files or a staging folder beside the destination and renamed
into place only when the whole input has been scored, all or none (pipeline.io.atomic_paths, replace_folder); an
interrupted run (Ctrl-C, SIGTERM) leaves the destination untouched, and what a killed one leaves is removed by
the next run, under the lock that stops a second run into the same output (pipeline.io.output_lock). CSV outputs
neutralise spreadsheet formulas (pipeline.io.neutralise_formulas).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import ExitCode, PipelineError
from pipeline.io import (
    atomic_paths,
    check_replaceable,
    neutralise_formulas,
    output_lock,
    remove_stale_temps,
    replace_folder,
    temp_path,
)

log = logging.getLogger(__name__)


class TableSink:
    """Append frames to one CSV or Parquet file with a fixed schema (the first frame's).

    ``destination`` is the file the user asked for (``path`` may be its temporary name): errors name it. CSV
    cells that a spreadsheet would run as formulas are neutralised (pipeline.io.neutralise_formulas).
    """

    def __init__(self, path: Path, kind: str, destination: Path | None = None) -> None:
        self.path, self.kind, self.destination = path, kind, destination or path
        self.writer: Any = None
        self.schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False, schema=self.schema)
        if self.kind == ".csv":
            table = neutralise_formulas(table)
        try:
            if self.writer is None:
                self.schema = table.schema
                self.writer = (
                    pq.ParquetWriter(self.path, self.schema, compression="zstd")
                    if self.kind == ".parquet"
                    else pacsv.CSVWriter(self.path, self.schema)
                )
            self.writer.write_table(table)
        except (OSError, pa.ArrowException) as exc:
            raise PipelineError(
                f"the output cannot be written ({exc})", file=self.destination, exit_code=ExitCode.OUTPUT,
                hint="check the free space and permissions of the output folder, then run again",
            ) from None  # fmt: skip

    def close(self, empty: pd.DataFrame) -> None:
        if self.writer is None:  # no rows at all: still a valid file with a header/schema
            self.write(empty)
        self.writer.close()


class BackgroundWrites:
    """Writes each chunk's tables on one background thread while the next chunk is scored: Arrow releases the GIL
    while it converts, encodes, compresses and writes. At most one chunk is in flight, so memory stays bounded,
    and leaving the block waits for it, so nothing is written after the outputs are renamed or removed."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trd-write")
        self.pending: Future | None = None

    def submit(self, writes: list[tuple[TableSink, pd.DataFrame]]) -> None:
        self.wait()
        self.pending = self.pool.submit(_write_all, writes)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()  # an error of the writing thread is raised here

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, error_type: Any, *_: Any) -> None:
        try:
            if error_type is None:
                self.wait()
            elif self.pending is not None:  # already failing: let the write finish, its own error is secondary
                wait_for([self.pending])
        finally:
            self.pool.shutdown(wait=True)


def _write_all(writes: list[tuple[TableSink, pd.DataFrame]]) -> None:
    for sink, frame in writes:
        sink.write(frame)


def rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects{output.suffix}")


def same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:  # one of them does not exist
        return False


def check_output_paths(input_path: Path, output: Path, reject_file: Path) -> None:
    """Refuse, before anything is written, outputs that would overwrite the input (usage), and outputs that are a
    folder or not a regular file, e.g. /dev/full or a FIFO (not writable: a rename would replace the node)."""
    for destination, what in ((output, "the output"), (reject_file, "the rejects file")):
        if same_file(destination, input_path):
            raise PipelineError(
                f"{what} would overwrite the input", file=destination, exit_code=ExitCode.USAGE,
                hint="write the output to another file name",
            )  # fmt: skip
    for destination in (output, reject_file):
        check_replaceable(destination)


def check_output_parent(output: Path) -> None:
    """The folder the output goes into must exist: creating it could hide a mistyped path."""
    if not output.parent.is_dir():
        raise PipelineError(
            "the output folder does not exist", file=output.parent, exit_code=ExitCode.USAGE,
            hint="create it first, or write the output elsewhere",
        )  # fmt: skip


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that temporary files are removed on `kill` as on Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_folder(folder: Path) -> None:
    """Remove a staging folder; retry, in case a cancelled task on a remote worker was creating a file in it."""
    for _ in range(10):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.2)
    log.warning("could not remove the staging folder %s; delete it by hand", folder)


@contextmanager
def committed_outputs(*destinations: Path, folder: bool = False) -> Iterator[list[Path]]:
    """The commit policy of both engines: yield staging paths for ``destinations`` and, if the block succeeds,
    rename them all into place, or none.

    While the block runs, SIGTERM is an interrupt like Ctrl-C; each destination is locked (a second run into it
    stops at once, exit 7) and what killed runs left beside it (``.<name>.trd-<pid>-<random>.tmp``) is removed.
    Files (the local engine's scores and rejects) are staged as temporary files (pipeline.io.atomic_paths); a
    folder (the Dask engine's output, ``folder=True``, one destination) as an empty staging folder that replaces
    the destination whole (pipeline.io.replace_folder). Any failure removes what was staged and leaves every
    destination as it was.
    """
    with ExitStack() as stack:
        stack.enter_context(terminate_as_interrupt())
        for destination in destinations:
            stack.enter_context(output_lock(destination))
            remove_stale_temps(destination)
        if not folder:
            staged = stack.enter_context(atomic_paths(*destinations))
            yield staged
            return
        (destination,) = destinations
        staging = temp_path(destination)
        staging.mkdir()
        stack.callback(remove_folder, staging)  # nothing is left to remove after the commit
        yield [staging]
        replace_folder(staging, destination)  # the old output is moved aside, then deleted
