"""Atomic, deterministic file writes and readable-error reads.

Outputs are written to a temporary file in the destination folder and renamed into place, so an interrupted
run never leaves a partial file; several outputs are renamed together or not at all (atomic_paths). Temporary
names say whose they are (``.<name>.trd-<pid>-<random>.tmp``) so that the next run, holding the output's lock
(output_lock), removes those of a killed run (remove_stale_temps). Parquet is written with fixed settings so the
same frame gives the same bytes; CSV outputs neutralise spreadsheet formulas (neutralise_formulas).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import ExitCode, PipelineError

log = logging.getLogger(__name__)


TEMP_SUFFIX = ".tmp"
CSV_FLOAT_FORMAT = "%.6g"  # report tables and plot data: six significant digits are plenty and keep diffs readable


def temp_path(destination: Path, token: str | None = None) -> Path:
    """A hidden temporary name beside ``destination`` that says whose it is: ``.<name>.trd-<pid>-<token>.tmp``,
    so that what a killed run (``kill -9``) leaves behind is recognised and removed by the next run."""
    token = token or secrets.token_hex(4)
    return destination.with_name(f".{destination.name}.trd-{os.getpid()}-{token}{TEMP_SUFFIX}")


def _temp_prefix(destination: Path) -> str:
    return f".{destination.name}.trd-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process's own files are never stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(destination: Path) -> list[Path]:
    """Remove the temporary files and folders of ``destination`` left by runs whose process is gone.

    Call it while holding :func:`output_lock` on ``destination``: every writer holds that lock while its
    temporary files exist, so a leftover cannot belong to a live run (the pid check guards the other writers
    of this module, which do not lock). Returns what was removed.
    """
    pattern = re.compile(rf"\.{re.escape(destination.name)}\.trd-(\d+)-\w+{re.escape(TEMP_SUFFIX)}")
    removed = []
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
            log.info("removed %s, left by an interrupted run", path.name)
    return removed


@contextlib.contextmanager
def output_lock(destination: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``destination`` (``flock`` on a hidden ``.<name>.lock`` beside it) or fail at once.

    A second run writing the same output stops with exit 7 instead of racing the first. The kernel releases the
    lock when its process dies, so ``kill -9`` leaves no stale lock; the lock file is removed on release (the
    inode check below makes that safe against a run that opened it just before).
    """
    destination = Path(destination)
    lock_file = destination.with_name(f".{destination.name}.lock")
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise PipelineError(
                f"the output folder is not writable ({exc.strerror})", file=destination, exit_code=ExitCode.OUTPUT,
                hint="check the permissions of the output folder, or write the output elsewhere",
            ) from None  # fmt: skip
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PipelineError(
                "another run is writing this output right now", file=destination, exit_code=ExitCode.OUTPUT,
                hint="wait for it to finish, or write to another file",
            ) from None  # fmt: skip
        except OSError as exc:  # a filesystem without locks: go on unprotected rather than refuse to work
            log.warning("cannot lock %s (%s); concurrent runs into it are not detected", lock_file, exc.strerror)
            os.close(fd)
            fd = None
            break
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.stat(lock_file), os.fstat(fd)):
                break
        os.close(fd)  # the holder removed the file as we opened it: lock the one there now
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                lock_file.unlink()  # before the unlock: a run waiting on this inode then sees it gone and retries
            os.close(fd)


def check_replaceable(destination: Path) -> None:
    """Refuse a destination that a rename must not replace: a folder, or anything but a regular file (a device
    such as /dev/full, a FIFO, a socket). Run as root, a rename would replace the device node itself."""
    try:
        mode = os.stat(destination).st_mode  # follows a symlink: its target is what the user named
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PipelineError(
            f"the output cannot be checked ({exc.strerror})", file=destination, exit_code=ExitCode.OUTPUT
        ) from None
    if stat.S_ISDIR(mode):
        raise PipelineError(
            "the output is an existing folder", file=destination, exit_code=ExitCode.OUTPUT,
            hint="name a file inside it, e.g. -o folder/scores.csv",
        )  # fmt: skip
    if not stat.S_ISREG(mode):
        raise PipelineError(
            "the output is not a regular file (a device, pipe or socket)", file=destination,
            exit_code=ExitCode.OUTPUT, hint="name a regular file",
        )  # fmt: skip


def _output_error(exc: OSError, destination: Path) -> PipelineError:
    return PipelineError(
        f"the output cannot be written ({exc.strerror or exc})", file=destination, exit_code=ExitCode.OUTPUT,
        hint="check the free space and permissions of the output folder, then run again",
    )  # fmt: skip


def _replace_all(sources: list[Path], destinations: list[Path]) -> None:
    """Rename every source onto its destination, or none: if a rename fails after others succeeded, those are
    rolled back (the earlier file restored from a hard link kept until the end, or the new file removed)."""
    backups: list[Path | None] = []
    done: list[Path] = []
    try:
        for source, destination in zip(sources, destinations, strict=True):
            check_replaceable(destination)
            backup = None
            if len(destinations) > 1 and os.path.lexists(destination):
                backup = temp_path(destination)
                try:
                    os.link(destination, backup, follow_symlinks=False)  # no copy: a second name for the old bytes
                except OSError:
                    shutil.copy2(destination, backup, follow_symlinks=False)
            backups.append(backup)
            os.replace(source, destination)
            done.append(destination)
    except BaseException as exc:
        for destination, backup in reversed(list(zip(done, backups, strict=False))):
            try:
                if backup is not None:
                    os.replace(backup, destination)
                else:
                    destination.unlink()
            except OSError as undo:
                log.error("could not roll back %s (%s): check it by hand", destination, undo.strerror)
        if isinstance(exc, OSError):
            failed = next((d for d in destinations if d not in done), destinations[-1])
            raise _output_error(exc, failed) from None
        raise
    finally:
        for backup in backups:
            if backup is not None:
                backup.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(*destinations: Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``destinations``; if the block succeeds, rename them all into place, or
    none of them (see :func:`_replace_all`). A failure leaves every destination as it was."""
    targets = [Path(d) for d in destinations]
    tmps: list[Path] = []
    try:
        for destination in targets:
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp_name = tempfile.mkstemp(
                    prefix=_temp_prefix(destination), suffix=TEMP_SUFFIX, dir=destination.parent
                )
            except OSError as exc:
                raise _output_error(exc, destination) from None
            os.close(fd)
            tmps.append(Path(tmp_name))
        yield tmps
        # mkstemp creates 0600 files; give outputs the usual permissions (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        for tmp in tmps:
            tmp.chmod(0o666 & ~umask)
        _replace_all(tmps, targets)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place only if the block succeeds."""
    with atomic_paths(destination) as (tmp,):
        yield tmp


def replace_folder(staging: Path, destination: Path) -> None:
    """Rename the finished folder ``staging`` onto ``destination``; an earlier ``destination`` is moved aside
    first and deleted after, so a reader sees the old folder or the new one, never a mix, and a failure puts the
    old one back."""
    old = None
    try:
        if destination.exists():
            old = temp_path(destination)
            destination.rename(old)
        staging.rename(destination)
    except BaseException as exc:
        if old is not None and old.exists() and not destination.exists():
            old.rename(destination)
        if isinstance(exc, OSError):
            raise _output_error(exc, destination) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(destination: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``destination``; only if the block succeeds does it replace
    ``destination`` whole, so a failure never leaves a partial or half-old folder."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        dir=destination.parent, prefix=_temp_prefix(destination), suffix=TEMP_SUFFIX
    ) as tmp:
        staging = Path(tmp) / destination.name
        staging.mkdir()
        yield staging
        replace_folder(staging, destination)


# OWASP CSV injection: a spreadsheet runs a cell that starts with one of these as a formula, unless it is a number
_FORMULA_START = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _neutralise_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    starts = pc.match_substring_regex(values, _FORMULA_START)
    if not pc.any(starts).as_py():  # the usual case: one vectorised scan, no copy
        return values
    risky = pc.and_(starts, pc.invert(pc.match_substring_regex(values, _NUMBER)))
    return pc.if_else(risky, pc.utf8_replace_slice(values, start=0, stop=0, replacement="'"), values)


def neutralise_formulas(table: pa.Table) -> pa.Table:
    """The table with every text cell that a spreadsheet would run as a formula (starts with ``=``, ``+``, ``-``,
    ``@``, tab or carriage return, and is not a number) prefixed with ``'``. For CSV outputs only: Parquet keeps
    values as they are. Numbers and other column types are untouched."""
    for i, column_field in enumerate(table.schema):
        kind = column_field.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = _neutralise_strings(table.column(i))
        elif pa.types.is_dictionary(kind) and (
            pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)
        ):
            # categorical text: fix each chunk's dictionary, not every row
            column = pa.chunked_array(
                [
                    pa.DictionaryArray.from_arrays(c.indices, _neutralise_strings(c.dictionary))
                    for c in table.column(i).chunks
                ],
                type=kind,
            )
        else:
            continue
        table = table.set_column(i, column_field, column)
    return table


def write_csv(table: pa.Table, destination: Path) -> None:
    """Write ``table`` as CSV, formulas neutralised (:func:`neutralise_formulas`)."""
    pacsv.write_csv(neutralise_formulas(table), destination)


def write_parquet(frame: pd.DataFrame, destination: Path) -> None:
    """Write ``frame`` without its index, deterministically and atomically."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(destination) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)


def write_json(payload: Any, destination: Path) -> None:
    """Pretty, key-sorted JSON (stable diffs for DVC metrics), written atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def read_parquet(path: Path, what: str = "input") -> pd.DataFrame:
    """Read a Parquet file; a missing or corrupt file is a PipelineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} file not found", file=path, hint="run the stage that produces it (dvc repro)")
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(
            f"{what} is not a readable Parquet file ({exc})", file=path, hint="re-create it with dvc repro -f"
        ) from None


def write_frame_csv(frame: pd.DataFrame, path: Path) -> None:
    """A report table or plot data as CSV: six significant digits, LF line ends, no index (stable bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")


def json_ready(value: Any) -> Any:
    """Nested dict with NaN/inf as null and numpy scalars as Python numbers (write_json refuses NaN)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def flatten_metrics(nested: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"auroc": x}}`` -> ``{"test.auroc": x}``, dropping missing values (for MLflow)."""
    flat: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten_metrics(value, f"{name}.")
        elif value is not None and not isinstance(value, bool) and math.isfinite(float(value)):
            flat[name] = float(value)
    return flat
