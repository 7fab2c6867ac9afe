"""Adapter for tabular cohort exports (CSV or Parquet) described by a ``kind: tabular_export`` YAML.

It only reads, checks the columns and renames: raw codes, units and scales are left for the shared
harmonisation (pipeline/harmonise.py), so the clean stage and the scorer treat every value the same way.

A long export (``visits:`` in the YAML: one row per patient and visit) is pivoted by :func:`stage_long` to one
staged row per patient. Each visit value maps to a contract timing; a patient's columns come from the row of
the matching timing (every baseline column from the baseline row). Every data row gets exactly one
:class:`VisitDisposition` (their sum is checked against the rows read):

* ``missing_id`` (quarantined, ``missing_id``): no patient id, the row cannot be linked;
* ``unmapped_visit``: a visit value not in ``visits.timings`` (or none): counted by value, not used;
* ``used``: the row fills its patient's columns for its timing;
* ``duplicate`` (quarantined, ``duplicate_record``): a further row for the same patient and timing whose
  values equal the first one's; the first is used;
* ``conflict`` (quarantined, ``inconsistent``): rows for the same patient and timing whose values differ: none
  is used (picking one would be a silent guess) and that timing's columns stay missing;
* ``no_baseline``: a row of a patient without a usable baseline row. The patient is quarantined
  (``missing_baseline``, or ``inconsistent`` when its baseline rows conflict): a later visit is never promoted to
  baseline. A baseline row with an invalid value is quarantined by harmonisation with the whole patient record.

Patients are the staged unit: ``rows_in`` counts distinct patient ids, ``rows_in == len(rows) + len(excluded)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.missing import blank_missing, markers_with
from pipeline.quarantine import Reason, quarantine_frame
from pipeline.sources import Staged
from pipeline.sources.spec import BASELINE, TabularSourceSpec


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


def _layout_file(spec: TabularSourceSpec) -> str:
    # the scorer's canonical layout is built from the contract, not read from configs/sources/
    return "configs/cohort_schema.yaml" if spec.name == "canonical" else f"configs/sources/{spec.name}.yaml"


def _missing_columns_error(missing: list[str], source_file: str, spec: TabularSourceSpec) -> PipelineError:
    return PipelineError(
        f"missing required column(s): {', '.join(missing)}",
        file=source_file,
        column=missing[0],
        hint=f"the export must have the columns listed in {_layout_file(spec)}",
    )


def stage_tabular(
    frame: pd.DataFrame,
    spec: TabularSourceSpec,
    source_file: str,
    *,
    required: Iterable[str | None] | None = None,
    first_row: int = 1,
) -> Staged:
    """Rename a one-row-per-patient export onto canonical names; ``required`` raw columns must be present
    (default: all). The source's constants become columns of their own.

    ``first_row`` is the 1-based data-row number of the frame's first row (chunked reads pass an offset).
    """
    if spec.is_long:
        raise PipelineError(
            f"configs/sources/{spec.name}.yaml describes a long export (one row per patient and visit)",
            file=source_file,
            hint="the clean stage pivots it (dvc repro clean); scoring needs one row per patient",
        )
    rename = {**spec.raw_to_canonical(), **spec.helper_columns()}
    needed = [c for c in (list(rename) if required is None else list(required)) if c is not None]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise _missing_columns_error(missing, source_file, spec)
    present = {raw: canonical for raw, canonical in rename.items() if raw in frame.columns}
    rows = frame[list(present)].rename(columns=present).reset_index(drop=True)
    for name, value in spec.constants.items():
        rows[name] = value
    rows["source_file"] = source_file
    rows["source_row"] = pd.array(range(first_row, first_row + len(rows)), dtype="Int64")
    unused = tuple(str(c) for c in frame.columns if c not in rename)
    return Staged(
        source=spec.name, rows=rows, excluded=quarantine_frame(), rows_in=len(rows),
        unused_columns={source_file: unused},
    )  # fmt: skip


# --- long exports ---------------------------------------------------------------------------------------------


class VisitDisposition(StrEnum):
    """What became of one row of a long export (each row gets exactly one)."""

    USED = "used"
    UNMAPPED_VISIT = "unmapped_visit"  # counted: a visit value the config does not map to a timing
    DUPLICATE = "duplicate"  # quarantined: an identical copy of a used row
    CONFLICT = "conflict"  # quarantined: same patient and timing, different values; none used
    MISSING_ID = "missing_id"  # quarantined: no patient id
    NO_BASELINE = "no_baseline"  # the patient has no usable baseline row: the patient is quarantined


@dataclass(frozen=True)
class VisitAccount:
    """Where each of the ``rows_in`` data rows of a long export went."""

    file: str
    rows_in: int
    dispositions: Mapping[str, int]  # every VisitDisposition value -> rows; sums to rows_in
    unmapped_visits: Mapping[str, int]  # visit value as written -> rows
    quarantine: pd.DataFrame  # quarantine_frame(): the rows set aside (missing_id, duplicate, conflict)


@dataclass(frozen=True)
class LongStaged(Staged):
    """A :class:`Staged` of patients, plus the accounting of the visit rows they were built from."""

    visits: VisitAccount


_WHOLE = re.compile(r"^([+-]?\d+)\.0*$")


def _visit_key(value: object) -> str | None:
    """A visit value as compared: text, trimmed, case-insensitive; 4, 4.0 and '4.0' are the same visit."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().casefold()
    if (whole := _WHOLE.match(text)) is not None:
        text = str(int(whole.group(1)))
    return text or None


def _fingerprint(frame: pd.DataFrame, row: int, columns: list[str]) -> tuple[object, ...]:
    """A row's values as compared between repeats: numbers by value ('24' == '24.0'), text trimmed."""
    out: list[object] = []
    for column in columns:
        value = frame.iat[row, frame.columns.get_loc(column)]
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            out.append(None)
            continue
        text = str(value).strip()
        try:
            out.append(float(text))
        except ValueError:
            out.append(text)
    return tuple(out)


@dataclass
class _Ledger:
    """One disposition per data row of a long export, and the quarantine records of the rows set aside."""

    spec: TabularSourceSpec
    source_file: str
    ids: list[str | None]
    disposition: np.ndarray
    quarantined: list[dict[str, object]]

    def set_aside(self, row: int, disposition: VisitDisposition, reason: Reason, value: object, message: str) -> None:
        self.disposition[row] = disposition
        self.quarantined.append(
            {"source": self.spec.name, "source_file": self.source_file, "source_row": row + 1,
             "patient_id": self.ids[row], "reason_code": str(reason),
             "column": self.spec.id_column if reason == Reason.MISSING_ID else self.spec.visits.column,
             "value": None if value is None else str(value), "message": message}
        )  # fmt: skip


@dataclass(frozen=True)
class _VisitRows:
    """Each row's patient id, timing (None: unmapped) and visit value as written."""

    ids: list[str | None]
    timings: list[str | None]
    shown: list[str]


def _visit_rows(clean: pd.DataFrame, written: pd.Series, spec: TabularSourceSpec) -> _VisitRows:
    assert spec.visits is not None
    ids = clean[spec.id_column].astype("string").str.strip()
    keys = [_visit_key(v) for v in written.to_numpy(dtype=object)]
    lookup = {_visit_key(value): timing for value, timing in spec.visits.timings.items()}
    return _VisitRows(
        ids=list(ids.mask(ids == "").to_numpy(dtype=object, na_value=None)),
        timings=[None if k is None else lookup.get(k) for k in keys],
        shown=["(missing)" if k is None else str(v).strip() for k, v in zip(keys, written, strict=True)],
    )


def _group_rows(rows: _VisitRows, ledger: _Ledger) -> tuple[dict[str, list[int]], dict[tuple[str, str], list[int]]]:
    """Rows by patient (all of them) and by (patient, timing) (mapped ones); set aside rows without an id."""
    patients: dict[str, list[int]] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for row, (patient, timing) in enumerate(zip(rows.ids, rows.timings, strict=True)):
        if patient is None:
            message = "no patient identifier: the visit row cannot be linked to a patient"
            ledger.set_aside(row, VisitDisposition.MISSING_ID, Reason.MISSING_ID, None, message)
        elif timing is None:
            patients.setdefault(patient, []).append(row)
            ledger.disposition[row] = VisitDisposition.UNMAPPED_VISIT
        else:
            patients.setdefault(patient, []).append(row)
            groups.setdefault((patient, timing), []).append(row)
    return patients, groups


def _resolve_repeats(
    groups: dict[tuple[str, str], list[int]], clean: pd.DataFrame, compared: dict[str, list[str]],
    rows: _VisitRows, ledger: _Ledger,
) -> dict[tuple[str, str], int]:  # fmt: skip
    """The row used for each (patient, timing): identical repeats are duplicates, differing ones all conflict."""
    used: dict[tuple[str, str], int] = {}
    for (patient, timing), found in groups.items():
        if len({_fingerprint(clean, r, compared[timing]) for r in found}) == 1:
            used[(patient, timing)] = found[0]
            ledger.disposition[found[0]] = VisitDisposition.USED
            for row in found[1:]:
                message = f"visit '{rows.shown[row]}' ({timing}) repeats data row {found[0] + 1} with the same values; "
                ledger.set_aside(
                    row, VisitDisposition.DUPLICATE, Reason.DUPLICATE, rows.shown[row], message + "that row is used"
                )
            continue
        listed = ", ".join(str(r + 1) for r in found)
        fate = "the patient has no usable baseline" if timing == BASELINE else f"the {timing} columns stay missing"
        for row in found:
            message = f"visit '{rows.shown[row]}' ({timing}) appears in data rows {listed} with different values; "
            ledger.set_aside(
                row,
                VisitDisposition.CONFLICT,
                Reason.INCONSISTENT,
                rows.shown[row],
                message + f"none is used and {fate}",
            )
    return used


def _no_baseline(
    patient: str, found: list[int], conflicting: bool, rows: _VisitRows, ledger: _Ledger
) -> dict[str, object]:
    """The quarantine record of a patient without a usable baseline row."""
    spec, source_file = ledger.spec, ledger.source_file
    assert spec.visits is not None
    seen = ", ".join(dict.fromkeys(rows.shown[r] for r in found))
    baseline = ", ".join(f"'{v}'" for v, t in spec.visits.timings.items() if t == BASELINE)
    why = (
        "its baseline rows conflict" if conflicting else f"no row at a baseline visit ({spec.visits.column} {baseline})"
    )
    return {
        "source": spec.name, "source_file": source_file, "source_row": found[0] + 1, "patient_id": patient,
        "reason_code": str(Reason.INCONSISTENT if conflicting else Reason.MISSING_BASELINE),
        "column": spec.visits.column, "value": seen,
        "message": f"{why}; a later visit is never used as the baseline: its {len(found)} row(s) (visits {seen}) "
        "are not used",
    }  # fmt: skip


def stage_long(frame: pd.DataFrame, spec: TabularSourceSpec, source_file: str) -> LongStaged:
    """Pivot a long export to one staged row per patient (rules in the module docstring)."""
    visits = spec.visits
    assert visits is not None  # callers check spec.is_long
    static = {**spec.raw_to_canonical(), **spec.helper_columns()}  # read from the baseline row
    measures = spec.visit_measures()  # raw -> {timing: canonical}, read from each timing's row
    missing = [c for c in [*static, visits.column, *measures] if c not in frame.columns]
    if missing:
        raise _missing_columns_error(list(dict.fromkeys(missing)), source_file, spec)
    markers = markers_with(spec.missing_values)
    frame = frame.reset_index(drop=True)
    clean = pd.DataFrame({c: blank_missing(frame[c], markers) for c in dict.fromkeys([*static, *measures])})
    rows = _visit_rows(clean, blank_missing(frame[visits.column], markers), spec)
    ledger = _Ledger(spec, source_file, rows.ids, np.full(len(frame), "", dtype=object), [])
    patients, groups = _group_rows(rows, ledger)
    compared = {t: [raw for raw, by in measures.items() if t in by] for t in set(visits.timings.values())}
    compared[BASELINE] = [c for c in static if c != spec.id_column] + compared.get(BASELINE, [])
    used = _resolve_repeats(groups, clean, compared, rows, ledger)

    records: list[dict[str, object]] = []
    excluded: list[dict[str, object]] = []
    for patient, found in patients.items():
        base = used.get((patient, BASELINE))
        if base is None:
            ledger.disposition[[r for r in found if ledger.disposition[r] == VisitDisposition.USED]] = (
                VisitDisposition.NO_BASELINE
            )
            excluded.append(_no_baseline(patient, found, (patient, BASELINE) in groups, rows, ledger))
            continue
        record: dict[str, object] = {static[raw]: frame.at[base, raw] for raw in static}
        for raw, by_timing in measures.items():
            for timing, canonical in by_timing.items():
                row = used.get((patient, timing))
                record[canonical] = None if row is None else frame.at[row, raw]
        records.append({**record, "patient_id": patient, **spec.constants, "source_file": source_file,
                        "source_row": base + 1})  # fmt: skip

    counts = {d.value: int((ledger.disposition == d).sum()) for d in VisitDisposition}
    if sum(counts.values()) != len(frame):  # pragma: no cover - a bug, not bad input
        raise RuntimeError(f"{spec.name}: visit rows not accounted for")
    unmapped = pd.Series(rows.shown)[ledger.disposition == VisitDisposition.UNMAPPED_VISIT].value_counts()
    staged_rows = pd.DataFrame(records, columns=list(records[0]) if records else ["patient_id", "source_file",
                                                                                    "source_row"])  # fmt: skip
    staged_rows["source_row"] = pd.array(staged_rows["source_row"], dtype="Int64")
    account = VisitAccount(
        file=source_file, rows_in=len(frame), dispositions=counts,
        unmapped_visits={str(k): int(v) for k, v in sorted(unmapped.items())},
        quarantine=quarantine_frame(ledger.quarantined),
    )  # fmt: skip
    read = {*static, visits.column, *measures}
    return LongStaged(
        source=spec.name, rows=staged_rows, excluded=quarantine_frame(excluded), rows_in=len(patients),
        visits=account, unused_columns={source_file: tuple(str(c) for c in frame.columns if c not in read)},
    )  # fmt: skip
