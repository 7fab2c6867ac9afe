"""Atomic, deterministic file writes and readable-error reads.

Outputs are written to a temporary file in the destination folder and renamed into place, so an interrupted
run never leaves a partial file. Parquet is written with fixed settings so the same frame gives the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError


@contextlib.contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place only if the block succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give outputs the usual permissions (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(destination: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``destination``; only if the block succeeds does it replace
    ``destination`` whole, so a failure never leaves a partial or half-old folder."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.") as tmp:
        staging = Path(tmp) / destination.name
        staging.mkdir()
        yield staging
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)


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
