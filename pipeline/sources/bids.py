"""Adapter for BIDS tabular data: ``participants.tsv`` plus long ``phenotype/*.tsv`` tables.

A ``kind: bids_phenotype`` source file (configs/sources/ds005917.yaml; model :class:`BidsSourceSpec`, loaded by
:func:`load_bids_spec`) describes a pinned public release (its files, checksums and urls, used by ``trd fetch``)
and an ``adapter:`` section (:class:`BidsAdapter`). :func:`stage_bids` reads the release as fetched into
``data/external/<source>/`` and returns a :class:`BidsStaged` (a :class:`~pipeline.sources.Staged` with
phenotype bookkeeping); :func:`stage_source_folder` is the clean stage's entry point (staged rows, the
:class:`~pipeline.harmonise.HarmoniseRules` of the source, counts for the cleaning report). Codes stay as
written, numbers are parsed, and nothing is derived: the shared harmonisation normalises codes and derives
outcomes for every source alike.

Files are read strictly as BIDS tabular files: UTF-8, tab-separated, a header line, no quoting, the declared
missing-value markers (``n/a``) and empty cells meaning "missing", surrounding spaces ignored, blank lines
skipped. An unreadable, empty or header-only file, a wrong delimiter, a missing column or a row with the wrong
number of fields stops the run with a :class:`~pipeline.errors.PipelineError` naming the file, the data row
(1-based, header excluded, the line number in the message) and the column.

The primary table, ``participants.tsv`` (``rows_in`` counts its data rows; ``rows_in == len(rows) +
len(excluded)``):

* a missing participant id → excluded, ``Reason.MISSING_ID``;
* a duplicated participant id → error: BIDS requires unique ids, and measurements could not be attributed;
* an eligibility value (``group``) that the adapter does not declare, or a missing one → error. Not an
  ineligible row, because the eligibility column decides who is in the cohort: an undeclared value means the
  data dictionary changed (a new release, a typo such as ``mdd``), and excluding it quietly could drop patients;
* a declared value outside ``include`` (bipolar, healthy control) → excluded, ``Reason.INELIGIBLE``;
* otherwise one staged row in file order: ``patient_id``, the mapped columns, the measures, the constants,
  ``source_file`` (path relative to the dataset folder) and ``source_row``. A numeric column that does not parse
  in an eligible row is an error: the staged contract has no place for a value-level problem in the primary
  table (``excluded`` holds whole rows), and silently blanking a predictor would change the cohort's
  complete-case set without anyone seeing it.

A phenotype table (secondary; accounted for in :attr:`BidsStaged.phenotype`, never in ``excluded``, so the
primary invariant stays about participants). Every data row gets exactly one :class:`Disposition`
(``sum(dispositions) == rows_in`` is checked):

* ``missing_id`` (quarantined, ``Reason.MISSING_ID``) and ``orphan`` (participant not in participants.tsv;
  quarantined, ``Reason.ORPHAN_RECORD``);
* ``ineligible_participant``: the participant's own row was excluded; counted, nothing else to say;
* ``ignored_session``: a session the adapter declares as unused (day 10); counted;
* ``unknown_session``: a session id neither mapped nor ignored (or missing); counted and logged, not an error,
  so a later release that adds sessions still stages the known ones;
* ``used``: the row fills the participant's canonical columns for that session;
* ``duplicate``: a further row for the same (participant, session) whose mapped values equal the first row's
  → the first row is used, the copy is quarantined (``Reason.DUPLICATE``, naming the row that was kept);
* ``conflict``: rows for the same (participant, session) whose mapped values differ (a value against ``n/a``
  counts as a difference) → no row wins: every one is quarantined (``Reason.INCONSISTENT``) and the canonical
  values of that session stay missing. Picking one would be a silent guess about which rating is true.

A mapped score that is not a number (``"twelve"``) is a value-level problem: the row is still used, the value
is left missing and a ``Reason.WRONG_TYPE`` quarantine record keeps the raw text. One unreadable rating is a
missing measurement of one session, exactly like ``n/a``; the participant's other sessions stay valid.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import pandas as pd
from pydantic import (
    AfterValidator,
    Field,
    PositiveInt,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError, PipelineError
from pipeline.missing import markers_with
from pipeline.params import Frozen, format_errors
from pipeline.quarantine import Reason, quarantine_frame
from pipeline.sources import BOOKKEEPING_COLUMNS, Staged
from pipeline.sources.spec import CategoricalMap, load_yaml_spec

if TYPE_CHECKING:
    from pipeline.harmonise import HarmoniseRules
    from pipeline.paths import ProjectPaths

logger = logging.getLogger(__name__)

ID_COLUMN = "patient_id"
RESERVED_COLUMNS: frozenset[str] = frozenset({ID_COLUMN, *BOOKKEEPING_COLUMNS})


# --- the source file: configs/sources/<source>.yaml, kind: bids_phenotype ---------------------------------------


def _relative_posix(value: str) -> str:
    """A path inside the dataset folder: relative, '/'-separated, no '..' (it is joined onto a local folder)."""
    path = PurePosixPath(value)
    if not value or "\\" in value or path.is_absolute() or any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError(f"'{value}' must be a relative path inside the dataset, with '/' and without '..'")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_posix)]
CanonicalName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
RawName = Annotated[str, Field(min_length=1)]


class ParticipantsTable(Frozen):
    """The primary table: one row per participant."""

    path: RelativePath = "participants.tsv"
    id_column: RawName = "participant_id"
    numeric: dict[RawName, CanonicalName] = Field(default_factory=dict)  # parsed as numbers
    text: dict[RawName, CanonicalName] = Field(default_factory=dict)  # kept as written (codes)


class Eligibility(Frozen):
    """Who is in the cohort: ``column`` must hold one of ``levels``; rows in ``include`` are eligible."""

    column: RawName
    levels: dict[StrictStr, StrictStr] = Field(min_length=1)  # value -> meaning (the data dictionary)
    include: tuple[StrictStr, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _include_is_declared(self) -> Eligibility:
        undeclared = [v for v in self.include if v not in self.levels]
        if undeclared:
            raise ValueError(f"include {undeclared} is not among levels {list(self.levels)}")
        return self


class LongTable(Frozen):
    """A long table (one row per participant and session) whose scores become canonical columns."""

    path: RelativePath
    id_column: RawName = "participant_id"
    session_column: RawName = "session_id"
    measures: dict[RawName, dict[StrictStr, CanonicalName]] = Field(min_length=1)  # column -> {session -> canon}
    ignore_sessions: tuple[StrictStr, ...] = ()

    @property
    def sessions(self) -> dict[str, list[tuple[str, str]]]:
        """session -> [(raw measure column, canonical column)], in declaration order."""
        by_session: dict[str, list[tuple[str, str]]] = {}
        for column, sessions in self.measures.items():
            for session, canonical in sessions.items():
                by_session.setdefault(session, []).append((column, canonical))
        return by_session

    @property
    def targets(self) -> list[str]:
        """The canonical columns this table fills."""
        return [canonical for pairs in self.sessions.values() for _, canonical in pairs]

    @model_validator(mode="after")
    def _sessions_disjoint(self) -> LongTable:
        both = sorted(set(self.sessions) & set(self.ignore_sessions))
        if both:
            raise ValueError(f"sessions {both} are both mapped in 'measures' and listed in 'ignore_sessions'")
        return self


class BidsAdapter(Frozen):
    """How one BIDS dataset maps onto the staged frame (the ``adapter:`` section of a source file)."""

    # on top of the shared markers (pipeline/missing.py), which already hold BIDS' own "n/a"
    missing_values: tuple[Annotated[StrictStr, Field(min_length=1)], ...] = ()
    participants: ParticipantsTable
    eligibility: Eligibility
    phenotype: tuple[LongTable, ...] = ()
    constants: dict[CanonicalName, StrictStr | StrictInt | StrictFloat] = Field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        """Every canonical column the adapter fills, in staged-frame order (after ``patient_id``)."""
        names = [*self.participants.numeric.values(), *self.participants.text.values()]
        for table in self.phenotype:
            names += table.targets
        return [*names, *self.constants]

    @model_validator(mode="after")
    def _consistent(self) -> BidsAdapter:
        targets = self.targets
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"canonical columns filled more than once: {twice}")
        reserved = sorted(RESERVED_COLUMNS & set(targets))
        if reserved:
            raise ValueError(f"{reserved} are filled by the adapter itself and cannot be mapped")
        paths = [self.participants.path, *(t.path for t in self.phenotype)]
        if len(set(paths)) != len(paths):
            raise ValueError(f"each table must be a different file, got {paths}")
        return self


def _https(value: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError(f"'{value}' must be an https:// url")
    return value


HttpsUrl = Annotated[str, AfterValidator(_https)]


class RemoteFile(Frozen):
    """One file of the release: where it goes, what it must hash to, and where it is published."""

    path: RelativePath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: PositiveInt  # bytes; also bounds how much a download may read
    urls: tuple[HttpsUrl, ...] = Field(min_length=1)  # tried in order


class BidsSourceSpec(Frozen):
    """A ``kind: bids_phenotype`` source file: a pinned public BIDS release, its files, and its adapter.

    ``trd fetch`` reads the release part (pipeline/fetch.py), the clean stage the adapter and ``categorical``
    (the shape synthetic.yaml uses: raw codes per canonical level, read by the shared harmonisation).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    kind: Literal["bids_phenotype"]
    title: str = Field(min_length=1)
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    doi: str = Field(pattern=r"^10\.\d{4,9}/\S+$")
    licence: str = Field(min_length=1)
    registration: str | None = Field(default=None, pattern=r"^NCT\d{8}$")
    homepage: HttpsUrl
    citation: str = Field(min_length=1)
    files: tuple[RemoteFile, ...] = Field(min_length=1)
    adapter: BidsAdapter
    categorical: dict[str, CategoricalMap] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _files_consistent(self) -> BidsSourceSpec:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"files lists a path twice: {sorted({p for p in paths if paths.count(p) > 1})}")
        tables = [self.adapter.participants.path, *(t.path for t in self.adapter.phenotype)]
        unverified = [t for t in tables if t not in paths]
        if unverified:
            raise ValueError(f"adapter tables {unverified} are not in files (every file read must be checksummed)")
        return self


def load_bids_spec(path: Path) -> BidsSourceSpec:
    """Read and check a ``kind: bids_phenotype`` source file; any problem is a ConfigError naming it."""
    path = Path(path)
    try:
        spec = BidsSourceSpec.model_validate(load_yaml_spec(path))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, prefix=path.stem), file=path) from None
    if spec.name != path.stem:
        raise ConfigError(f"name '{spec.name}' differs from the file name '{path.stem}'", file=path)
    return spec


# --- what the adapter returns ------------------------------------------------------------------------------


class Disposition(StrEnum):
    """What became of one phenotype row (each row gets exactly one)."""

    USED = "used"
    DUPLICATE = "duplicate"  # quarantined: an identical copy of a used row
    CONFLICT = "conflict"  # quarantined: same participant and session, different values; none used
    ORPHAN = "orphan"  # quarantined: participant not in participants.tsv
    MISSING_ID = "missing_id"  # quarantined: no participant id
    INELIGIBLE_PARTICIPANT = "ineligible_participant"  # the participant's own row was excluded
    IGNORED_SESSION = "ignored_session"  # a session the adapter declares unused
    UNKNOWN_SESSION = "unknown_session"  # a session the adapter does not know (or none)


@dataclass(frozen=True)
class TableAccount:
    """Bookkeeping for one phenotype table: where each of its ``rows_in`` data rows went."""

    file: str  # path relative to the dataset folder
    rows_in: int
    dispositions: Mapping[str, int]  # every Disposition value -> rows; sums to rows_in
    quarantine: pd.DataFrame  # quarantine_frame(): set-aside rows and wrong-type values of this table


@dataclass(frozen=True)
class BidsStaged(Staged):
    """A :class:`Staged` plus the accounting of each phenotype table.

    ``rows``, ``excluded`` and ``rows_in`` are about participants.tsv only. ``phenotype`` quarantine records
    describe rows of other files (their own ``source_file``); a stage that writes them alongside ``excluded``
    must count them separately from the primary invariant.
    """

    phenotype: tuple[TableAccount, ...]


# --- reading BIDS TSV files --------------------------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")  # no 'nan'/'inf', which float() accepts


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based data row (header excluded, blank lines skipped)
    line: int  # 1-based line in the file
    values: dict[str, str | None]


@dataclass(frozen=True)
class _Table:
    file: str  # relative to the dataset folder, as recorded in source_file
    path: Path
    rows: list[_Row]


def _read_tsv(folder: Path, relative: str, required: list[str], missing: tuple[str, ...], source: str) -> _Table:
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
    rows: list[_Row] = []
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
        rows.append(_Row(number=len(rows) + 1, line=reader.line_num, values=values))
    if not rows:
        raise PipelineError("has a header but no data rows", file=path, hint=fetch_hint)
    return _Table(file=relative, path=path, rows=rows)


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


def _number(text: str | None) -> float | None:
    """Parse a decimal number; ``None`` stays missing. Raises ValueError for anything else."""
    if text is None:
        return None
    if not _NUMBER.fullmatch(text):
        raise ValueError(text)
    return float(text)


# --- the adapter -------------------------------------------------------------------------------------------


def stage_bids(folder: Path, adapter: BidsAdapter, source: str) -> BidsStaged:
    """Stage a BIDS dataset: one row per eligible participant, raw values under canonical names.

    ``folder`` is the dataset root (holding participants.tsv); ``source`` names the cohort in quarantine
    records. The rules are in this module's docstring.
    """
    folder = Path(folder)
    spec = adapter.participants
    table = _read_tsv(
        folder,
        spec.path,
        [spec.id_column, adapter.eligibility.column, *spec.numeric, *spec.text],
        adapter.missing_values,
        source,
    )
    records, excluded, known_ids = _stage_participants(table, adapter, source)
    eligible = {record[ID_COLUMN]: record for record in records}

    read = [spec.id_column, adapter.eligibility.column, *spec.numeric, *spec.text]
    unused = {table.file: tuple(c for c in table.rows[0].values if c not in read)}  # reported, never an error
    accounts = []
    for long_spec in adapter.phenotype:
        long_table = _read_tsv(
            folder,
            long_spec.path,
            [long_spec.id_column, long_spec.session_column, *long_spec.measures],
            adapter.missing_values,
            source,
        )
        values, account = _stage_long_table(long_table, long_spec, known_ids, set(eligible), source)
        read = [long_spec.id_column, long_spec.session_column, *long_spec.measures]
        unused[long_table.file] = tuple(c for c in long_table.rows[0].values if c not in read)
        accounts.append(account)
        for patient_id, columns in values.items():
            eligible[patient_id].update(columns)

    rows = _staged_frame(records, adapter)
    staged = BidsStaged(
        source=source,
        rows=rows,
        excluded=quarantine_frame(excluded),
        rows_in=len(table.rows),
        phenotype=tuple(accounts),
        unused_columns=unused,
    )
    if staged.rows_in != len(staged.rows) + len(staged.excluded):  # pragma: no cover - a bug, not bad input
        raise RuntimeError(f"{source}: participants not accounted for")
    _log_summary(staged, table.file)
    return staged


def harmonise_rules(spec: BidsSourceSpec) -> HarmoniseRules:
    """What the shared harmonisation needs to know about this source: its code lists, scores and constants.

    All scores are MADRS totals as recorded (no per-row scale column), so they are range-checked on MADRS.
    """
    from pipeline.harmonise import HarmoniseRules, code_lookup  # noqa: PLC0415 (keeps `trd fetch` free of pandera)

    categorical = {
        entry.canonical: code_lookup(entry.codes) for entry in spec.categorical.values() if entry.codes is not None
    }
    scores = tuple(canonical for table in spec.adapter.phenotype for canonical in table.targets)
    return HarmoniseRules(
        source=spec.name,
        categorical=categorical,
        passthrough=frozenset(entry.canonical for entry in spec.categorical.values() if entry.passthrough),
        score_columns=scores,
        constants=dict(spec.adapter.constants),
    )


def adapter_report(staged: BidsStaged) -> dict[str, Any]:
    """Counts for reports/cleaning.json: where every phenotype row went (no identifiers)."""
    return {
        "phenotype": {
            account.file: {
                "rows_in": account.rows_in,
                "dispositions": dict(account.dispositions),
                "values_wrong_type": _wrong_type_values(account),
            }
            for account in staged.phenotype
        }
    }


def _wrong_type_values(account: TableAccount) -> int:
    return int((account.quarantine["reason_code"] == Reason.WRONG_TYPE.value).sum())


def stage_source_folder(spec_path: Path, paths: ProjectPaths) -> tuple[BidsStaged, HarmoniseRules, dict[str, Any]]:
    """The clean stage's entry point: stage ``data/external/<name>/`` as described by ``spec_path``."""
    spec = load_bids_spec(spec_path)
    staged = stage_bids(paths.external_dir / spec.name, spec.adapter, spec.name)
    return staged, harmonise_rules(spec), adapter_report(staged)


def _stage_participants(
    table: _Table, adapter: BidsAdapter, source: str
) -> tuple[list[dict[str, object]], list[dict[str, object]], set[str]]:
    """Eligible participants as records, quarantine records for the others, and every known id."""
    spec, rule = adapter.participants, adapter.eligibility
    records: list[dict[str, object]] = []
    excluded: list[dict[str, object]] = []
    first_row: dict[str, int] = {}
    for row in table.rows:
        group = row.values[rule.column]
        if group not in rule.levels:
            shown = "missing" if group is None else f"'{group}'"
            raise PipelineError(
                f"{rule.column} is {shown}, not one of the declared levels {list(rule.levels)}",
                file=table.path,
                row=row.number,
                column=rule.column,
                hint=f"correct the file, or declare the value under adapter.eligibility.levels in "
                f"configs/sources/{source}.yaml (and under include: if those participants are eligible)",
            )
        patient_id = row.values[spec.id_column]
        base = {"source": source, "source_file": table.file, "source_row": row.number, "patient_id": patient_id}
        if patient_id is None:
            excluded.append(
                base
                | {
                    "reason_code": Reason.MISSING_ID.value,
                    "column": spec.id_column,
                    "value": None,
                    "message": "no participant id: the row cannot be linked to any measurement",
                }
            )
            continue
        if patient_id in first_row:
            raise PipelineError(
                f"participant id repeats data row {first_row[patient_id]}",
                file=table.path,
                row=row.number,
                column=spec.id_column,
                hint="BIDS participants.tsv holds one row per participant: remove or rename the duplicate",
            )
        first_row[patient_id] = row.number
        if group not in rule.include:
            excluded.append(
                base
                | {
                    "reason_code": Reason.INELIGIBLE.value,
                    "column": rule.column,
                    "value": group,
                    "message": f"{rule.column} '{group}' ({rule.levels[group]}) is outside the cohort "
                    f"(eligible: {', '.join(rule.include)})",
                }
            )
            continue
        record: dict[str, object] = {ID_COLUMN: patient_id}
        for raw, canonical in spec.numeric.items():
            try:
                record[canonical] = _number(row.values[raw])
            except ValueError:
                raise PipelineError(
                    f"'{row.values[raw]}' is not a number",
                    file=table.path,
                    row=row.number,
                    column=raw,
                    hint="write a decimal number (e.g. 27.5) or n/a if it is not known",
                ) from None
        for raw, canonical in spec.text.items():
            record[canonical] = row.values[raw]
        record["source_file"] = table.file
        record["source_row"] = row.number
        records.append(record)
    return records, excluded, set(first_row)


Candidates = dict[tuple[str, str], list[tuple[_Row, dict[str, float | None]]]]


@dataclass
class _Ledger:
    """Where the rows of one long table went, as it is read: disposition counts and quarantine records."""

    table: _Table
    id_column: str
    source: str
    counts: Counter[str] = field(default_factory=lambda: Counter({d.value: 0 for d in Disposition}))
    records: list[dict[str, object]] = field(default_factory=list)

    def set_aside(self, row: _Row, reason: Reason, column: str | None, value: str | None, message: str) -> None:
        self.records.append(
            {
                "source": self.source,
                "source_file": self.table.file,
                "source_row": row.number,
                "patient_id": row.values[self.id_column],
                "reason_code": reason.value,
                "column": column,
                "value": value,
                "message": message,
            }
        )


def _stage_long_table(
    table: _Table, spec: LongTable, known_ids: set[str], eligible_ids: set[str], source: str
) -> tuple[dict[str, dict[str, float | None]], TableAccount]:
    """Pivot a long table onto the eligible participants; account for every row (module docstring)."""
    ledger = _Ledger(table, spec.id_column, source)
    candidates = _sort_rows(spec, known_ids, eligible_ids, ledger)
    values = _resolve_repeats(candidates, spec, ledger)
    if sum(ledger.counts.values()) != len(table.rows):  # pragma: no cover - a bug, not bad input
        raise RuntimeError(f"{table.file}: rows not accounted for")
    account = TableAccount(
        file=table.file,
        rows_in=len(table.rows),
        dispositions=dict(ledger.counts),
        # file order reads best: the resolution of repeated rows comes after the first pass
        quarantine=quarantine_frame(sorted(ledger.records, key=lambda record: record["source_row"])),
    )
    return values, account


def _sort_rows(spec: LongTable, known_ids: set[str], eligible_ids: set[str], ledger: _Ledger) -> Candidates:
    """Give every row its disposition, except mapped ones: those become candidates, by (participant, session)."""
    sessions, ignored = spec.sessions, set(spec.ignore_sessions)
    unknown_sessions: Counter[str] = Counter()
    candidates: Candidates = {}
    for row in ledger.table.rows:
        patient_id = row.values[spec.id_column]
        session = row.values[spec.session_column]
        if patient_id is None:
            ledger.counts[Disposition.MISSING_ID] += 1
            ledger.set_aside(
                row, Reason.MISSING_ID, spec.id_column, None, "no participant id: the row cannot be linked"
            )
        elif patient_id not in known_ids:
            ledger.counts[Disposition.ORPHAN] += 1
            ledger.set_aside(
                row, Reason.ORPHAN_RECORD, spec.id_column, patient_id, "participant is not in participants.tsv"
            )
        elif patient_id not in eligible_ids:
            ledger.counts[Disposition.INELIGIBLE_PARTICIPANT] += 1
        elif session in ignored:
            ledger.counts[Disposition.IGNORED_SESSION] += 1
        elif session not in sessions:
            ledger.counts[Disposition.UNKNOWN_SESSION] += 1
            unknown_sessions[session or "(missing)"] += 1
        else:
            parsed: dict[str, float | None] = {}
            for column, canonical in sessions[session]:
                raw = row.values[column]
                try:
                    parsed[canonical] = _number(raw)
                except ValueError:
                    parsed[canonical] = None
                    message = f"'{raw}' is not a number; {canonical} for {session} is left missing"
                    ledger.set_aside(row, Reason.WRONG_TYPE, column, raw, message)
            candidates.setdefault((patient_id, session), []).append((row, parsed))
    if unknown_sessions:
        logger.warning(
            "%s: %d row(s) with session ids the adapter neither maps nor ignores: %s",
            ledger.table.file,
            sum(unknown_sessions.values()),
            dict(sorted(unknown_sessions.items())),
        )
    return candidates


def _resolve_repeats(candidates: Candidates, spec: LongTable, ledger: _Ledger) -> dict[str, dict[str, float | None]]:
    """Use one row per (participant, session): identical copies are duplicates, differing rows all conflict."""
    values: dict[str, dict[str, float | None]] = {}
    sessions = spec.sessions
    for (patient_id, session), found in candidates.items():
        first_row, first_values = found[0]
        columns = [column for column, _ in sessions[session]]
        if len({_fingerprint(row, columns) for row, _ in found}) == 1:
            ledger.counts[Disposition.USED] += 1
            values.setdefault(patient_id, {}).update(first_values)
            for row, _ in found[1:]:
                ledger.counts[Disposition.DUPLICATE] += 1
                message = f"{session} repeats data row {first_row.number} with the same values; that row is used"
                ledger.set_aside(row, Reason.DUPLICATE, spec.session_column, session, message)
            continue
        rows_text = ", ".join(str(row.number) for row, _ in found)
        differing = [c for c in columns if len({_fingerprint(row, [c]) for row, _ in found}) > 1]
        message = (
            f"{session} appears in data rows {rows_text} with different values; none is used and its "
            "canonical columns are left missing"
        )
        for row, _ in found:
            ledger.counts[Disposition.CONFLICT] += 1
            shown = ",".join(_text(row.values[c]) for c in differing)
            ledger.set_aside(row, Reason.INCONSISTENT, ",".join(differing), shown, message)
    return values


def _text(value: str | None) -> str:
    return "n/a" if value is None else value


def _fingerprint(row: _Row, columns: list[str]) -> tuple[float | str | None, ...]:
    """Mapped values as compared between repeated rows: numbers by value ('24' == '24.0'), other text as is."""
    fingerprint: list[float | str | None] = []
    for column in columns:
        raw = row.values[column]
        try:
            fingerprint.append(_number(raw))
        except ValueError:
            fingerprint.append(raw)
    return tuple(fingerprint)


def _staged_frame(records: list[dict[str, object]], adapter: BidsAdapter) -> pd.DataFrame:
    """The staged rows with fixed column order and nullable dtypes (strings for codes, floats for numbers)."""
    numeric = {*adapter.participants.numeric.values()}
    for table in adapter.phenotype:
        numeric |= set(table.targets)
    dtypes: dict[str, str] = {ID_COLUMN: "string"}
    for name in adapter.targets:
        if name in adapter.constants:
            dtypes[name] = _CONSTANT_DTYPES[type(adapter.constants[name])]
        else:
            dtypes[name] = "float64" if name in numeric else "string"
    dtypes |= {"source_file": "string", "source_row": "Int64"}
    # a participant without a row for some session simply lacks that key: it starts as missing here
    rows = [{**dict.fromkeys(dtypes), **record, **adapter.constants} for record in records]
    return pd.DataFrame(rows, columns=list(dtypes)).astype(dtypes)


_CONSTANT_DTYPES: dict[type, str] = {str: "string", int: "Int64", float: "float64"}


def _log_summary(staged: BidsStaged, primary: str) -> None:
    # counts only: identifiers never reach the log
    reasons = staged.excluded["reason_code"].value_counts().sort_index().to_dict()
    logger.info(
        "%s: %s has %d participants: %d staged, %d excluded %s",
        staged.source,
        primary,
        staged.rows_in,
        len(staged.rows),
        len(staged.excluded),
        reasons,
    )
    for account in staged.phenotype:
        shown = {k: v for k, v in account.dispositions.items() if v}
        logger.info(
            "%s: %s has %d rows: %s; %d non-numeric score(s)",
            staged.source,
            account.file,
            account.rows_in,
            shown,
            _wrong_type_values(account),
        )
