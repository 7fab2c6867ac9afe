"""The messy clinic export: the clean truth written in the raw codes, units and scales of
configs/sources/synthetic.yaml, then damaged the way real exports are, with every defect logged.

Rendering (not logged: values keep their meaning) writes categories as any accepted code of the source YAML
(``F``, ``female``, ``2``, `` Woman ``...), weight and height in the site's units, and scores on the site's scale
(MADRS -> HAM-D17 -> QIDS-SR16 by the inverse of configs/scale_conversions.yaml, plus rating noise).

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.errors import ConfigError
from pipeline.outcomes import RESPONSE_FRACTION
from pipeline.scales import ScaleConversions
from pipeline.sources.spec import TabularSourceSpec
from pipeline.synthesize.params import SynthesizeParams

# The export's columns in file order; export_layout() checks that the source YAML describes exactly these.
EXPORT_COLUMNS: tuple[str, ...] = (
    "patient_ref",
    "updated_at",
    "site",
    "age_years",
    "sex",
    "weight",
    "weight_unit",
    "height",
    "height_unit",
    "bmi",
    "failed_ad_trials",
    "anxious_depression",
    "ptsd",
    "suicide_attempt_lifetime",
    "psych_hosp_prior",
    "fh_aud",
    "prior_ect",
    "bzd_mg_deq",
    "crp_mg_l",
    "si_current",
    "htn",
    "bp_sys_pre",
    "bp_dia_pre",
    "postpartum_onset",
    "gad7_baseline",
    "route",
    "dose",
    "n_sessions",
    "psychotherapy",
    "scale",
    "score_baseline",
    "score_24h",
    "score_acute",
    "score_end",
    "score_week8",
    "cadss_peak_first",
    "sbp_rise_first",
    "dbp_rise_first",
    "gad7_end",
)
UNIT_SYSTEMS = ("metric", "imperial")  # a site's units; WEIGHT_UNITS and HEIGHT_UNITS are indexed alike
WEIGHT_UNITS = ("kg", "lb")
HEIGHT_UNITS = ("cm", "in")
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
HEIGHT_CM_RANGE = (140.0, 210.0)
MAX_EXTRA_BLANKS = 3


@dataclass(frozen=True)
class ExportLayout:
    """What the generator needs from the source YAML, keyed by raw column."""

    id_column: str
    updated_at_column: str
    site_column: str
    numeric: Mapping[str, str]  # raw -> canonical
    coded: Mapping[str, tuple[str, Mapping[str, tuple[str, ...]]]]  # raw -> (canonical, level -> accepted codes)
    boolean: Mapping[str, str]  # raw -> canonical
    boolean_codes: Mapping[str, tuple[str, ...]]  # "true"/"false" -> accepted codes
    weight: tuple[str, str, Mapping[str, float]]  # value column, unit column, unit -> kg
    height: tuple[str, str, Mapping[str, float]]  # value column, unit column, unit -> m
    scale_column: str
    scale_codes: Mapping[str, tuple[str, ...]]
    scores: Mapping[str, str]  # raw -> canonical MADRS column

    def raw_name(self, canonical: str) -> str:
        for raw, name in {**self.numeric, **self.scores}.items():
            if name == canonical:
                return raw
        raise KeyError(canonical)


def export_layout(spec: TabularSourceSpec) -> ExportLayout:
    """Read the export contract; a ConfigError if it describes columns or units the generator cannot write."""
    where = f"configs/sources/{spec.name}.yaml"
    if spec.body_size is None or spec.depression_scores is None or spec.updated_at_column is None:
        raise ConfigError(f"{where} must describe body_size, depression_scores and updated_at_column")
    site_columns = [raw for raw, m in spec.categorical.items() if m.passthrough and m.canonical == "site"]
    coded = {
        raw: (m.canonical, {k: tuple(v) for k, v in m.codes.items()}) for raw, m in spec.categorical.items() if m.codes
    }
    body = spec.body_size
    described = {*spec.raw_to_canonical(), *spec.helper_columns()}
    only_yaml, only_generator = sorted(described - set(EXPORT_COLUMNS)), sorted(set(EXPORT_COLUMNS) - described)
    if only_yaml or only_generator or len(site_columns) != 1:
        raise ConfigError(
            f"{where} and the synthetic generator disagree on the export columns: only in the YAML {only_yaml}, "
            f"only in the generator {only_generator} (and exactly one passthrough site column is needed)",
            hint="update pipeline/synthesize/export.py together with the source YAML",
        )
    needed_units = {"weight": set(WEIGHT_UNITS), "height": set(HEIGHT_UNITS)}
    for what, units in needed_units.items():
        missing = units - set(getattr(body, what).units)
        if missing:
            raise ConfigError(f"{where}: body_size.{what}.units lacks {sorted(missing)}, which the generator writes")
    scores = spec.depression_scores
    return ExportLayout(
        id_column=spec.id_column,
        updated_at_column=spec.updated_at_column,
        site_column=site_columns[0],
        numeric=dict(spec.numeric),
        coded=coded,
        boolean=dict(spec.boolean),
        boolean_codes={k: tuple(v) for k, v in (spec.boolean_codes or {}).items()},
        weight=(body.weight.column, body.weight.unit_column, dict(body.weight.units)),
        height=(body.height.column, body.height.unit_column, dict(body.height.units)),
        scale_column=scores.scale_column,
        scale_codes={k: tuple(v) for k, v in scores.scale_codes.items()},
        scores=dict(scores.columns),
    )


# --- rendering ------------------------------------------------------------------------------------------------


def _normalised(code: str) -> str:
    return code.strip().casefold()  # the cleaner's comparison: case-insensitive, surrounding spaces ignored


def code_variants(codes: tuple[str, ...]) -> tuple[str, ...]:
    """Accepted spellings of one level: the first code, then every code in other cases, then a padded one."""
    spelled = [f(code) for code in codes for f in (str, str.lower, str.upper, str.title)]
    return tuple(dict.fromkeys([codes[0], *spelled, f" {codes[0]} "]))


def typo_codes(codes: tuple[str, ...], accepted: set[str]) -> tuple[str, ...]:
    """Misspellings of a level's alphabetic codes (one letter dropped or two swapped) that no list accepts."""
    typos = []
    for code in codes:
        if len(code) < 4 or not code.replace(" ", "").isalpha():
            continue
        typos += [code[:i] + code[i + 1 :] for i in range(1, len(code))]
        typos += [code[:i] + code[i + 1] + code[i] + code[i + 2 :] for i in range(1, len(code) - 1)]
    return tuple(sorted({t for t in typos if t.strip() and _normalised(t) not in accepted}))


# --- columns: numbers as float64 arrays, text as codes into a vocabulary ---------------------------------------


@dataclass
class _Text:
    """A text column as integer codes into a vocabulary (-1 = missing).

    Copying, blanking, duplicating and shuffling move 4-byte integers instead of Python strings; Arrow strings
    are built once, when the frame is made.
    """

    codes: np.ndarray  # int32
    vocab: pa.StringArray

    @classmethod
    def from_strings(cls, values: Any) -> _Text:
        codes, uniques = pd.factorize(pd.Series(values, dtype="str"), use_na_sentinel=True)
        return cls(codes.astype(np.int32), pa.array(uniques.to_numpy(dtype=object), type=pa.string()))

    @classmethod
    def from_choices(cls, index: np.ndarray, choices: Any) -> _Text:
        return cls(np.array(index, dtype=np.int32), pa.array(list(choices), type=pa.string()))  # own copy

    def arrow(self, rows: np.ndarray | None = None) -> pa.Array:
        index = self.codes if rows is None else self.codes[rows]
        indices = pa.array(np.maximum(index, 0), mask=index < 0)
        return pa.DictionaryArray.from_arrays(indices, self.vocab).dictionary_decode()

    def assign(self, rows: np.ndarray, strings: np.ndarray) -> None:
        """Write new strings (e.g. typos) into ``rows``, extending the vocabulary."""
        uniques, inverse = np.unique(strings.astype(str), return_inverse=True)
        self.codes[rows] = len(self.vocab) + inverse
        self.vocab = pa.concat_arrays([self.vocab, pa.array(uniques.tolist(), type=pa.string())])


Column = np.ndarray | _Text


def _missing(column: Column) -> np.ndarray:
    return column.codes < 0 if isinstance(column, _Text) else np.isnan(column)


def _blank(column: Column, rows: np.ndarray) -> None:
    if isinstance(column, _Text):
        column.codes[rows] = -1
    else:
        column[rows] = np.nan


def _take(column: Column, index: np.ndarray) -> Column:
    return _Text(column.codes[index], column.vocab) if isinstance(column, _Text) else column[index]


def _concat(first: Column, second: Column) -> Column:
    if isinstance(first, _Text) and isinstance(second, _Text):
        if second.vocab is not first.vocab:
            raise ValueError("only a copy of a text column (sharing its vocabulary) can be appended to it")
        return _Text(np.concatenate([first.codes, second.codes]), first.vocab)
    return np.concatenate([first, second])


def _as_text(column: Column, rows: np.ndarray) -> pa.Array:
    """Cell values as text for the log (numbers without a trailing '.0'; missing stays missing)."""
    if isinstance(column, _Text):
        return column.arrow(rows)
    return pa.array(column[rows], from_pandas=True).cast(pa.string())


def _level_index(values: pd.Series, levels: list[str]) -> np.ndarray:
    index = pd.Categorical(values, categories=levels).codes
    if (index < 0).any():
        raise ValueError(f"values outside {levels} in column {values.name}")
    return index


# --- rendering ------------------------------------------------------------------------------------------------


def _encode(
    level_index: np.ndarray, codes: Mapping[str, tuple[str, ...]], variant_rate: float, rng: np.random.Generator
) -> _Text:
    """Write each level as its first code, or with probability ``variant_rate`` as another accepted spelling."""
    variants = [code_variants(level_codes) for level_codes in codes.values()]
    offsets = np.cumsum([0, *(len(v) for v in variants)])[:-1]
    sizes = np.array([len(v) for v in variants])
    is_variant = rng.random(level_index.size) < variant_rate
    pick = rng.random(level_index.size)
    size = sizes[level_index]
    other = 1 + np.floor(pick * (size - 1)).astype(np.int64)  # any spelling but the first
    chosen = np.where(is_variant & (size > 1), other, 0)
    return _Text.from_choices(offsets[level_index] + chosen, [v for level in variants for v in level])


def _render(
    truth: pd.DataFrame,
    params: SynthesizeParams,
    layout: ExportLayout,
    scales: ScaleConversions,
    rng: np.random.Generator,
) -> dict[str, Column]:
    """One export row per truth row, every value clean but in the site's codes, units and scale."""
    n = len(truth)
    export = params.export
    date_rng, code_rng, body_rng, score_rng = rng.spawn(4)
    site_names = [s.name for s in params.sites]
    span = (export.last_update - export.first_update).days
    days = np.datetime64(export.first_update, "D") + np.arange(span + 1).astype("timedelta64[D]")
    columns: dict[str, Column] = {
        layout.id_column: _Text(np.arange(n, dtype=np.int32), pa.array(truth["patient_id"], type=pa.string())),
        layout.updated_at_column: _Text.from_choices(
            date_rng.integers(0, span + 1, size=n), np.datetime_as_string(days, unit="D")
        ),
        layout.site_column: _Text.from_choices(_level_index(truth["site"], site_names), site_names),
    }
    for raw, canonical in layout.numeric.items():
        columns[raw] = truth[canonical].to_numpy(dtype="float64", copy=True)  # defects write into it
    for raw, (canonical, codes) in layout.coded.items():
        columns[raw] = _encode(_level_index(truth[canonical], list(codes)), codes, export.code_variant, code_rng)
    boolean_levels = list(layout.boolean_codes)
    for raw, canonical in layout.boolean.items():
        level = np.where(
            truth[canonical].to_numpy(dtype=bool), boolean_levels.index("true"), boolean_levels.index("false")
        )
        columns[raw] = _encode(level, layout.boolean_codes, export.code_variant, code_rng)
    columns.update(_body_size(truth, params, layout, body_rng))
    scale_index = _level_index(truth["madrs_source_scale"], list(layout.scale_codes))
    columns[layout.scale_column] = _encode(scale_index, layout.scale_codes, export.code_variant, code_rng)
    scale = np.array(list(layout.scale_codes), dtype=object)[scale_index]
    for raw, canonical in layout.scores.items():
        madrs = truth[canonical].to_numpy(dtype="float64")
        columns[raw] = _recorded_scores(madrs, scale, scales, export.score_noise_sd, score_rng)
    return {name: columns[name] for name in EXPORT_COLUMNS}


def _body_size(
    truth: pd.DataFrame, params: SynthesizeParams, layout: ExportLayout, rng: np.random.Generator
) -> dict[str, Column]:
    """Weight and height in the site's units, consistent with the true BMI (derived BMI within 0.1 of it)."""
    heights = params.cohort.height_cm
    female = (truth["sex"] == "F").to_numpy()
    mean = np.where(female, heights.female, heights.male)
    height_m = np.clip(mean + heights.sd * rng.standard_normal(len(truth)), *HEIGHT_CM_RANGE) / 100.0
    weight_kg = truth["bmi"].to_numpy(dtype="float64") * height_m**2
    site_system = [UNIT_SYSTEMS.index(s.units) for s in params.sites]
    system = np.array(site_system)[_level_index(truth["site"], [s.name for s in params.sites])]
    weight_col, weight_unit_col, to_kg = layout.weight
    height_col, height_unit_col, to_m = layout.height
    return {
        weight_col: np.round(weight_kg / np.array([to_kg[u] for u in WEIGHT_UNITS])[system], 1),
        weight_unit_col: _Text.from_choices(system, WEIGHT_UNITS),
        height_col: np.round(height_m / np.array([to_m[u] for u in HEIGHT_UNITS])[system], 1),
        height_unit_col: _Text.from_choices(system, HEIGHT_UNITS),
    }


def _recorded_scores(
    madrs: np.ndarray, scale: np.ndarray, scales: ScaleConversions, noise_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Scores as the site records them: MADRS as is; other scales by inverse linking plus rating noise."""
    noise = rng.standard_normal(madrs.size) * noise_sd
    recorded = madrs.copy()
    for name, (low, high) in scales.ranges.items():
        rows = scale == name
        if name == scales.target or not rows.any():
            continue
        converted = scales.madrs_to(madrs[rows], name) + noise[rows]
        recorded[rows] = np.clip(np.floor(converted + 0.5), low, high)
    return recorded


def render_clean_export(
    truth: pd.DataFrame,
    params: SynthesizeParams,
    spec: TabularSourceSpec,
    scales: ScaleConversions,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The export before any defect: one row per truth row, in truth order (the reference the log refers to)."""
    return _to_frame(_render(truth, params, export_layout(spec), scales, rng))


# --- defects --------------------------------------------------------------------------------------------------

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
        take = pa.array(order)
        return _LogTable(
            self.rows[order], self.kinds[order], self.columns[order], self.clean.take(take), self.exported.take(take)
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
    if not (isinstance(ids, _Text) and ids.arrow().equals(pa.array(truth["patient_id"], type=pa.string()))):
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
        columns[name] = _take(columns[name], order)
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

    def blank(kind: str, column: str, rows: np.ndarray) -> None:
        log.add(kind, column, rows, _as_text(columns[column], rows), None)
        _blank(columns[column], rows)

    # baseline and early cells; a unit goes with its value
    other_follow_up = [layout.raw_name(c) for c in FOLLOW_UP_OTHER]
    at_random = [*layout.numeric, *layout.coded, *layout.boolean, weight_col, height_col]
    at_random = [c for c in at_random if c not in other_follow_up]
    at_random += [raw for raw in layout.scores if raw not in follow_up]
    for column in at_random:
        rows = np.flatnonzero(missing_rng.random(n) < rates.missing_at_random)
        blank("missing_at_random", column, rows)
        if column in units_of:
            blank("missing_at_random", units_of[column], rows)

    baseline = truth["madrs_baseline"].to_numpy(dtype="float64")
    for raw in follow_up:
        responded = truth[layout.scores[raw]].to_numpy(dtype="float64") <= RESPONSE_FRACTION * baseline
        rate = np.where(responded, rates.followup_missing_responder, rates.followup_missing_nonresponder)
        blank("missing_not_at_random", raw, np.flatnonzero(mnar_rng.random(n) < rate))
    for canonical, outcome in FOLLOW_UP_OTHER.items():
        responded = truth[outcome].to_numpy(dtype=bool)
        rate = np.where(responded, rates.followup_missing_responder, rates.followup_missing_nonresponder)
        blank("missing_not_at_random", layout.raw_name(canonical), np.flatnonzero(mnar_rng.random(n) < rate))

    bmi_col = layout.raw_name("bmi")
    derivable = ~_missing(columns[bmi_col]) & ~_missing(columns[weight_col]) & ~_missing(columns[height_col])
    blank("bmi_not_recorded", bmi_col, np.flatnonzero(derivable & (bmi_rng.random(n) < rates.bmi_not_recorded)))


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
        log.add("impossible_value", column, rows, _as_text(columns[column], rows), pa.array(values).cast(pa.string()))
        columns[column][rows] = values
        damaged.setdefault(column, np.zeros(len(truth), dtype=bool))[rows] = True

    for column, rows in _one_cell_per_row(columns, list(layout.coded), rates.unknown_code, typo_rng):
        canonical, codes = layout.coded[column]
        accepted = {_normalised(code) for level_codes in codes.values() for code in level_codes}
        level = _level_index(truth[canonical], list(codes))[rows]
        typos = np.empty(rows.size, dtype=object)
        pick = typo_rng.random(rows.size)
        for k, level_codes in enumerate(codes.values()):
            at_level = level == k
            choices = np.array(typo_codes(level_codes, accepted) or (f"{level_codes[0]}xx",), dtype=object)
            typos[at_level] = choices[np.floor(pick[at_level] * choices.size).astype(np.int64)]
        clean = _as_text(columns[column], rows)
        text_column = columns[column]
        assert isinstance(text_column, _Text)
        text_column.assign(rows, typos)
        log.add("unknown_code", column, rows, clean, text_column.arrow(rows))
        damaged.setdefault(column, np.zeros(len(truth), dtype=bool))[rows] = True
    return damaged


def _one_cell_per_row(
    columns: Mapping[str, Column], candidates: list[str], rate: float, rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """Rows hit with probability ``rate``; in each, one candidate column that holds a value, chosen uniformly."""
    n = len(_missing(columns[candidates[0]]))
    rows = np.flatnonzero(rng.random(n) < rate)
    present = np.column_stack([~_missing(columns[c])[rows] for c in candidates])
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
    eligible = np.column_stack([~_missing(columns[c])[source] & ~damaged.get(c, untouched)[source] for c in blankable])
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
        copy = _take(columns[name], source)
        if name in blankable:
            rows = np.flatnonzero(to_blank[:, blankable.index(name)])
            extra.add("duplicate_blanked", name, copy_rows[rows], _as_text(copy, rows), None)
            _blank(copy, rows)
        columns[name] = _concat(columns[name], copy)

    dates = columns[layout.updated_at_column]
    assert isinstance(dates, _Text)
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


def _to_frame(columns: Mapping[str, Column]) -> pd.DataFrame:
    """Text columns as pandas strings (missing = NaN), numbers as float64, in export order."""
    return pd.DataFrame(
        {
            name: pd.array(values.arrow(), dtype="str") if isinstance(values, _Text) else values
            for name, values in columns.items()
        }
    )


def _from_frame(frame: pd.DataFrame) -> dict[str, Column]:
    return {
        name: frame[name].to_numpy(dtype="float64", copy=True)
        if pd.api.types.is_float_dtype(frame[name])
        else _Text.from_strings(frame[name])
        for name in frame.columns
    }


def _log_frame(table: _LogTable, ids: _Text) -> pd.DataFrame:
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
    columns, log = _apply_defects(_from_frame(clean_export), truth, params, layout, rng)
    ids = columns[layout.id_column]
    assert isinstance(ids, _Text)
    return _to_frame(columns), _log_frame(log, ids)


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
    columns, log = _apply_defects(_render(truth, params, layout, scales, render_rng), truth, params, layout, defect_rng)
    ids = columns[layout.id_column]
    assert isinstance(ids, _Text)
    return _to_frame(columns), _log_frame(log, ids)
