"""Adapter for BIDS tabular data: ``participants.tsv`` plus long ``phenotype/*.tsv`` tables.

A ``kind: bids_phenotype`` source file (configs/sources/ds005917.yaml; model
:class:`~pipeline.sources.bids_spec.BidsSourceSpec`, loaded by :func:`~pipeline.sources.bids_spec.load_bids_spec`)
describes a pinned public release (its files, checksums and urls, used by ``trd fetch``) and an ``adapter:``
section (:class:`~pipeline.sources.bids_spec.BidsAdapter`). :func:`stage_bids` reads the release as fetched into
``data/external/<source>/`` and returns a :class:`BidsStaged` (a :class:`~pipeline.sources.Staged` with
phenotype bookkeeping); :func:`stage_source_folder` is the clean stage's entry point (staged rows, the
:class:`~pipeline.harmonise.HarmoniseRules` of the source, counts for the cleaning report). Codes stay as
written, numbers are parsed, and nothing is derived: the shared harmonisation normalises codes and derives
outcomes for every source alike.

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

The pieces live apart: the source file's model in pipeline/sources/bids_spec.py (``trd fetch`` needs only it),
strict reading of the TSV files in pipeline/sources/bids_tsv.py, and the staging of each phenotype table, with
the disposition of each of its rows, in pipeline/sources/bids_phenotype.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.harmonise import HarmoniseRules
from pipeline.harmonise_values import code_lookup
from pipeline.quarantine import Reason, quarantine_frame
from pipeline.sources import Staged
from pipeline.sources.bids_phenotype import TableAccount, stage_long_table, wrong_type_values
from pipeline.sources.bids_spec import ID_COLUMN, BidsAdapter, BidsSourceSpec, load_bids_spec
from pipeline.sources.bids_tsv import Table, number, read_tsv

if TYPE_CHECKING:
    from pipeline.paths import ProjectPaths

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BidsStaged(Staged):
    """A :class:`Staged` plus the accounting of each phenotype table.

    ``rows``, ``excluded`` and ``rows_in`` are about participants.tsv only. ``phenotype`` quarantine records
    describe rows of other files (their own ``source_file``); a stage that writes them alongside ``excluded``
    must count them separately from the primary invariant.
    """

    phenotype: tuple[TableAccount, ...]


def stage_bids(folder: Path, adapter: BidsAdapter, source: str) -> BidsStaged:
    """Stage a BIDS dataset: one row per eligible participant, raw values under canonical names.

    ``folder`` is the dataset root (holding participants.tsv); ``source`` names the cohort in quarantine
    records. The rules are in this module's docstring.
    """
    folder = Path(folder)
    spec = adapter.participants
    table = read_tsv(
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
        long_table = read_tsv(
            folder,
            long_spec.path,
            [long_spec.id_column, long_spec.session_column, *long_spec.measures],
            adapter.missing_values,
            source,
        )
        values, account = stage_long_table(long_table, long_spec, known_ids, set(eligible), source)
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
                "values_wrong_type": wrong_type_values(account),
            }
            for account in staged.phenotype
        }
    }


def stage_source_folder(spec_path: Path, paths: ProjectPaths) -> tuple[BidsStaged, HarmoniseRules, dict[str, Any]]:
    """The clean stage's entry point: stage ``data/external/<name>/`` as described by ``spec_path``."""
    spec = load_bids_spec(spec_path)
    staged = stage_bids(paths.external_dir / spec.name, spec.adapter, spec.name)
    return staged, harmonise_rules(spec), adapter_report(staged)


def _stage_participants(
    table: Table, adapter: BidsAdapter, source: str
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
                record[canonical] = number(row.values[raw])
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
            wrong_type_values(account),
        )
