"""Adapter for tabular cohort exports (CSV or Parquet) described by a ``kind: tabular_export`` YAML.

It only reads, checks the columns and renames: raw codes, units and scales are left for the shared
harmonisation (pipeline/harmonise.py), so the clean stage and the scorer treat every value the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.quarantine import quarantine_frame
from pipeline.sources import Staged
from pipeline.sources.spec import TabularSourceSpec


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a frame, as text for CSV (types are checked later, per value)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError("file not found", file=path, hint="check the path")
    if path.is_dir():
        raise PipelineError("is a folder, not a file", file=path, hint="give the path of a .csv or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(
                path, sep="\t" if suffix == ".tsv" else ",", dtype="string", keep_default_na=False, na_values=[""]
            )
    except PermissionError:
        raise PipelineError("permission denied", file=path, hint="check the file's permissions") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"not UTF-8 text (byte {exc.start}: {exc.reason})", file=path, hint="re-export the file as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise PipelineError("the file is empty", file=path, hint="export the data again with a header row") from None
    except pd.errors.ParserError as exc:
        raise PipelineError(f"not a well-formed CSV ({exc})", file=path, hint="check delimiters and quotes") from None
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(
            f"not a readable Parquet file ({exc})", file=path, hint="the file may be truncated; export it again"
        ) from None
    raise PipelineError(f"unsupported file type '{suffix}'", file=path, hint="use .csv, .tsv or .parquet")


def stage_tabular(
    frame: pd.DataFrame,
    spec: TabularSourceSpec,
    source_file: str,
    *,
    required: Iterable[str] | None = None,
    first_row: int = 1,
) -> Staged:
    """Rename a raw export onto canonical names; ``required`` raw columns must be present (default: all).

    ``first_row`` is the 1-based data-row number of the frame's first row (chunked reads pass an offset).
    """
    rename = {**spec.raw_to_canonical(), **spec.helper_columns()}
    needed = list(rename) if required is None else list(required)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise PipelineError(
            f"missing required column(s): {', '.join(missing)}",
            file=source_file,
            column=missing[0],
            hint=f"the export must have the columns listed in configs/sources/{spec.name}.yaml",
        )
    present = {raw: canonical for raw, canonical in rename.items() if raw in frame.columns}
    rows = frame[list(present)].rename(columns=present).reset_index(drop=True)
    rows["source_file"] = source_file
    rows["source_row"] = pd.array(range(first_row, first_row + len(rows)), dtype="Int64")
    return Staged(source=spec.name, rows=rows, excluded=quarantine_frame(), rows_in=len(rows))
