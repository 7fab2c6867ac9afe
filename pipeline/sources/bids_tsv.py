"""Reading BIDS tabular files strictly, for the BIDS adapter (pipeline/sources/bids.py).

UTF-8, tab-separated, a header line, no quoting, the declared missing-value markers (``n/a``) and empty cells
meaning "missing", surrounding spaces ignored, blank lines skipped. An unreadable, empty or header-only file, a
wrong delimiter, a missing column or a row with the wrong number of fields stops the run with a
:class:`~pipeline.errors.PipelineError` naming the file, the data row (1-based, header excluded, the line number
in the message) and the column. Apart from the adapter because it knows nothing about participants or sessions:
it returns the rows of one file as text cells.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.missing import markers_with

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # no 'nan'/'inf', which float() accepts


@dataclass(frozen=True)
class Row:
    number: int  # 1-based data row (header excluded, blank lines skipped)
    line: int  # 1-based line in the file
    values: dict[str, str | None]


@dataclass(frozen=True)
class Table:
    file: str  # relative to the dataset folder, as recorded in source_file
    path: Path
    rows: list[Row]


def read_tsv(folder: Path, relative: str, required: list[str], missing: tuple[str, ...], source: str) -> Table:
    """Read one BIDS TSV strictly; every structural problem is a PipelineError naming file, row and column."""
    path = folder / relative
    fetch_hint = f"fetch the dataset again: trd fetch {source} (or dvc repro), then run again"
    if not path.is_file():
        raise PipelineError("file not found", file=path, hint=fetch_hint)
    try:
        # utf-8-sig: a byte-order mark would otherwise glue itself to the first column's name
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"not UTF-8 text (byte {exc.start})", file=path, hint="BIDS tables are UTF-8; re-fetch the file"
        ) from None
    except OSError as exc:
        raise PipelineError(f"cannot read the file ({exc.strerror})", file=path, hint=fetch_hint) from None
    if not text.strip():
        raise PipelineError("the file is empty", file=path, hint=fetch_hint)

    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header: list[str] | None = None
    rows: list[Row] = []
    markers = frozenset(markers_with(missing))  # the shared markers (pipeline/missing.py) and the source's own
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue  # blank line
        if header is None:
            header = [f.strip() for f in fields]
            _check_header(header, required, path)
            continue
        if len(fields) != len(header):
            raise PipelineError(
                f"has {len(fields)} tab-separated fields on line {reader.line_num}, the header has {len(header)}",
                file=path,
                row=len(rows) + 1,
                hint="every row needs one value per column; write n/a for a missing value",
            )
        values = {name: _cell(raw, markers) for name, raw in zip(header, fields, strict=True)}
        rows.append(Row(number=len(rows) + 1, line=reader.line_num, values=values))
    if not rows:
        raise PipelineError("has a header but no data rows", file=path, hint=fetch_hint)
    return Table(file=relative, path=path, rows=rows)


def _cell(raw: str, markers: frozenset[str]) -> str | None:
    value = raw.strip()
    return None if value.lower() in markers else value


def _check_header(header: list[str], required: list[str], path: Path) -> None:
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise PipelineError(f"the header repeats columns {repeated}", file=path, hint="column names must be unique")
    absent = [c for c in required if c not in header]
    if not absent:
        return
    if len(header) == 1:
        other = next((d for d in (",", ";", "|") if d in header[0]), None)
        looks = f" (it looks {'comma' if other == ',' else repr(other)}-separated)" if other else ""
        raise PipelineError(
            f"expected tab-separated values, but the header is a single column{looks}; "
            f"required columns {absent} are missing",
            file=path,
            row=0,
            hint="BIDS tables are TSV: separate columns with tabs",
        )
    raise PipelineError(
        f"required column(s) {absent} missing; the header has {header}",
        file=path,
        row=0,
        column=absent[0],
        hint="expected tab-separated values with these columns; check the file, or the adapter section of "
        "configs/sources/<source>.yaml if the release renamed them",
    )


def number(text: str | None) -> float | None:
    """Parse a decimal number; ``None`` stays missing. Raises ValueError for anything else."""
    if text is None:
        return None
    if not _NUMBER.fullmatch(text):
        raise ValueError(text)
    return float(text)
