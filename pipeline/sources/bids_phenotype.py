"""Staging one long phenotype table of a BIDS dataset (secondary to participants.tsv), for the BIDS adapter
(pipeline/sources/bids.py).

Apart from the adapter because a phenotype table has its own accounting: it is recorded in
:attr:`~pipeline.sources.bids.BidsStaged.phenotype`, never in ``excluded``, so the primary invariant stays about
participants. Every data row gets exactly one :class:`Disposition` (``sum(dispositions) == rows_in`` is checked):

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

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd

from pipeline.quarantine import Reason, quarantine_frame
from pipeline.sources.bids_spec import LongTable
from pipeline.sources.bids_tsv import Row, Table, number

logger = logging.getLogger("pipeline.sources.bids")  # the adapter's logger: the messages read as before


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


def wrong_type_values(account: TableAccount) -> int:
    return int((account.quarantine["reason_code"] == Reason.WRONG_TYPE.value).sum())


Candidates = dict[tuple[str, str], list[tuple[Row, dict[str, float | None]]]]


@dataclass
class _Ledger:
    """Where the rows of one long table went, as it is read: disposition counts and quarantine records."""

    table: Table
    id_column: str
    source: str
    counts: Counter[str] = field(default_factory=lambda: Counter({d.value: 0 for d in Disposition}))
    records: list[dict[str, object]] = field(default_factory=list)

    def set_aside(self, row: Row, reason: Reason, column: str | None, value: str | None, message: str) -> None:
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


def stage_long_table(
    table: Table, spec: LongTable, known_ids: set[str], eligible_ids: set[str], source: str
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
                    parsed[canonical] = number(raw)
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


def _fingerprint(row: Row, columns: list[str]) -> tuple[float | str | None, ...]:
    """Mapped values as compared between repeated rows: numbers by value ('24' == '24.0'), other text as is."""
    fingerprint: list[float | str | None] = []
    for column in columns:
        raw = row.values[column]
        try:
            fingerprint.append(number(raw))
        except ValueError:
            fingerprint.append(raw)
    return tuple(fingerprint)
