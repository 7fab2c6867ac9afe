"""Which input layout (``--format``) a file to score is in, when the user did not say.

The scorer reads either the canonical layout (configs/cohort_schema.yaml names) or a tabular source's raw
layout (configs/sources/<name>.yaml, e.g. the synthetic clinic export). A layout fits when the file's header
holds every column the model needs under that layout's names. Only the header is read; the scorer's own reader
still checks every row.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import ExitCode, PipelineError


def read_header(path: Path) -> set[str] | None:
    """Column names of a CSV or Parquet file with rows; None otherwise (the reader reports those cases)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        if path.suffix.lower() == ".parquet":
            metadata = pq.read_metadata(path)
            return set(metadata.schema.names) if metadata.num_rows else None
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            first, second = next(rows, None), next(rows, None)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError):
        return None
    # a file with no data rows is the reader's to report (it says so), not a layout question
    return {name.strip() for name in first} if first and second is not None else None


def choose_layout(
    header: set[str], required: Mapping[str, Sequence[str]], file: Path, requested: str | None = None
) -> str:
    """The layout to read ``file`` with: ``requested`` if its columns are there, else the first that fits.

    ``required`` maps each layout name to the raw columns it needs, canonical first. A requested layout whose
    columns are missing, or no fitting layout at all, is a PipelineError that says what is missing and which
    layouts fit (hence which --format to give).
    """
    missing = {name: [c for c in columns if c not in header] for name, columns in required.items()}
    fitting = [name for name, lacking in missing.items() if not lacking]
    if requested is not None and requested not in missing:
        raise PipelineError(
            f"unknown input format '{requested}'", exit_code=ExitCode.USAGE,
            hint=f"use --format with one of: {', '.join(required)} (layouts in configs/sources/)",
        )  # fmt: skip
    if requested is None and fitting:
        return fitting[0]
    if requested is not None and not missing[requested]:
        return requested
    shown = [requested] if requested else list(required)
    detail = "; ".join(f"{name} lacks {_listed(missing[name])}" for name in shown)
    if fitting:
        hint = f"the file fits --format {' or --format '.join(fitting)}"
    else:
        hint = f"give --format, one of: {', '.join(required)} (layouts in configs/sources/), and check the column names"
    what = f"for --format {requested}" if requested else "for every known input layout"
    raise PipelineError(f"missing required column(s) {what} ({detail})", file=file, hint=hint, exit_code=ExitCode.INPUT)


def _listed(columns: Sequence[str], limit: int = 6) -> str:
    more = f" and {len(columns) - limit} more" if len(columns) > limit else ""
    return ", ".join(columns[:limit]) + more
