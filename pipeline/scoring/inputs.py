"""Reading clinic exports: checks on the input path, and the file in chunks of rows (CSV or Parquet).

Memory stays bounded: the file is read in Arrow record batches and handed on in frames of ``chunk_size`` rows,
whatever its size or the width of its rows. CSV values stay text until harmonisation. Every error is a
PipelineError naming the file, and for CSV the row and column, never the row's content (identifiers and clinical
values must not reach a log).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".csv", ".parquet")
CSV_BLOCK_SIZE = 1 << 19  # bytes Arrow parses at a time (more for a longer header or row, see _csv_batches)
CSV_MAX_BLOCK_SIZE = 1 << 26  # a row must fit in one block: rows longer than this are refused, memory stays bounded
# magic bytes of files that are not text but are sometimes renamed .csv: (start, what it is, what to do)
NOT_TEXT = (
    (b"\x1f\x8b", "a gzip archive", "decompress it (gunzip) and score the file inside"),
    (b"PK\x03\x04", "a zip archive or an Excel workbook", "unzip it, or save the sheet as CSV (UTF-8), and score that"),
    (b"PK\x05\x06", "an empty zip archive", "export the data again"),
    (b"BZh", "a bzip2 archive", "decompress it (bunzip2) and score the file inside"),
    (b"\xfd7zXZ\x00", "an xz archive", "decompress it (unxz) and score the file inside"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive", "decompress it (unzstd) and score the file inside"),
    (b"\xd0\xcf\x11\xe0", "an Excel 97-2003 workbook", "save the sheet as CSV (UTF-8) and score that"),
    (b"PAR1", "a Parquet file", "name it .parquet"),
)


def check_input_path(path: Path) -> None:
    if not path.exists():
        raise PipelineError("input file not found", file=path, hint="check the path")
    if path.is_dir():
        raise PipelineError("input is a folder, not a file", file=path)
    if not path.is_file():  # a FIFO or device: the file is read twice (header, then rows), which they cannot be
        raise PipelineError("input is not a regular file (a pipe or device)", file=path, hint="save it to a file first")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise PipelineError(f"unsupported input type '{path.suffix}'", file=path, hint="give a .csv or .parquet file")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except PermissionError:
        raise PipelineError("permission denied", file=path, hint="check the file's permissions") from None
    if not head:
        raise PipelineError("the file is empty", file=path, hint="export the data again, with a header row")
    for magic, what, hint in NOT_TEXT:
        if head.startswith(magic) and not (suffix == ".parquet" and magic == b"PAR1"):
            kind = "CSV text" if suffix == ".csv" else "a Parquet file"
            raise PipelineError(f"the file is {what}, not {kind}", file=path, hint=hint)


def count_rows(path: Path) -> int | None:
    """Rows in a Parquet file from its footer (CSV: unknown until read)."""
    if path.suffix.lower() == ".parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException):
            return None
    return None


def iter_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Yield the input in frames of about ``chunk_size`` rows; CSV values stay text until harmonisation.

    Errors are PipelineErrors naming the file, and for CSV the row and column, never the row's content.
    """
    if path.suffix.lower() == ".parquet":
        yield from _parquet_chunks(path, chunk_size)
        return
    names: list[str] = []
    try:
        names, header_bytes = _csv_header(path)
        # blocks stay small (see _csv_batches) and are cut here into chunks of exactly chunk_size rows, whatever
        # the width of the rows, as Parquet's are: a file is scored in the same pieces whatever its format
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in _csv_batches(path, names, header_bytes):
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows < chunk_size:
                continue
            table, start = pa.Table.from_batches(pending), 0
            while pending_rows - start >= chunk_size:
                yield table.slice(start, chunk_size).to_pandas()  # slices share the blocks' buffers: no copy
                start += chunk_size
            rest = table.slice(start)
            pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows:
            yield pa.Table.from_batches(pending).to_pandas()
    except pa.ArrowException as exc:
        raise _csv_error(str(exc), path, names) from None
    except OSError as exc:
        raise PipelineError(
            f"the file cannot be read ({exc.strerror or 'I/O error'})", file=path, hint=_reexport_hint(path)
        ) from None


def _parquet_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    try:
        # pre-buffering keeps every row group's raw column chunks read so far: memory would grow with the file
        parquet = pq.ParquetFile(path, pre_buffer=False)
        nested = [f for f in parquet.schema_arrow if pa.types.is_nested(f.type)]
        if nested:
            raise PipelineError(
                f"nested values ({nested[0].type}): a column must hold one plain value per row", file=path,
                column=nested[0].name, hint="flatten it into plain columns, or leave it out of the export",
            )  # fmt: skip
        for batch in parquet.iter_batches(batch_size=chunk_size):  # no row groups: no batches, "no rows" later
            yield batch.to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(f"the file cannot be read ({exc})", file=path, hint=_reexport_hint(path)) from None


def _csv_batches(path: Path, names: list[str], header_bytes: int) -> Iterator[pa.RecordBatch]:
    """The CSV's data rows as record batches, read serially: Arrow then numbers rows in its errors, and reads no
    block ahead, so memory is a few blocks. A row must fit in one block: on a longer row Arrow fails
    ("straddling object"), and the file is read again with blocks 4x as big, skipping the rows already
    delivered, up to CSV_MAX_BLOCK_SIZE."""
    block_size = max(CSV_BLOCK_SIZE, 1 << (header_bytes + 2).bit_length())  # the header must fit in the first
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True, null_values=[""]
    )
    delivered = 0
    while True:
        skip = delivered
        try:
            reader = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=block_size, use_threads=False), convert_options=convert
            )
            for batch in reader:
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                rows = batch.slice(skip) if skip else batch
                skip = 0
                delivered += rows.num_rows
                yield rows
            return
        except pa.ArrowInvalid as exc:
            if "straddling" not in str(exc):
                raise
            if block_size >= CSV_MAX_BLOCK_SIZE:
                raise PipelineError(
                    f"a row after row {delivered} is longer than {CSV_MAX_BLOCK_SIZE >> 20} MB", file=path,
                    hint="check the quoting and line endings, or export it again",
                ) from None  # fmt: skip
            block_size = min(block_size * 4, CSV_MAX_BLOCK_SIZE)
            log.debug("a row is longer than a block; reading again with %d-byte blocks", block_size)


_ARROW_ROW = re.compile(r"Row #(\d+)")
_ARROW_COLUMN = re.compile(r"In CSV column #(\d+)")
_ARROW_FIELDS = re.compile(r"Expected (\d+) columns, got (\d+)")


def _csv_error(text: str, path: Path, names: list[str]) -> PipelineError:
    """Arrow's CSV error as a PipelineError with the row and column, without the row's text, which Arrow quotes
    ("Expected 8 columns, got 3: P001,54,F") and which holds identifiers and clinical values."""
    found = _ARROW_ROW.search(text)
    row = int(found.group(1)) - 1 if found else None  # Arrow counts the header as row 1 and skips blank lines
    found = _ARROW_COLUMN.search(text)
    column = names[int(found.group(1))] if found and int(found.group(1)) < len(names) else None
    fields = _ARROW_FIELDS.search(text)
    if fields:
        expected, got = int(fields.group(1)), int(fields.group(2))
        if got < expected:
            message = f"the row has {got} fields where the header has {expected}: it ends before this column"
            column = names[got] if got < len(names) else None
        else:
            message = f"the row has {got} fields where the header has {expected}: extra fields after this column"
            column = names[-1] if names else None
        return PipelineError(
            message, file=path, row=row, column=column,
            hint="check the delimiter (comma) and quoting of this row, or export the file again",
        )  # fmt: skip
    if "UTF8" in text or "utf8" in text or "UTF-8" in text:
        return PipelineError("not UTF-8 text", file=path, row=row, column=column, hint="re-export the file as UTF-8")
    # other messages: keep Arrow's words, never what follows them (a quoted row or value)
    scrubbed = re.sub(r"^(CSV parse error: )?(In CSV column #\d+: )?(Row #\d+: )?", "", text).split(": ")[0]
    return PipelineError(
        f"the file cannot be parsed ({scrubbed[:200]})", file=path, row=row, column=column, hint=_reexport_hint(path)
    )


def _reexport_hint(path: Path) -> str:
    if path.suffix.lower() == ".parquet":
        return "the Parquet file may be truncated or corrupt; export it again"
    return "check the delimiter (comma), quoting and line endings, or export it again"


def _csv_header(path: Path) -> tuple[list[str], int]:
    """The column names and the header's length in bytes. The header ends at the first line break: \\n, \\r\\n or
    a lone \\r (old Mac and Excel exports); it is read in pieces, never more than half the largest block."""
    head = bytearray()
    end = None
    with path.open("rb") as handle:
        while end is None:
            piece = handle.read(1 << 16)
            if not piece:
                break
            found = re.search(rb"[\r\n]", piece)
            if found:
                end = len(head) + found.start()
            head += piece
            if end is None and len(head) > CSV_MAX_BLOCK_SIZE // 2:
                raise PipelineError(
                    f"the header row is longer than {CSV_MAX_BLOCK_SIZE >> 21} MB", file=path, row=0,
                    hint="check that this is a CSV file with line breaks, or export it again",
                )  # fmt: skip
    first = bytes(head[:end])
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"not UTF-8 text (header, byte {exc.start})", file=path, row=0, hint="re-export the file as UTF-8"
        ) from None
    if not line.strip():
        raise PipelineError("no header row", file=path, row=0, hint="the first line must name the columns")
    # Arrow's own parser, as for the rows (Python's csv module refuses fields over 128 kB)
    options = pacsv.ReadOptions(block_size=1 << (len(first) + 2).bit_length(), use_threads=False)
    try:
        names = pacsv.read_csv(pa.py_buffer(line.encode() + b"\n"), read_options=options).column_names
    except pa.ArrowException:
        raise PipelineError(
            "the header row cannot be parsed", file=path, row=0, hint="check its quoting, or export the file again"
        ) from None
    if names == [""]:
        raise PipelineError("no header row", file=path, row=0, hint="the first line must name the columns")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PipelineError(f"duplicated column names {duplicated}", file=path, row=0)
    return names, len(first)


ESTIMATE_SAMPLE = 1 << 20  # bytes of a CSV read to estimate its rows for the progress bar


def expected_rows(path: Path) -> tuple[int | None, bool]:
    """Rows in the file and whether that is an estimate: exact for Parquet (its footer); for CSV the line breaks
    of its first MiB scaled to its size (a progress bar's total, never a count that is checked); None if unknown."""
    if path.suffix.lower() == ".parquet":
        return count_rows(path), False
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            sample = handle.read(ESTIMATE_SAMPLE)
    except OSError:
        return None, True
    breaks = sample.count(b"\n") or sample.count(b"\r")  # a lone \r: old Mac and Excel exports
    if not breaks:
        return None, True
    return max(round(size * breaks / len(sample)) - 1, 0), True  # less the header
