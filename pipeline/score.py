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
  when the whole input has been scored; an interrupted run (Ctrl-C, SIGTERM) leaves the destination untouched.

Duplicated patient ids: the first row of a patient is scored and later rows are rejected
(``duplicate_record``): a streaming scorer cannot look ahead to pick the most complete record, which the clean
stage does for training data.
"""

from __future__ import annotations

import csv
import logging
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
from pipeline.features import build_features
from pipeline.harmonise import HarmoniseRules, harmonise, rules_from_tabular_spec
from pipeline.io import atomic_path
from pipeline.model import Bundle, load_bundle, risk_band
from pipeline.paths import ProjectPaths
from pipeline.quarantine import Reason
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.spec import CategoricalMap, TabularSourceSpec, load_tabular_spec
from pipeline.sources.tabular import stage_tabular

log = logging.getLogger(__name__)

CANONICAL_FORMAT = "canonical"
SUPPORTED_SUFFIXES = (".csv", ".parquet")
REJECT_COLUMNS = ("source_row", "patient_id", "reason_code", "column", "value", "message")
CSV_BLOCK_SIZE = 1 << 19  # bytes Arrow parses at a time; it reads up to 32 blocks ahead of the scorer
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
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise PipelineError(f"unsupported input type '{path.suffix}'", file=path, hint="give a .csv or .parquet file")
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except PermissionError:
        raise PipelineError("permission denied", file=path, hint="check the file's permissions") from None
    if path.stat().st_size == 0:
        raise PipelineError("the file is empty", file=path, hint="export the data again, with a header row")


def count_rows(path: Path) -> int | None:
    """Rows in a Parquet file from its footer (CSV: unknown until read)."""
    if path.suffix.lower() == ".parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException):
            return None
    return None


def iter_chunks(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Yield the input in frames of about ``chunk_size`` rows; CSV values stay text until harmonisation."""
    try:
        if path.suffix.lower() == ".parquet":
            # pre-buffering keeps every row group's raw column chunks read so far: memory would grow with the file
            parquet = pq.ParquetFile(path, pre_buffer=False)
            for batch in parquet.iter_batches(batch_size=chunk_size):
                yield batch.to_pandas()
            return
        names = _csv_header(path)
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True, null_values=[""]
            ),
        )
        # Arrow reads up to 32 blocks ahead, so blocks stay small and are gathered here into chunks of
        # chunk_size rows (give or take one block), whatever the width of the rows
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for batch in reader:
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= chunk_size:
                yield pa.Table.from_batches(pending).to_pandas()
                pending, pending_rows = [], 0
        if pending:
            yield pa.Table.from_batches(pending).to_pandas()
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "UTF8" in text or "utf8" in text or "UTF-8" in text:
            raise PipelineError(f"not UTF-8 text ({text})", file=path, hint="re-export the file as UTF-8") from None
        raise PipelineError(f"the file cannot be parsed ({text})", file=path, hint=_reexport_hint(path)) from None
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(f"the file cannot be read ({exc})", file=path, hint=_reexport_hint(path)) from None


def _reexport_hint(path: Path) -> str:
    if path.suffix.lower() == ".parquet":
        return "the Parquet file may be truncated or corrupt; export it again"
    return "check the delimiter (comma), quoting and line endings, or export it again"


def _csv_header(path: Path) -> list[str]:
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        line = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PipelineError(
            f"not UTF-8 text (header, byte {exc.start})", file=path, row=0, hint="re-export the file as UTF-8"
        ) from None
    names = next(csv.reader([line]), [])
    if not names or names == [""]:
        raise PipelineError("no header row", file=path, row=0, hint="the first line must name the columns")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PipelineError(f"duplicated column names {duplicated}", file=path, row=0)
    return names


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


def score_frame(frame: pd.DataFrame, first_row: int, ctx: ScoringContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one chunk: (scored rows, rejected rows). Row numbers are 1-based data rows of the input."""
    needed = ctx.bundle.feature_spec.input_columns
    staged = stage_tabular(
        frame, ctx.spec, ctx.source_file, required=required_columns(ctx.spec, needed), first_row=first_row
    )
    result = harmonise(staged.rows, ctx.rules, ctx.contract, ctx.scales)
    rejects = result.quarantine
    cohort = result.cohort[list(dict.fromkeys(["patient_id", *needed]))]  # the columns used below

    # duplicated ids: the first occurrence in the file is scored, later ones are rejected
    hashes = pd.util.hash_pandas_object(cohort["patient_id"], index=False).to_numpy()
    repeated = ctx.seen.contains(hashes) | pd.Series(hashes).duplicated().to_numpy()
    kept_rows = result.source_rows
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
            "task": info.task,
            "model_name": info.registered_model_name,
            "model_version": ctx.model_version,
            "model_sha256": info.estimator_sha256,
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

    ``destination`` is the file the user asked for (``path`` may be its temporary name): errors name it.
    """

    def __init__(self, path: Path, kind: str, destination: Path | None = None) -> None:
        self.path, self.kind, self.destination = path, kind, destination or path
        self.writer: Any = None
        self.schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False, schema=self.schema)
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
    kind = output_path.suffix.lower()
    if kind not in SUPPORTED_SUFFIXES:
        raise PipelineError(
            f"unsupported output type '{output_path.suffix}'", file=output_path, exit_code=ExitCode.USAGE,
            hint="name the output .csv or .parquet",
        )  # fmt: skip
    _check_output_parent(output_path)
    reject_file = rejects_path(output_path)
    rows = scored = rejected = 0
    with ExitStack() as stack:
        stack.enter_context(_terminate_as_interrupt())
        out_tmp = stack.enter_context(atomic_path(output_path))
        rej_tmp = stack.enter_context(atomic_path(reject_file))
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
            raise PipelineError(
                "the file has a header but no rows", file=input_path,
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
        hashes = pd.util.hash_pandas_object(result.cohort["patient_id"], index=False).to_numpy()
        repeated = ctx.seen.contains(hashes) | pd.Series(hashes).duplicated().to_numpy()
        ctx.seen.add(np.unique(hashes[~repeated]))
        report.rows += len(frame)
        report.valid += int((~repeated).sum())
        for reason, count in result.quarantine["reason_code"].value_counts().items():
            report.rejected_by_reason[str(reason)] = report.rejected_by_reason.get(str(reason), 0) + int(count)
        if repeated.any():
            key = str(Reason.DUPLICATE)
            report.rejected_by_reason[key] = report.rejected_by_reason.get(key, 0) + int(repeated.sum())
        for _, row in result.quarantine.head(max_examples - len(report.examples)).iterrows():
            report.examples.append(f"row {row['source_row']}: {row['reason_code']}: {row['message']}")
        for column in needed:
            missing = int(result.cohort[column].isna().sum())
            report.missing_by_column[column] = report.missing_by_column.get(column, 0) + missing
    if report.rows == 0:
        raise PipelineError("the file has a header but no rows", file=input_path)
    return report
