"""The defects of the messy clinic export: a clean rendering (pipeline/synthesize/export.py) damaged the way real
exports are, with every defect logged with the cell's clean and exported text.

Defects (each logged with the cell's clean and exported text):

- ``missing_at_random``: baseline and early cells blanked with a fixed probability;
- ``missing_not_at_random``: follow-up scores (MADRS, and the GAD-7 at the end) blanked more often when the
  patient did not respond at that visit;
- ``bmi_not_recorded``: BMI blank although weight and height are given (the cleaner derives it);
- ``impossible_value``: one number per affected row outside the contract's range on every scale (age 250, MADRS 75);
- ``unknown_code``: one category per affected row replaced by a typo not in the code lists (``femal``, ``Spravto``);
- ``duplicate_record`` / ``duplicate_blanked``: a second record of the patient, identical (defects included) but
  with 1-3 more cells blank and an updated_at 1..``duplicate_max_days`` days earlier or later. The copy is strictly
  less complete, so the cleaner's rule (most complete, then latest update, then first in file) keeps the original.

Every export row belongs to a truth row (``patient_ref == patient_id``); rows are shuffled deterministically.
The log's ``export_row`` is the 0-based row of the final export.

Apart from rendering because rendering keeps every value's meaning (nothing is logged), while each defect here
changes or removes a value and must be accounted for in the corruption log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.outcomes import RESPONSE_FRACTION
from pipeline.scales import ScaleConversions
from pipeline.sources.spec import TabularSourceSpec
from pipeline.synthesize.columns import (
    Column,
    TextColumn,
    as_text,
    blank,
    concat,
    from_frame,
    level_index,
    missing,
    take,
    to_frame,
)
from pipeline.synthesize.export import EXPORT_COLUMNS, ExportLayout, export_layout, normalised_code, render
from pipeline.synthesize.params import SynthesizeParams

# Follow-up scores: missed more often by patients who did not respond at that visit (MNAR).
FOLLOW_UP_SCORES = ("madrs_acute", "madrs_end", "madrs_week8")
# Follow-up questionnaires outside the depression scores, with the outcome that decides how often they are missed.
FOLLOW_UP_OTHER: dict[str, str] = {"gad7_end": "anxiety_response_end"}
# Impossible values per canonical column, as whole numbers [low, high]: outside the contract's range, and for
# scores above every scale's maximum (MADRS 60, HAM-D17 52, QIDS-SR16 27) and above 60 after conversion.
IMPOSSIBLE_RANGES: dict[str, tuple[int, int]] = {
    "age": (150, 250),
    "bmi": (90, 300),
    "n_failed_trials": (31, 99),
    "benzodiazepine_mg_deq": (150, 999),
    "crp_mg_l": (-50, -1),
    "dose": (350, 999),
    "n_sessions": (41, 99),
    "cadss_peak_first": (93, 150),
    "sbp_rise_first_mmhg": (130, 300),
    "dbp_rise_first_mmhg": (90, 200),
    "sbp_baseline": (260, 400),
    "dbp_baseline": (160, 300),
    "gad7_baseline": (22, 63),  # above the GAD-7 maximum of 21
    "gad7_end": (22, 63),
    "madrs_baseline": (75, 99),
    "madrs_24h": (75, 99),
    "madrs_acute": (75, 99),
    "madrs_end": (75, 99),
    "madrs_week8": (75, 99),
}
MAX_EXTRA_BLANKS = 3


def typo_codes(codes: tuple[str, ...], accepted: set[str]) -> tuple[str, ...]:
    """Misspellings of a level's alphabetic codes (one letter dropped or two swapped) that no list accepts."""
    typos = []
    for code in codes:
        if len(code) < 4 or not code.replace(" ", "").isalpha():
            continue
        typos += [code[:i] + code[i + 1 :] for i in range(1, len(code))]
        typos += [code[:i] + code[i + 1] + code[i] + code[i + 2 :] for i in range(1, len(code) - 1)]
    return tuple(sorted({t for t in typos if t.strip() and normalised_code(t) not in accepted}))


LOG_KINDS: tuple[str, ...] = (
    "missing_at_random",
    "missing_not_at_random",
    "bmi_not_recorded",
    "impossible_value",
    "unknown_code",
    "duplicate_record",
    "duplicate_blanked",
)


class _Log:
    """Defect records: rows, kind and column as integers, cell texts as Arrow strings; one frame at the end."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.kinds: list[np.ndarray] = []
        self.columns: list[np.ndarray] = []
        self.clean: list[pa.Array] = []
        self.exported: list[pa.Array] = []

    def add(self, kind: str, column: str, rows: np.ndarray, clean: pa.Array, exported: pa.Array | None) -> None:
        if rows.size:
            self.rows.append(rows.astype(np.int64))
            self.kinds.append(np.full(rows.size, LOG_KINDS.index(kind), dtype=np.int8))
            self.columns.append(np.full(rows.size, EXPORT_COLUMNS.index(column), dtype=np.int16))
            self.clean.append(clean)
            self.exported.append(pa.nulls(rows.size, pa.string()) if exported is None else exported)

    def merged(self) -> _LogTable:
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts) if parts else np.array([], dtype=dtype)

        def cat_text(parts: list[pa.Array]) -> pa.Array:
            return pa.concat_arrays(parts) if parts else pa.array([], type=pa.string())

        return _LogTable(
            cat(self.rows, np.int64),
            cat(self.kinds, np.int8),
            cat(self.columns, np.int16),
            cat_text(self.clean),
            cat_text(self.exported),
        )


@dataclass
class _LogTable:
    rows: np.ndarray
    kinds: np.ndarray
    columns: np.ndarray
    clean: pa.Array
    exported: pa.Array

    def select(self, mask: np.ndarray) -> _LogTable:
        keep = pa.array(mask)
        return _LogTable(
            self.rows[mask], self.kinds[mask], self.columns[mask], self.clean.filter(keep), self.exported.filter(keep)
        )

    def reorder(self, order: np.ndarray) -> _LogTable:
        positions = pa.array(order)
        return _LogTable(
            self.rows[order],
            self.kinds[order],
            self.columns[order],
            self.clean.take(positions),
            self.exported.take(positions),
        )

    @staticmethod
    def concat(tables: list[_LogTable]) -> _LogTable:
        return _LogTable(
            np.concatenate([t.rows for t in tables]),
            np.concatenate([t.kinds for t in tables]),
            np.concatenate([t.columns for t in tables]),
            pa.concat_arrays([t.clean for t in tables]),
            pa.concat_arrays([t.exported for t in tables]),
        )


def _apply_defects(
    columns: dict[str, Column],
    truth: pd.DataFrame,
    params: SynthesizeParams,
    layout: ExportLayout,
    rng: np.random.Generator,
) -> tuple[dict[str, Column], _LogTable]:
    """Damage a clean rendering in place (it is consumed); returns the shuffled export columns and the log."""
    ids = columns[layout.id_column]
    if not (isinstance(ids, TextColumn) and ids.arrow().equals(pa.array(truth["patient_id"], type=pa.string()))):
        raise ValueError("the clean export must hold one row per truth row, in truth order")
    log = _Log()
    blank_rng, damage_rng, duplicate_rng, order_rng = rng.spawn(4)
    _blank_cells(columns, log, truth=truth, params=params, layout=layout, rng=blank_rng)
    damaged = _damage_cells(columns, log, truth=truth, params=params, layout=layout, rng=damage_rng)
    table = _duplicate(columns, log.merged(), damaged=damaged, params=params, layout=layout, rng=duplicate_rng)

    order = order_rng.permutation(len(columns[layout.id_column].codes))
    new_position = np.empty_like(order)
    new_position[order] = np.arange(order.size)
    for name in list(columns):  # one column at a time: never two full copies of the export in memory
        columns[name] = take(columns[name], order)
    table.rows = new_position[table.rows]
    return columns, table.reorder(np.lexsort((table.kinds, table.columns, table.rows)))


def _blank_cells(
    columns: dict[str, Column],
    log: _Log,
    *,
    truth: pd.DataFrame,
    params: SynthesizeParams,
    layout: ExportLayout,
    rng: np.random.Generator,
) -> None:
    """Missing at random, missing not at random (follow-up scores) and BMI not recorded, in place."""
    rates = params.export
    n = len(truth)
    missing_rng, mnar_rng, bmi_rng = rng.spawn(3)
    weight_col, weight_unit_col, _ = layout.weight
    height_col, height_unit_col, _ = layout.height
    units_of = {weight_col: weight_unit_col, height_col: height_unit_col}
    follow_up = [raw for raw, canonical in layout.scores.items() if canonical in FOLLOW_UP_SCORES]

    def blank_logged(kind: str, column: str, rows: np.ndarray) -> None:
        log.add(kind, column, rows, as_text(columns[column], rows), None)
        blank(columns[column], rows)

    # baseline and early cells; a unit goes with its value
    other_follow_up = [layout.raw_name(c) for c in FOLLOW_UP_OTHER]
    at_random = [*layout.numeric, *layout.coded, *layout.boolean, weight_col, height_col]
    at_random = [c for c in at_random if c not in other_follow_up]
    at_random += [raw for raw in layout.scores if raw not in follow_up]
    for column in at_random:
        rows = np.flatnonzero(missing_rng.random(n) < rates.missing_at_random)
        blank_logged("missing_at_random", column, rows)
        if column in units_of:
            blank_logged("missing_at_random", units_of[column], rows)

    baseline = truth["madrs_baseline"].to_numpy(dtype="float64")
    for raw in follow_up:
        responded = truth[layout.scores[raw]].to_numpy(dtype="float64") <= RESPONSE_FRACTION * baseline
        rate = np.where(responded, rates.followup_missing_responder, rates.followup_missing_nonresponder)
        blank_logged("missing_not_at_random", raw, np.flatnonzero(mnar_rng.random(n) < rate))
    for canonical, outcome in FOLLOW_UP_OTHER.items():
        responded = truth[outcome].to_numpy(dtype=bool)
        rate = np.where(responded, rates.followup_missing_responder, rates.followup_missing_nonresponder)
        blank_logged("missing_not_at_random", layout.raw_name(canonical), np.flatnonzero(mnar_rng.random(n) < rate))

    bmi_col = layout.raw_name("bmi")
    derivable = ~missing(columns[bmi_col]) & ~missing(columns[weight_col]) & ~missing(columns[height_col])
    blank_logged("bmi_not_recorded", bmi_col, np.flatnonzero(derivable & (bmi_rng.random(n) < rates.bmi_not_recorded)))


def _damage_cells(
    columns: dict[str, Column],
    log: _Log,
    *,
    truth: pd.DataFrame,
    params: SynthesizeParams,
    layout: ExportLayout,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """One impossible number, or one unknown code, in a few rows (only cells holding a value); returns their mask."""
    rates = params.export
    impossible_rng, typo_rng = rng.spawn(2)
    damaged: dict[str, np.ndarray] = {}

    impossible_columns = {layout.raw_name(c): bounds for c, bounds in IMPOSSIBLE_RANGES.items()}
    for column, rows in _one_cell_per_row(columns, list(impossible_columns), rates.impossible_value, impossible_rng):
        low, high = impossible_columns[column]
        values = impossible_rng.integers(low, high + 1, size=rows.size).astype("float64")
        log.add("impossible_value", column, rows, as_text(columns[column], rows), pa.array(values).cast(pa.string()))
        columns[column][rows] = values
        damaged.setdefault(column, np.zeros(len(truth), dtype=bool))[rows] = True

    for column, rows in _one_cell_per_row(columns, list(layout.coded), rates.unknown_code, typo_rng):
        canonical, codes = layout.coded[column]
        accepted = {normalised_code(code) for level_codes in codes.values() for code in level_codes}
        level = level_index(truth[canonical], list(codes))[rows]
        typos = np.empty(rows.size, dtype=object)
        pick = typo_rng.random(rows.size)
        for k, level_codes in enumerate(codes.values()):
            at_level = level == k
            choices = np.array(typo_codes(level_codes, accepted) or (f"{level_codes[0]}xx",), dtype=object)
            typos[at_level] = choices[np.floor(pick[at_level] * choices.size).astype(np.int64)]
        clean = as_text(columns[column], rows)
        text_column = columns[column]
        assert isinstance(text_column, TextColumn)
        text_column.assign(rows, typos)
        log.add("unknown_code", column, rows, clean, text_column.arrow(rows))
        damaged.setdefault(column, np.zeros(len(truth), dtype=bool))[rows] = True
    return damaged


def _one_cell_per_row(
    columns: Mapping[str, Column], candidates: list[str], rate: float, rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """Rows hit with probability ``rate``; in each, one candidate column that holds a value, chosen uniformly."""
    n = len(missing(columns[candidates[0]]))
    rows = np.flatnonzero(rng.random(n) < rate)
    present = np.column_stack([~missing(columns[c])[rows] for c in candidates])
    keys = np.where(present, rng.random(present.shape), np.inf)
    choice = keys.argmin(axis=1)
    usable = present.any(axis=1)
    return [(c, rows[usable & (choice == k)]) for k, c in enumerate(candidates)]


def _duplicate(
    columns: dict[str, Column],
    log: _LogTable,
    *,
    damaged: Mapping[str, np.ndarray],
    params: SynthesizeParams,
    layout: ExportLayout,
    rng: np.random.Generator,
) -> _LogTable:
    """Append a less complete copy of some rows (in place); the copy inherits the original's defects and log entries."""
    n = len(columns[layout.id_column].codes)
    # blank only cells that map one-to-one onto canonical columns: BMI would be re-derived from weight and height
    bmi_col = layout.raw_name("bmi")
    blankable = [c for c in [*layout.numeric, *layout.coded, *layout.boolean, *layout.scores] if c != bmi_col]
    source = np.flatnonzero(rng.random(n) < params.export.duplicate)
    untouched = np.zeros(n, dtype=bool)
    eligible = np.column_stack([~missing(columns[c])[source] & ~damaged.get(c, untouched)[source] for c in blankable])
    keep = eligible.any(axis=1)  # a copy must lose at least one cell, or it could win on its date
    source, eligible = source[keep], eligible[keep]
    n_blank = rng.integers(1, MAX_EXTRA_BLANKS + 1, size=source.size)
    keys = np.where(eligible, rng.random(eligible.shape), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    to_blank = eligible & (rank < n_blank[:, None])
    shift = rng.integers(1, params.export.duplicate_max_days + 1, size=source.size) * rng.choice([-1, 1], source.size)

    copy_rows = n + np.arange(source.size)
    extra = _Log()
    for name in list(columns):  # one column at a time: the copy shares its column's vocabulary
        copy = take(columns[name], source)
        if name in blankable:
            rows = np.flatnonzero(to_blank[:, blankable.index(name)])
            extra.add("duplicate_blanked", name, copy_rows[rows], as_text(copy, rows), None)
            blank(copy, rows)
        columns[name] = concat(columns[name], copy)

    dates = columns[layout.updated_at_column]
    assert isinstance(dates, TextColumn)
    clean_dates = dates.arrow(copy_rows)
    moved = np.array(clean_dates.to_numpy(zero_copy_only=False), dtype="datetime64[D]") + shift.astype("timedelta64[D]")
    dates.assign(copy_rows, np.datetime_as_string(moved, unit="D"))
    extra.add("duplicate_record", layout.updated_at_column, copy_rows, clean_dates, dates.arrow(copy_rows))

    # the copy carries the original's defects: repeat their log entries for the copy's row
    copy_of = np.full(n, -1, dtype=np.int64)
    copy_of[source] = copy_rows
    inherited = log.select(copy_of[log.rows] >= 0)
    inherited.rows = copy_of[inherited.rows]
    return _LogTable.concat([log, inherited, extra.merged()])


def _log_frame(table: _LogTable, ids: TextColumn) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "export_row": table.rows,
            "patient_id": pd.array(ids.arrow(table.rows), dtype="str"),
            "kind": pd.array(np.array(LOG_KINDS, dtype=object)[table.kinds], dtype="str"),
            "column": pd.array(np.array(EXPORT_COLUMNS, dtype=object)[table.columns], dtype="str"),
            "clean_value": pd.array(table.clean, dtype="str"),
            "export_value": pd.array(table.exported, dtype="str"),
        }
    )


def apply_defects(
    clean_export: pd.DataFrame,
    truth: pd.DataFrame,
    params: SynthesizeParams,
    spec: TabularSourceSpec,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Damage a clean rendering (from :func:`render_clean_export`): the export and its corruption log."""
    layout = export_layout(spec)
    columns, log = _apply_defects(from_frame(clean_export), truth, params, layout, rng)
    ids = columns[layout.id_column]
    assert isinstance(ids, TextColumn)
    return to_frame(columns), _log_frame(log, ids)


def corrupt(
    truth: pd.DataFrame,
    params: SynthesizeParams,
    spec: TabularSourceSpec,
    scales: ScaleConversions,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth -> (messy export, corruption log): :func:`render_clean_export` then :func:`apply_defects`."""
    layout = export_layout(spec)
    render_rng, defect_rng = rng.spawn(2)
    columns, log = _apply_defects(render(truth, params, layout, scales, render_rng), truth, params, layout, defect_rng)
    ids = columns[layout.id_column]
    assert isinstance(ids, TextColumn)
    return to_frame(columns), _log_frame(log, ids)
