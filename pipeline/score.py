"""Batch scoring (``trd score``) and input checking (``trd validate``) for clinic exports.

The input goes through exactly the code the pipeline trains with: the source adapter's renaming, the shared
harmonisation (codes, units, scales, ranges: pipeline/harmonise.py) and the shared feature builder
(pipeline/features.py); the model is the hash-checked, pickle-free bundle (pipeline/model.py) and the
explanations come from pipeline/contributions.py.

Guarantees:

* nothing is lost: every input row is either scored or written to the rejects file with its row number,
  patient id, reason code and message; ``rows in == scored + rejected`` is checked before anything is kept;
* bounded memory: the file is read and scored in chunks (Arrow record batches), so memory does not grow with
  the number of rows (except 8 bytes per distinct patient id, to catch duplicates);
* nothing partial: outputs are written to temporary files beside the destination and renamed into place only
  when the whole input has been scored, both or neither (pipeline.io.atomic_paths); an interrupted run (Ctrl-C,
  SIGTERM) leaves the destination untouched, and what a killed one leaves is removed by the next run, under
  the lock that stops a second run into the same output (pipeline.io.output_lock);
* safe to open: CSV outputs neutralise spreadsheet formulas (pipeline.io.neutralise_formulas); input errors
  name the row and column, never the row's content.

Duplicated patient ids: the first row of a patient is scored and later rows are rejected
(``duplicate_record``): a streaming scorer cannot look ahead to pick the most complete record, which the clean
stage does for training data.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ExitCode, PipelineError
from pipeline.features import build_features, insufficient_data, outside_training_range
from pipeline.harmonise import HarmoniseRules, harmonise, rules_from_tabular_spec
from pipeline.io import atomic_paths, check_replaceable, neutralise_formulas, output_lock, remove_stale_temps
from pipeline.model import Bundle, load_bundle, risk_band
from pipeline.paths import ProjectPaths
from pipeline.quarantine import Reason
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.spec import CategoricalMap, TabularSourceSpec, load_tabular_spec
from pipeline.sources.tabular import stage_tabular
from pipeline.tasks import DEFAULT_OUTCOME, Eligibility, ineligible_rows

log = logging.getLogger(__name__)

CANONICAL_FORMAT = "canonical"
SUPPORTED_SUFFIXES = (".csv", ".parquet")
REJECT_COLUMNS = ("source_row", "patient_id", "reason_code", "column", "value", "message")
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
BOOLEAN_CODES = {"true": ["1", "yes", "y", "true", "t"], "false": ["0", "no", "n", "false", "f"]}


# --------------------------------------------------------------------------------------------------------------
# input formats
# --------------------------------------------------------------------------------------------------------------


def canonical_format(contract: CohortContract) -> TabularSourceSpec:
    """The default input contract: canonical column names, units and levels (configs/cohort_schema.yaml)."""
    predictors = contract.with_role("baseline_predictor", "early_predictor")
    numeric = {c.name: c.name for c in predictors if c.dtype in ("float", "int")}
    categorical = {
        c.name: CategoricalMap(canonical=c.name, codes=c.accepted_codes()) for c in predictors if c.dtype == "category"
    }
    categorical["site"] = CategoricalMap(canonical="site", passthrough=True)
    return TabularSourceSpec(
        name=CANONICAL_FORMAT,
        kind="tabular_export",
        description="Canonical cohort columns (configs/cohort_schema.yaml).",
        files={},
        id_column="patient_id",
        duplicate_order=["file_order"],
        numeric=numeric,
        categorical=categorical,
        boolean_codes=BOOLEAN_CODES,
        boolean={c.name: c.name for c in predictors if c.dtype == "bool"},
    )


def input_format(name: str, paths: ProjectPaths | None, contract: CohortContract) -> TabularSourceSpec:
    if name == CANONICAL_FORMAT:
        return canonical_format(contract)
    if paths is None:
        raise PipelineError(f"input format '{name}' needs the project's configs/", hint="run inside the project")
    spec_file = paths.sources_dir / f"{name}.yaml"
    if not spec_file.is_file():
        known = [CANONICAL_FORMAT, *sorted(p.stem for p in paths.sources_dir.glob("*.yaml"))]
        raise PipelineError(
            f"unknown input format '{name}'", exit_code=ExitCode.USAGE, hint=f"use one of: {', '.join(known)}"
        )
    return load_tabular_spec(spec_file)


def required_columns(spec: TabularSourceSpec, needed: list[str]) -> list[str]:
    """Raw columns the input must have so that every needed canonical column can be filled."""
    canonical_to_raw: dict[str, str] = {}
    for raw, canonical in spec.raw_to_canonical().items():
        canonical_to_raw.setdefault(canonical, raw)
    required = [spec.id_column]
    for column in needed:
        if column in canonical_to_raw:
            required.append(canonical_to_raw[column])
        elif not (column == "bmi" and spec.body_size):
            required.append(column)  # reported as missing, under its canonical name
    scores = spec.depression_scores
    if scores and any(c in scores.columns.values() for c in needed):
        required.append(scores.scale_column)
    return list(dict.fromkeys(required))


# --------------------------------------------------------------------------------------------------------------
# streaming reads
# --------------------------------------------------------------------------------------------------------------


def _check_output_parent(output: Path) -> None:
    """The folder the output goes into must exist: creating it could hide a mistyped path."""
    if not output.parent.is_dir():
        raise PipelineError(
            "the output folder does not exist", file=output.parent, exit_code=ExitCode.USAGE,
            hint="create it first, or write the output elsewhere",
        )  # fmt: skip


def _check_input_path(path: Path) -> None:
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


# --------------------------------------------------------------------------------------------------------------
# scoring one chunk
# --------------------------------------------------------------------------------------------------------------


class SeenIds:
    """Patient ids already scored, as sorted 64-bit hashes in a few levels (amortised O(n log n), 8 B/id)."""

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if not self.levels:
            return found
        # in sorted order the binary searches move forward through each level: ~3x faster on millions of ids
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        hit = np.zeros(len(hashes), dtype=bool)
        for level in self.levels:
            pos = np.searchsorted(level, ordered)
            pos = np.minimum(pos, len(level) - 1)
            hit |= level[pos] == ordered
        found[order] = hit
        return found

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):  # a chunk whose rows were all rejected: an empty level would break contains()
            return
        self.levels.append(np.sort(hashes))
        while len(self.levels) > 1 and len(self.levels[-1]) >= len(self.levels[-2]) // 2:
            merged = np.concatenate([self.levels.pop(), self.levels.pop()])
            merged.sort(kind="stable")  # in place (radix sort for integers): no second copy at the peak
            self.levels.append(merged)


@dataclass
class ScoringContext:
    bundle: Bundle
    spec: TabularSourceSpec
    rules: HarmoniseRules
    contract: CohortContract
    scales: ScaleConversions
    source_file: str
    explain: bool = False
    top_k: int = 3
    model_version: str = "local"
    seen: SeenIds = field(default_factory=SeenIds)


def _insufficient(cohort: pd.DataFrame, kept_rows: np.ndarray, bundle: Bundle) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows below the model's scoring rule: their mask and their rejects (names of missing predictors, no values)."""
    found = insufficient_data(cohort, bundle.feature_spec.input_columns, bundle.scoring_rule)
    rejects = pd.DataFrame(
        {
            "source_row": kept_rows[found.mask],
            "patient_id": cohort.loc[found.mask, "patient_id"].to_numpy(),
            "reason_code": str(Reason.INSUFFICIENT_DATA),
            "column": found.columns,
            "value": None,
            "message": found.messages,
        }
    )
    return found.mask, rejects


def _ineligible(cohort: pd.DataFrame, kept_rows: np.ndarray, outside: Eligibility, bundle: Bundle) -> pd.DataFrame:
    """Rejects for rows outside the model's population (the rule's column named, never its value)."""
    population = bundle.info.population
    return pd.DataFrame(
        {
            "source_row": kept_rows[outside.mask],
            "patient_id": cohort.loc[outside.mask, "patient_id"].to_numpy(),
            "reason_code": str(Reason.INELIGIBLE),
            "column": population.column if population else None,
            "value": None,
            "message": outside.messages,
        }
    )


def score_frame(frame: pd.DataFrame, first_row: int, ctx: ScoringContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one chunk: (scored rows, rejected rows). Row numbers are 1-based data rows of the input."""
    needed = ctx.bundle.feature_spec.input_columns
    staged = stage_tabular(
        frame, ctx.spec, ctx.source_file, required=required_columns(ctx.spec, needed), first_row=first_row
    )
    result = harmonise(staged.rows, ctx.rules, ctx.contract, ctx.scales)
    rejects = result.quarantine
    cohort = result.cohort[list(dict.fromkeys(["patient_id", *needed]))]  # the columns used below
    kept_rows = result.source_rows

    # outside the task's population (tasks.<task>.population, stored in the model): not scored, with the reason
    outside = ineligible_rows(cohort, ctx.bundle.info.population)
    if outside.mask.any():
        rejects = pd.concat([rejects, _ineligible(cohort, kept_rows, outside, ctx.bundle)], ignore_index=True)
        cohort, kept_rows = cohort.loc[~outside.mask].reset_index(drop=True), kept_rows[~outside.mask]

    # too little data for a score: rejected before the duplicate check, so that the id stays free for a later,
    # complete row of the same patient ("an earlier row, which was scored")
    insufficient, too_little = _insufficient(cohort, kept_rows, ctx.bundle)
    if insufficient.any():
        rejects = pd.concat([rejects, too_little], ignore_index=True)
        cohort, kept_rows = cohort.loc[~insufficient].reset_index(drop=True), kept_rows[~insufficient]

    # duplicated ids: the first occurrence in the file is scored, later ones are rejected
    hashes = pd.util.hash_pandas_object(cohort["patient_id"], index=False).to_numpy()
    repeated = ctx.seen.contains(hashes) | pd.Series(hashes).duplicated().to_numpy()
    if repeated.any():
        duplicates = pd.DataFrame(
            {
                "source_row": kept_rows[repeated],
                "patient_id": cohort.loc[repeated, "patient_id"].to_numpy(),
                "reason_code": str(Reason.DUPLICATE),
                "column": "patient_id",
                "value": cohort.loc[repeated, "patient_id"].to_numpy(),
                "message": "this patient id appeared on an earlier row, which was scored",
            }
        )
        rejects = pd.concat([rejects, duplicates], ignore_index=True)
        cohort, kept_rows = cohort.loc[~repeated].reset_index(drop=True), kept_rows[~repeated]
    ctx.seen.add(hashes[~repeated])  # unique: repeats within the chunk are in `repeated`

    features = build_features(cohort, ctx.bundle.feature_spec)
    # a chunk whose rows were all rejected has nothing to predict (scikit-learn refuses an empty matrix)
    probability = ctx.bundle.predict(features) if len(features) else np.empty(0, dtype="float64")
    info = ctx.bundle.info
    scored = pd.DataFrame(
        {
            "patient_id": cohort["patient_id"].astype("string"),
            "source_row": np.asarray(kept_rows, dtype="int64"),
            "p_response": probability,
            "risk_band": risk_band(probability, info.risk_bands),
            # applicability: how much of the row was imputed, and which values the model never saw in training
            "n_missing_predictors": cohort[needed].isna().sum(axis=1).to_numpy(dtype="int64"),
            "outside_training_range": outside_training_range(features, info.training_ranges).array,
            "task": info.task,
            "model_name": info.registered_model_name,
            "model_version": ctx.model_version,
            "model_sha256": info.estimator_sha256,
            # what p_response and risk_band are of, in the task's words ("risk of a blood-pressure event")
            "outcome": (info.outcome or DEFAULT_OUTCOME).wording,
        }
    )
    if ctx.explain:
        from pipeline.contributions import Explained, explain, top_drivers  # noqa: PLC0415

        if len(features):
            explained = explain(ctx.bundle.estimator, features, ctx.bundle.feature_spec)
        else:
            columns = pd.DataFrame(columns=ctx.bundle.feature_spec.input_columns, dtype="float64")
            explained = Explained(values=columns, base_value=np.empty(0), margin=np.empty(0), method="")
        drivers = top_drivers(explained, cohort, ctx.bundle.feature_spec, ctx.top_k)
        scored = pd.concat([scored, drivers.reset_index(drop=True)], axis=1)
    rejects = rejects.reindex(columns=list(REJECT_COLUMNS)).astype(
        {"source_row": "int64", **{c: "string" for c in REJECT_COLUMNS if c != "source_row"}}
    )
    if len(scored) + len(rejects) != len(frame):
        raise PipelineError(
            f"rows {first_row}–{first_row + len(frame) - 1}: {len(frame)} in but {len(scored)} scored + "
            f"{len(rejects)} rejected",
            hint="a row was lost: this is a bug, please report it",
            exit_code=ExitCode.INTERNAL,
        )
    return scored, rejects.sort_values("source_row", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------


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


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:  # one of them does not exist
        return False


def _check_output_paths(input_path: Path, output: Path, reject_file: Path) -> None:
    """Refuse, before anything is written, outputs that would overwrite the input (usage), and outputs that are a
    folder or not a regular file, e.g. /dev/full or a FIFO (not writable: a rename would replace the node)."""
    for destination, what in ((output, "the output"), (reject_file, "the rejects file")):
        if _same_file(destination, input_path):
            raise PipelineError(
                f"{what} would overwrite the input", file=destination, exit_code=ExitCode.USAGE,
                hint="write the output to another file name",
            )  # fmt: skip
    for destination in (output, reject_file):
        check_replaceable(destination)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
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


def resolve_model(model: str | None, task: str, paths: ProjectPaths | None) -> tuple[Bundle, str]:
    """Load the model from a folder or a registry URI; return it with its registry version (or 'local')."""
    if model is None:
        if paths is None:
            raise PipelineError("no --model given and no project here", exit_code=ExitCode.USAGE)
        model = str(paths.models_dir / task)
    if model.startswith("models:/"):
        from pipeline import tracking  # noqa: PLC0415

        tracking.use_store(paths.root if paths else Path.cwd())
        bundle = load_bundle(model)
        return bundle, tracking.registry_version(model)
    return load_bundle(model), "local"


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
    _check_input_path(input_path)
    reject_file = rejects_path(output_path)
    _check_output_paths(input_path, output_path, reject_file)
    kind = output_path.suffix.lower()
    if kind not in SUPPORTED_SUFFIXES:
        raise PipelineError(
            f"unsupported output type '{output_path.suffix}'", file=output_path, exit_code=ExitCode.USAGE,
            hint="name the output .csv or .parquet",
        )  # fmt: skip
    _check_output_parent(output_path)
    rows = scored = rejected = 0
    with ExitStack() as stack:
        stack.enter_context(_terminate_as_interrupt())
        for destination in (output_path, reject_file):
            # a second run into the same files stops here (exit 7); under the lock, a killed run's temporary
            # files (.<name>.trd-<pid>-<random>.tmp) are removed
            stack.enter_context(output_lock(destination))
            remove_stale_temps(destination)
        # both renamed into place at the end, or neither
        out_tmp, rej_tmp = stack.enter_context(atomic_paths(output_path, reject_file))
        sink, reject_sink = TableSink(out_tmp, kind, output_path), TableSink(rej_tmp, kind, reject_file)
        bar = stack.enter_context(progress_bar(progress, count_rows(input_path)))
        writes = stack.enter_context(BackgroundWrites())  # exits first: writes end before the files are renamed
        empty_scored = empty_rejects = None
        for frame in iter_chunks(input_path, chunk_size):
            if empty_scored is None and frame.empty:
                continue
            out, rej = score_frame(frame, rows + 1, ctx)
            rows += len(frame)
            scored += len(out)
            rejected += len(rej)
            writes.submit([(target, part) for target, part in ((sink, out), (reject_sink, rej)) if len(part)])
            # copies: an empty slice would keep the whole chunk alive through the next one
            empty_scored, empty_rejects = out.iloc[:0].copy(), rej.iloc[:0].copy()
            bar(len(frame))
            del frame, out, rej  # free this chunk before the next is read: one chunk in memory at a time
            pa.default_memory_pool().release_unused()  # and hand Arrow's freed pages back to the system
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


@contextmanager
def progress_bar(enabled: bool, total: int | None, unit: str = "rows") -> Iterator[Callable[[int], None]]:
    """A rich progress bar counting ``unit`` (quiet when disabled); yields the function that advances it."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    columns = [TextColumn(f"scoring {unit}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(unit, total=total)
        yield lambda n: bar.advance(task, n)


def build_context(
    *, model: str | None, task: str, input_format_name: str, source_file: str, explain: bool, top_k: int
) -> ScoringContext:
    """Everything scoring needs, loaded once: the model (hash-checked), the input format, the rules."""
    try:
        paths: ProjectPaths | None = ProjectPaths.discover()
    except PipelineError:
        paths = None  # outside the project: the model and the canonical format are self-contained
    from importlib.resources import files  # noqa: PLC0415

    configs = paths.configs if paths else Path(str(files("pipeline"))).parent / "configs"
    contract = load_contract(configs / "cohort_schema.yaml")
    scales = load_scale_conversions(configs / "scale_conversions.yaml")
    bundle, version = resolve_model(model, task, paths)
    for note in bundle.legacy_notes():  # here, not in load_bundle: once per run, not once per Dask worker
        log.warning("model %s %s", bundle.info.registered_model_name, note)
    spec = input_format(input_format_name, paths, contract)
    rules = rules_from_tabular_spec(spec, constants={"cohort": "scoring_input"}, resolve_duplicates=False)
    return ScoringContext(
        bundle=bundle, spec=spec, rules=rules, contract=contract, scales=scales, source_file=source_file,
        explain=explain, top_k=top_k, model_version=version,
    )  # fmt: skip


def progress_wanted() -> bool:
    return sys.stderr.isatty()


# --------------------------------------------------------------------------------------------------------------
# validation without scoring
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ValidationReport:
    rows: int = 0
    valid: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the first few reject messages, with row numbers
    missing_by_column: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def validate_file(
    input_path: Path, ctx: ScoringContext, *, chunk_size: int, max_examples: int = 10
) -> ValidationReport:
    """Run the scorer's checks (columns, types, codes, ranges, duplicates) without predicting anything."""
    input_path = Path(input_path)
    _check_input_path(input_path)
    report = ValidationReport()
    needed = ctx.bundle.feature_spec.input_columns
    for frame in iter_chunks(input_path, chunk_size):
        staged = stage_tabular(
            frame, ctx.spec, ctx.source_file, required=required_columns(ctx.spec, needed), first_row=report.rows + 1
        )
        result = harmonise(staged.rows, ctx.rules, ctx.contract, ctx.scales)
        # the scorer's order: too little data first (those ids stay free), then duplicates
        insufficient, too_little = _insufficient(result.cohort, result.source_rows, ctx.bundle)
        cohort = result.cohort.loc[~insufficient]
        hashes = pd.util.hash_pandas_object(cohort["patient_id"], index=False).to_numpy()
        repeated = ctx.seen.contains(hashes) | pd.Series(hashes).duplicated().to_numpy()
        ctx.seen.add(np.unique(hashes[~repeated]))
        report.rows += len(frame)
        report.valid += int((~repeated).sum())
        rejects = pd.concat([result.quarantine, too_little], ignore_index=True).sort_values("source_row", kind="stable")
        for reason, count in rejects["reason_code"].value_counts().items():
            report.rejected_by_reason[str(reason)] = report.rejected_by_reason.get(str(reason), 0) + int(count)
        if repeated.any():
            key = str(Reason.DUPLICATE)
            report.rejected_by_reason[key] = report.rejected_by_reason.get(key, 0) + int(repeated.sum())
        for _, row in rejects.head(max_examples - len(report.examples)).iterrows():
            report.examples.append(f"row {row['source_row']}: {row['reason_code']}: {row['message']}")
        for column in needed:
            missing = int(cohort[column].isna().sum())
            report.missing_by_column[column] = report.missing_by_column.get(column, 0) + missing
    if report.rows == 0:
        raise PipelineError("the file has a header but no rows", file=input_path)
    return report
