"""The partitions of a Dask job: how INPUT is split into files, how the output folder is laid out, and what the
tasks on the workers report back.

Partitions are sorted by relative path in natural order (``part.2`` before ``part.10``) and numbered; output
partition ``part-<i>.parquet`` holds input partition *i* (zero-padded to at least 5 digits), whichever worker
scored it and however often it was retried. ``source_row`` is the 1-based data row within its partition and
``source_file`` names the partition (its path relative to INPUT, or the file name for a single file), so no task
needs to know how many rows the earlier partitions hold, which would serialise the job.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.scoring.inputs import SUPPORTED_SUFFIXES, check_input_path

# the output folder: scored/ and rejects/ hold one Parquet file per partition; _work/ is the first pass's, only
# ever inside the staging folder
SCORED_DIR = "scored"
REJECTS_DIR = "rejects"
WORK_DIR = "_work"
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
FAILED_FILE = "failed_partitions.csv"
MIN_PART_DIGITS = 5
GLOB_CHARS = frozenset("*?[")


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
        check_input_path(path)  # a single bad file fails at once, as in the single-machine path
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


@dataclass(frozen=True)
class FinalizeJob:
    """Move a partition's later-duplicate rows from its scores to its rejects, and/or cast it to the schema."""

    partition: Partition
    staging: str
    positions: np.ndarray  # row positions in the partition's scored file, ascending
    earlier: tuple[str, ...]  # for each position, the partition where the id was scored first
    scored_schema: pa.Schema
    rejects_schema: pa.Schema
