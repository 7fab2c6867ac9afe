"""Shared harmonisation: a staged frame from any source adapter becomes canonical rows plus quarantine rows.

The clean stage and the scorer both call :func:`harmonise`, so training and scoring see identical values.
Steps, in order (each one vectorised):

1. identifiers: a row without a patient id cannot be linked to anyone (``missing_id``);
2. numbers: parsed; text that is not a number is ``wrong_type``; counts must be whole numbers;
3. codes: categories and yes/no flags are mapped through the source's code lists (case and surrounding spaces
   ignored); a value not in the list is ``unknown_code``;
4. units: weight to kg, height to m; BMI derived from them where it is missing;
5. scales: depression totals are range-checked on the scale they were recorded on, then converted onto MADRS
   where the scale registry (configs/scale_conversions.yaml) has a conversion; the source scale is kept in
   ``madrs_source_scale``. A scale without one leaves the MADRS-point columns missing (counted per column);
6. ranges: every number outside the contract's range is an ``impossible_value`` (quarantined, never clipped);
7. duplicates: among valid records of one patient the source's ``duplicate_order`` picks the winner (by default
   the most complete, then the latest update, then the first in file order); the others are quarantined as
   ``duplicate_record`` naming the winner;
8. outcomes: response, remission, sustained response and percent change are derived from the scores: on MADRS
   with MADRS's rules, or, for a scale without a conversion, on the scores as recorded with that scale's rules.

Constants a source declares (``constants:``, e.g. a route for a single-route trial) are canonical values: they
are parsed, coded against the contract's levels and range-checked like any other value.

A row with several problems is quarantined once, under its first problem; the message lists all of them.
Missing values stay missing (imputation belongs to the models).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.errors
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.contract import CohortContract
from pipeline.errors import PipelineError
from pipeline.missing import MISSING_MARKERS, blank_missing, markers_with
from pipeline.outcomes import BP_EVENT_DBP_PEAK, BP_EVENT_SBP_PEAK, BP_EVENT_SBP_RISE, RESPONSE_FRACTION
from pipeline.quarantine import Reason, quarantine_frame
from pipeline.scales import ScaleConversions
from pipeline.sources import BOOKKEEPING_COLUMNS
from pipeline.sources.spec import TabularSourceSpec

# columns harmonisation derives itself: a source config can neither map nor fix them
DERIVED_COLUMNS: dict[str, str] = {
    "madrs_pct_change_acute": "the baseline and acute scores",
    "response_acute": "the baseline and acute scores",
    "response_end": "the baseline and end-of-induction scores",
    "remission_end": "the end-of-induction score",
    "sustained_week8": "the baseline, end-of-induction and week-8 scores",
    "response_placebo_acute": "the baseline and placebo scores",
    "bp_event_first": "the baseline blood pressure and the first session's rises",
    "anxiety_response_end": "the baseline and end-of-induction GAD-7",
    "madrs_source_scale": "the source's depression_scores (scale or scale_column)",
}
DUPLICATE_ORDER_TEXT = {
    "completeness": "the most complete",
    "updated_at": "the latest updated_at",
    "file_order": "the first in file order",
}
RECORDED_PREFIX = "__recorded__"  # recorded scores of a scale without a conversion, kept for its outcome rules


@dataclass(frozen=True)
class HarmoniseRules:
    """Source-specific knowledge harmonisation needs, keyed by canonical column."""

    source: str
    categorical: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # column -> {code: level}
    passthrough: frozenset[str] = frozenset()
    boolean: frozenset[str] = frozenset()
    boolean_lookup: Mapping[str, bool] = field(default_factory=dict)
    weight_units: Mapping[str, float] | None = None  # unit code -> factor to kg
    height_units: Mapping[str, float] | None = None  # unit code -> factor to m
    # scale code -> scale name; None: one scale for the whole source (constants' madrs_source_scale, else MADRS)
    scale_lookup: Mapping[str, str] | None = None
    score_columns: tuple[str, ...] = ()  # canonical score columns, recorded on the source's scale(s)
    constants: Mapping[str, object] = field(default_factory=dict)  # values the source fixes (cohort, route, ...)
    resolve_duplicates: bool = True
    # how the winner among one patient's valid records is chosen (file_order always breaks the last tie)
    duplicate_order: tuple[str, ...] = ("completeness", "updated_at", "file_order")
    missing_markers: tuple[str, ...] = MISSING_MARKERS  # normalised text read as missing (pipeline/missing.py)


@dataclass
class HarmoniseResult:
    cohort: pd.DataFrame  # canonical, validated
    quarantine: pd.DataFrame  # quarantine_frame() rows, one per quarantined input row
    conversions: dict[str, int]  # values converted, by kind
    source_rows: np.ndarray  # the input row number of each cohort row (same order)
    # scale -> {MADRS-point column -> kept values left missing because the scale has no conversion to MADRS}
    not_on_madrs: dict[str, dict[str, int]] = field(default_factory=dict)


def _norm_codes(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each value's position among the distinct values (-1: missing), and those values normalised (None: empty).

    Exports repeat a handful of codes millions of times, so only the distinct values are normalised.
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if len(uniques) == 0:
        return codes, np.empty(0, dtype=object)
    text = pd.Series(uniques).astype("string").str.strip().str.casefold().to_numpy(dtype=object, na_value=None)
    return codes, np.array([None if value == "" else value for value in text], dtype=object)


def _norm(series: pd.Series) -> pd.Series:
    """Codes compared case-insensitively, ignoring surrounding spaces; empty text counts as missing."""
    codes, text = _norm_codes(series)
    if len(text) == 0:
        return pd.Series(pd.NA, index=series.index, dtype="string")
    normalised = np.where(codes >= 0, text[np.maximum(codes, 0)], None)
    return pd.Series(normalised, index=series.index, dtype="string")


def _map_codes(series: pd.Series, lookup: Mapping[str, object], dtype: str) -> tuple[pd.Series, np.ndarray]:
    """``lookup`` of each value's normalised code as a ``dtype`` series (missing where the value is missing or
    unknown), and the mask of non-empty codes not in ``lookup``. Each distinct code is looked up once."""
    codes, text = _norm_codes(series)
    given = np.array([t is not None for t in text] + [False])
    mapped = np.array([None if t is None else _lookup_code(t, lookup) for t in text] + [None], dtype=object)
    known = np.array([m is not None for m in mapped])
    rows = np.where(codes >= 0, codes, len(text))  # missing values point at the trailing None
    values = pd.array(mapped, dtype=dtype).take(rows)
    return pd.Series(values, index=series.index), given[rows] & ~known[rows]


_WHOLE_NUMBER = re.compile(r"^([+-]?\d+)\.0*$")


def _lookup_code(code: str, lookup: Mapping[str, object]) -> object:
    """A code's level; a whole number written as a float ("1.0", what pandas writes for a coded column with gaps)
    is looked up as the integer code it is."""
    found = lookup.get(code)
    if found is None and (whole := _WHOLE_NUMBER.match(code)):
        found = lookup.get(str(int(whole.group(1))))
    return found


def _parse_numbers(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numbers as float64, and the mask of non-empty values that are not finite numbers (``wrong_type``).

    Each value is judged alone (one pattern for the whole column, no fast path that depends on the other values
    of the chunk), so a file gets the same verdicts at any chunk size. Text such as ``inf`` or ``1e309`` (which
    overflows) is not a finite number; missing-value markers were removed before (pipeline/missing.py).
    """
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        values = raw.astype("float64")
        infinite = np.isinf(values.to_numpy())
        return values.mask(infinite), pd.Series(infinite, index=raw.index)
    text = pa.array(raw.astype("string").array, type=pa.string())
    stripped = pc.utf8_trim_whitespace(text)
    is_number = pc.fill_null(pc.match_substring_regex(stripped, _NUMBER_PATTERN), False)
    numbers = pc.cast(pc.if_else(is_number, stripped, pa.scalar(None, pa.string())), pa.float64())
    parsed = numbers.to_numpy(zero_copy_only=False)
    given = pc.fill_null(pc.not_equal(stripped, ""), False).to_numpy(zero_copy_only=False)
    bad = given & (~is_number.to_numpy(zero_copy_only=False) | np.isinf(parsed))
    parsed = np.where(bad, np.nan, parsed)
    return pd.Series(parsed, index=raw.index, dtype="float64"), pd.Series(bad, index=raw.index)


# a decimal number as exports write it: sign, digits with an optional point, optional exponent
_NUMBER_PATTERN = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


CANONICAL_FLAGS: dict[str, bool] = {"true": True, "false": False}  # YAML's true/false, as text


def code_lookup(codes: Mapping[str, list[str]]) -> dict[str, str]:
    """{level: [codes]} -> {normalised code: level}, the form every code check uses."""
    return {str(code).strip().casefold(): level for level, code_list in codes.items() for code in code_list}


def rules_from_tabular_spec(
    spec: TabularSourceSpec, *, constants: Mapping[str, object] | None = None, resolve_duplicates: bool = True
) -> HarmoniseRules:
    categorical = {m.canonical: code_lookup(m.codes) for m in spec.categorical.values() if m.codes is not None}
    passthrough = frozenset(m.canonical for m in spec.categorical.values() if m.passthrough)
    boolean_lookup: dict[str, bool] = {}
    if spec.boolean_codes:
        boolean_lookup = {
            str(code).strip().casefold(): key == "true" for key, codes in spec.boolean_codes.items() for code in codes
        }
    scores = spec.depression_scores
    fixed: dict[str, object] = {"cohort": spec.name, **spec.constants}
    if scores is not None and scores.scale is not None:
        fixed["madrs_source_scale"] = scores.scale
    return HarmoniseRules(
        source=spec.name,
        categorical=categorical,
        passthrough=passthrough,
        boolean=frozenset(spec.boolean.values()),
        boolean_lookup=boolean_lookup,
        weight_units=dict(spec.body_size.weight.units) if spec.body_size else None,
        height_units=dict(spec.body_size.height.units) if spec.body_size else None,
        scale_lookup=code_lookup(scores.scale_codes) if scores and scores.scale_codes else None,
        score_columns=tuple(scores.targets()) if scores else (),
        constants={**fixed, **(constants or {})},  # the caller's (the scorer's cohort) win
        resolve_duplicates=resolve_duplicates,
        duplicate_order=tuple(spec.effective_duplicate_order()),
        missing_markers=markers_with(spec.missing_values),
    )


@dataclass(frozen=True)
class _Message:
    """``prefix + value + suffix`` for each row, the value shown as text; built only for the rows flagged."""

    prefix: str
    values: pd.Series
    suffix: str

    def build(self, mask: np.ndarray) -> pd.Series:
        return self.prefix + _shown(self.values[mask]) + self.suffix


class _Issues:
    """Collects (reason, column, row mask, message per flagged row) in the order problems are found."""

    def __init__(self, index: pd.Index) -> None:
        self.index = index
        self.items: list[tuple[Reason, str, np.ndarray, pd.Series]] = []

    def add(
        self, reason: Reason, column: str, mask: pd.Series | np.ndarray, messages: _Message | pd.Series | str
    ) -> None:
        mask_arr = np.asarray(mask, dtype=bool)
        if not mask_arr.any():
            return
        # messages are kept for the flagged rows only (a few per chunk): text for every row is the slow part
        if isinstance(messages, _Message):
            messages = messages.build(mask_arr)
        elif isinstance(messages, str):
            messages = pd.Series(messages, index=self.index[mask_arr], dtype="string")
        else:
            messages = messages[mask_arr]
        self.items.append((reason, column, mask_arr, messages.astype("string")))

    def any_mask(self) -> np.ndarray:
        out = np.zeros(len(self.index), dtype=bool)
        for _, _, mask, _ in self.items:
            out |= mask
        return out


def _shown(values: pd.Series) -> pd.Series:
    return values.astype("string").fillna("<missing>")


def harmonise(
    staged: pd.DataFrame, rules: HarmoniseRules, contract: CohortContract, scales: ScaleConversions
) -> HarmoniseResult:
    """Turn a staged frame into validated canonical rows and quarantine rows (see module docstring)."""
    # constants are canonical values, never markers (psychotherapy 'none' is a level)
    staged = _blank_missing_markers(staged.reset_index(drop=True), rules, contract)
    issues = _Issues(staged.index)
    out = pd.DataFrame(index=staged.index)
    conversions: dict[str, int] = {}

    # 1. identifiers
    ids = staged["patient_id"].astype("string").str.strip() if "patient_id" in staged else None
    if ids is None:
        raise PipelineError("staged frame has no patient_id column", hint="check the source's id_column mapping")
    ids = ids.mask(ids == "")
    issues.add(Reason.MISSING_ID, "patient_id", ids.isna(), "no patient identifier: the record cannot be linked")
    out["patient_id"] = ids

    # 2.–3. numbers and codes, column by column as the contract defines them
    _parse_columns(staged, rules, contract, issues, out)

    # 4. units and derived BMI
    if rules.weight_units is not None and "weight_raw" in staged:
        weight_kg, n_weight = _to_si(staged, "weight", rules.weight_units, "kg", issues)
        height_m, n_height = _to_si(staged, "height", rules.height_units or {}, "m", issues)
        conversions["weight_to_kg"] = n_weight
        conversions["height_to_m"] = n_height
        bmi = out["bmi"] if "bmi" in out else pd.Series(np.nan, index=staged.index)
        derive = bmi.isna() & weight_kg.notna() & height_m.notna() & (height_m > 0)
        out["bmi"] = bmi.where(~derive, weight_kg / height_m**2)
        conversions["bmi_derived"] = int(derive.sum())

    # 5. depression scores: range on the recorded scale, then onto MADRS
    _harmonise_scores(staged, rules=rules, scales=scales, issues=issues, out=out, conversions=conversions)

    # 6. contract ranges
    _check_ranges(contract, issues, out)

    for key, value in rules.constants.items():
        if key not in staged:  # constants the adapter staged were parsed and checked above
            out[key] = value

    # bookkeeping for messages and duplicate order
    for col in BOOKKEEPING_COLUMNS:
        out[col] = staged.get(col, pd.NA)
    quarantined = issues.any_mask()
    quarantine_rows = _issue_rows(issues, staged, out, rules.source, quarantined)

    kept = out.loc[~quarantined].copy()
    if rules.resolve_duplicates:
        kept, duplicates = _resolve_duplicates(kept, staged, contract, rules.source, rules.duplicate_order)
        quarantine_rows = pd.concat([quarantine_rows, duplicates], ignore_index=True)

    kept = _derive_outcomes(kept, scales)
    not_on_madrs = _not_on_madrs(kept, scales)
    source_rows = kept["source_row"].to_numpy(dtype="int64", na_value=-1)
    # the scorer resolves duplicates across chunks itself, so only the clean stage demands unique ids here
    cohort = _to_contract(kept, contract, rules.source, unique_ids=rules.resolve_duplicates)
    quarantine = quarantine_frame(quarantine_rows).sort_values(["source_row"], kind="stable").reset_index(drop=True)
    return HarmoniseResult(
        cohort=cohort, quarantine=quarantine, conversions=conversions, source_rows=source_rows,
        not_on_madrs=not_on_madrs,
    )  # fmt: skip


def constant_problems(constants: Mapping[str, object], contract: CohortContract, source: str) -> list[tuple[str, str]]:
    """(column, message) for each constant that fails the parsing, code and range checks every value goes through
    (the source's config check calls this before any data is read)."""
    present = {name: value for name, value in constants.items() if name in contract.by_name}
    if not present:
        return []
    staged = pd.DataFrame({name: pd.Series([value], dtype=object) for name, value in present.items()})
    issues = _Issues(staged.index)
    out = pd.DataFrame(index=staged.index)
    _parse_columns(staged, HarmoniseRules(source=source, constants=present), contract, issues, out)
    _check_ranges(contract, issues, out)
    return [(column, str(messages.iloc[0])) for _, column, _, messages in issues.items]


def _blank_missing_markers(staged: pd.DataFrame, rules: HarmoniseRules, contract: CohortContract) -> pd.DataFrame:
    """Every missing-value marker (``NA``, ``n/a``, ``NULL``, ``.``, ...) becomes a missing value, in every column
    but the bookkeeping ones and the source's constants. A column's own codes win over the markers: psychotherapy
    ``none`` is a level, not a missing value."""
    skip = {*BOOKKEEPING_COLUMNS, *rules.constants}
    blanked = {}
    for name in staged.columns:
        if name in skip:
            continue
        markers = rules.missing_markers
        codes = _known_codes(name, rules, contract)
        if codes:
            markers = tuple(m for m in markers if m not in codes)
        column = blank_missing(staged[name], markers)
        if column is not staged[name]:
            blanked[name] = column
    return staged.assign(**blanked) if blanked else staged


def _known_codes(name: str, rules: HarmoniseRules, contract: CohortContract) -> frozenset[str]:
    """The normalised codes a coded column accepts (empty for numbers and free text)."""
    if name in rules.boolean:
        return frozenset(rules.boolean_lookup)
    if name in rules.categorical:
        return frozenset(rules.categorical[name])
    spec = contract.by_name.get(name)
    if spec is not None and spec.dtype == "category" and name not in rules.passthrough:
        return frozenset(level.casefold() for level in spec.levels or ())
    return frozenset()


def _parse_columns(
    staged: pd.DataFrame, rules: HarmoniseRules, contract: CohortContract, issues: _Issues, out: pd.DataFrame
) -> None:
    """Parse numbers and map codes for every canonical column the staged frame has (fills ``out``)."""
    for spec in contract.columns:
        name = spec.name
        if name in ("patient_id",) or name not in staged.columns or name in rules.score_columns:
            continue
        raw = staged[name]
        if spec.dtype in ("float", "int"):
            parsed, bad = _parse_numbers(raw)
            issues.add(Reason.WRONG_TYPE, name, bad, _Message("'", raw, f"' is not a number ({name})"))
            if spec.dtype == "int":
                fractional = parsed.notna() & (parsed != np.round(parsed))
                issues.add(Reason.WRONG_TYPE, name, fractional, _Message("'", raw, f"' is not a whole number ({name})"))
            out[name] = parsed
        elif name in rules.passthrough:
            out[name] = raw.astype("string").str.strip().mask(lambda s: s == "")
        elif name in rules.boolean or spec.dtype == "bool":
            # a constant is written canonically (true/false), whatever codes the source's own columns use
            lookup_flags = CANONICAL_FLAGS if name in rules.constants else rules.boolean_lookup
            mapped, unknown = _map_codes(raw, lookup_flags, "boolean")
            known = ", ".join(sorted(lookup_flags)) or "none configured"
            issues.add(
                Reason.UNKNOWN_CODE, name, unknown, _Message("'", raw, f"' is not a yes/no code for {name} ({known})")
            )
            out[name] = mapped
        elif spec.dtype == "category":
            lookup = None if name in rules.constants else rules.categorical.get(name)
            if lookup is None:  # the source records canonical levels (always so for a constant)
                lookup = {level.casefold(): level for level in spec.levels or ()}
            mapped, unknown = _map_codes(raw, lookup, "string")
            if name in rules.constants:
                hint = f"levels: {', '.join(spec.levels or ())}; a constant is written as a canonical level"
            else:
                hint = f"known: {', '.join(sorted(set(lookup)))}; add the code to configs/sources/{rules.source}.yaml"
            issues.add(Reason.UNKNOWN_CODE, name, unknown, _Message("'", raw, f"' is not a known {name} ({hint})"))
            out[name] = mapped
        else:
            out[name] = raw.astype("string")


def _check_ranges(contract: CohortContract, issues: _Issues, out: pd.DataFrame) -> None:
    """Flag every number outside the contract's range (never clipped)."""
    for spec in contract.columns:
        if spec.min is None or spec.max is None or spec.name not in out:
            continue
        values = out[spec.name]
        outside = values.notna() & ((values < spec.min) | (values > spec.max))
        issues.add(
            Reason.IMPOSSIBLE_VALUE,
            spec.name,
            outside,
            _Message(
                f"{spec.name} ",
                values.round(2),
                f" is outside the possible range {spec.min:g}–{spec.max:g}" + (f" {spec.unit}" if spec.unit else ""),
            ),
        )


def _to_si(
    staged: pd.DataFrame, what: str, units: Mapping[str, float], si: str, issues: _Issues
) -> tuple[pd.Series, int]:
    raw = staged[f"{what}_raw"]
    value, bad = _parse_numbers(raw)
    issues.add(
        Reason.WRONG_TYPE,
        what,
        bad,
        _Message("'", raw, f"' is not a number ({what})"),
    )
    unit = _norm(staged[f"{what}_unit"]) if f"{what}_unit" in staged else pd.Series(pd.NA, index=staged.index)
    lookup = {k.casefold(): v for k, v in units.items()}
    factor = unit.map(lookup).astype("float64")
    unknown = value.notna() & factor.isna()
    issues.add(
        Reason.UNKNOWN_CODE,
        f"{what}_unit",
        unknown,
        _Message("unit '", unit, f"' of {what} is not one of {', '.join(sorted(lookup))}"),
    )
    converted = int((value.notna() & factor.notna() & (factor != 1.0)).sum())
    return value * factor, converted


def _harmonise_scores(
    staged: pd.DataFrame,
    *,
    rules: HarmoniseRules,
    scales: ScaleConversions,
    issues: _Issues,
    out: pd.DataFrame,
    conversions: dict[str, int],
) -> None:
    present = [c for c in rules.score_columns if c in staged]
    if rules.scale_lookup is None or "score_scale" not in staged:
        scale = pd.Series(rules.constants.get("madrs_source_scale", "madrs"), index=staged.index, dtype="string")
    else:
        normed = _norm(staged["score_scale"])
        scale = normed.map(rules.scale_lookup).astype("string")
        unknown = normed.notna() & scale.isna()
        codes = ", ".join(sorted(rules.scale_lookup))
        issues.add(
            Reason.UNKNOWN_CODE,
            "score_scale",
            unknown,
            _Message(
                "depression scale '",
                staged["score_scale"],
                f"' is not a scale code of this source ({codes}); add it under depression_scores.scale_codes in "
                f"configs/sources/{rules.source}.yaml",
            ),
        )
        has_score = staged[present].notna().any(axis=1) if present else pd.Series(False, index=staged.index)
        issues.add(Reason.INCONSISTENT, "score_scale", has_score & normed.isna(), "scores given without their scale")
    out["madrs_source_scale"] = scale
    unconvertible = scale.isin([name for name in scales.names if not scales.convertible(name)]).fillna(False)
    for column in present:
        raw = staged[column]
        value, bad = _parse_numbers(raw)
        issues.add(
            Reason.WRONG_TYPE,
            column,
            bad,
            _Message("'", raw, f"' is not a number ({column})"),
        )
        madrs = value.copy()
        for name, (low, high) in scales.ranges.items():
            on_scale = (scale == name).fillna(False).to_numpy()
            recorded = value[on_scale]
            outside = pd.Series(False, index=staged.index)
            outside[on_scale] = recorded.notna() & ((recorded < low) | (recorded > high))
            issues.add(
                Reason.IMPOSSIBLE_VALUE,
                column,
                outside,
                _Message(f"{column} ", value, f" is outside the {scales.scales[name].label} range {low:g}–{high:g}"),
            )
            if name == scales.target or not on_scale.any():
                continue
            if scales.convertible(name):
                madrs[on_scale] = scales.to_madrs(recorded.to_numpy(), name)
                conversions[f"{name}_to_madrs"] = conversions.get(f"{name}_to_madrs", 0) + int(recorded.notna().sum())
            else:  # never MADRS points; the recorded score still decides this scale's own outcomes
                madrs[on_scale] = np.nan
        out[RECORDED_PREFIX + column] = value.where(unconvertible)
        # a top-of-scale HAM-D17 maps above 60 on the linear fit: cap at the MADRS maximum and count it
        target_low, target_high = scales.ranges[scales.target]
        converted = (scale != scales.target).fillna(False)
        capped = converted & ((madrs > target_high) | (madrs < target_low))
        conversions["converted_capped_to_madrs_range"] = conversions.get("converted_capped_to_madrs_range", 0) + int(
            capped.sum()
        )
        out[column] = madrs.where(~converted, madrs.clip(target_low, target_high))


def _not_on_madrs(kept: pd.DataFrame, scales: ScaleConversions) -> dict[str, dict[str, int]]:
    """Per scale without a conversion: how many kept scores each MADRS-point column lacks for that reason."""
    counts: dict[str, dict[str, int]] = {}
    if "madrs_source_scale" not in kept:
        return counts
    for helper in (c for c in kept.columns if c.startswith(RECORDED_PREFIX)):
        column = helper.removeprefix(RECORDED_PREFIX)
        for scale, n in kept.loc[kept[helper].notna(), "madrs_source_scale"].value_counts().items():
            counts.setdefault(str(scale), {})[column] = int(n)
    return {scale: dict(sorted(columns.items())) for scale, columns in sorted(counts.items())}


def _issue_rows(
    issues: _Issues, staged: pd.DataFrame, out: pd.DataFrame, source: str, quarantined: np.ndarray
) -> pd.DataFrame:
    if not quarantined.any():
        return quarantine_frame()
    # only the quarantined rows (usually a few per chunk) are worked on, as plain arrays
    index = staged.index[quarantined]
    first_reason = np.full(len(index), None, dtype=object)
    first_column = np.full(len(index), None, dtype=object)
    first_value = np.full(len(index), None, dtype=object)
    named = np.zeros(len(index), dtype=bool)
    parts: list[list[str]] = [[] for _ in range(len(index))]
    for reason, column, mask, message in issues.items:
        hit = mask[quarantined]
        fresh = hit & ~named
        named |= hit
        first_reason[fresh] = str(reason)
        first_column[fresh] = column
        source_col = {"weight": "weight_raw", "height": "height_raw"}.get(column, column)
        if source_col in staged:
            shown = staged.loc[index[fresh], source_col].astype("string")
            first_value[fresh] = shown.to_numpy(dtype=object, na_value=None)
        for row, text in zip(np.flatnonzero(hit), message.to_numpy(dtype=object, na_value=""), strict=True):
            parts[row].append(text)
    messages = ["; ".join(texts).lstrip("; ") for texts in parts]
    rows = pd.DataFrame(
        {
            "source": source,
            "source_file": out["source_file"].loc[index],
            "source_row": out["source_row"].loc[index],
            "patient_id": out["patient_id"].loc[index],
            "reason_code": pd.Series(first_reason, index=index, dtype="string"),
            "column": pd.Series(first_column, index=index, dtype="string"),
            "value": pd.Series(first_value, index=index, dtype="string"),
            "message": pd.Series(messages, index=index, dtype="string"),
        }
    )
    return rows


def _resolve_duplicates(
    kept: pd.DataFrame,
    staged: pd.DataFrame,
    contract: CohortContract,
    source: str,
    order: tuple[str, ...] = ("completeness", "updated_at", "file_order"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One record per patient: ``order`` (the source's ``duplicate_order``) ranks the valid records, file order
    breaking any tie that remains; the others are quarantined naming the winner."""
    dup_mask = kept["patient_id"].duplicated(keep=False)
    if not dup_mask.any():
        return kept, quarantine_frame()
    canonical = [c for c in contract.names if c in kept.columns and c not in ("patient_id", "cohort")]
    ranking = pd.DataFrame(
        {
            "patient_id": kept["patient_id"],
            "completeness": kept[canonical].notna().sum(axis=1),
            "updated_at": pd.to_datetime(staged.loc[kept.index, "updated_at"], errors="coerce")
            if "updated_at" in staged
            else pd.NaT,
            "file_order": np.arange(len(kept)),
        },
        index=kept.index,
    )
    keys = [*dict.fromkeys([*order, "file_order"])]
    ranked = ranking.sort_values(
        ["patient_id", *keys],
        ascending=[True, *(key == "file_order" for key in keys)],  # most complete, latest, then first
        na_position="last",
        kind="stable",
    )
    winners = ranked.drop_duplicates("patient_id", keep="first")
    losers_idx = ranked.index.difference(winners.index, sort=False)
    losers_idx = kept.index[kept.index.isin(losers_idx)]  # file order
    winner_row = kept.loc[winners.index].set_index("patient_id")["source_row"]
    losers = kept.loc[losers_idx]
    duplicates = pd.DataFrame(
        {
            "source": source,
            "source_file": losers["source_file"],
            "source_row": losers["source_row"],
            "patient_id": losers["patient_id"],
            "reason_code": str(Reason.DUPLICATE),
            "column": "patient_id",
            "value": losers["patient_id"],
            "message": "another record of this patient was kept (row "
            + losers["patient_id"].map(winner_row).astype("string")
            + "): "
            + ", then ".join(DUPLICATE_ORDER_TEXT[key] for key in keys)
            + " wins",
        }
    )
    return kept.drop(index=losers_idx), duplicates


def _derive_outcomes(frame: pd.DataFrame, scales: ScaleConversions) -> pd.DataFrame:
    """Response, remission and percent change from the scores (missing where a score is missing).

    Scores on MADRS (recorded or converted) follow MADRS's rules; scores on a scale without a conversion follow
    that scale's own rules (configs/scale_conversions.yaml), on the values as recorded. Percent change is a MADRS
    quantity and stays missing for the latter.
    """
    frame = frame.copy(deep=False)  # whole columns are added or replaced, never changed in place
    index = frame.index
    target = scales.scales[scales.target]
    scale = frame["madrs_source_scale"] if "madrs_source_scale" in frame else pd.Series(pd.NA, index=index)
    own_rules = {
        name: (scale == name).fillna(False).to_numpy() for name in scales.names if not scales.convertible(name)
    }
    on_madrs = ~np.logical_or.reduce([np.zeros(len(index), dtype=bool), *own_rules.values()])

    def madrs(name: str) -> pd.Series:
        return frame[name].astype("float64") if name in frame else pd.Series(np.nan, index=index)

    def score(name: str) -> pd.Series:
        """MADRS points, or the recorded score where the scale has its own rules."""
        recorded = frame.get(RECORDED_PREFIX + name)
        return madrs(name) if recorded is None else madrs(name).where(on_madrs, recorded.astype("float64"))

    keep = np.full(len(index), 1.0 - target.response.min_reduction)  # response: score <= keep x baseline
    for name, rows in own_rules.items():
        keep[rows] = 1.0 - scales.scales[name].response.min_reduction
    base = score("madrs_baseline")

    def responded(value: pd.Series) -> pd.Series:
        result = pd.Series(value.to_numpy() <= keep * base.to_numpy(), index=index).astype("boolean")
        return result.mask(value.isna() | base.isna())

    def remitted(value: pd.Series) -> pd.Series:
        met = target.remission.met(value.to_numpy())
        for name, rows in own_rules.items():
            met = np.where(rows, scales.scales[name].remission.met(value.to_numpy()), met)
        return pd.Series(met, index=index).astype("boolean").mask(value.isna())

    acute, end, week8, placebo = (
        score("madrs_acute"),
        score("madrs_end"),
        score("madrs_week8"),
        score("madrs_placebo_acute"),
    )
    frame["response_acute"] = responded(acute)
    frame["response_end"] = responded(end)
    frame["remission_end"] = remitted(end)
    frame["sustained_week8"] = responded(end) & responded(week8)
    frame["response_placebo_acute"] = responded(placebo)
    madrs_base, madrs_acute = madrs("madrs_baseline"), madrs("madrs_acute")
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100.0 * ((madrs_acute - madrs_base) / madrs_base)  # divide first: (0 - b) / b is exactly -1
    frame["madrs_pct_change_acute"] = pct.where(madrs_base > 0)
    frame["anxiety_response_end"] = _anxiety_response(frame)
    frame["bp_event_first"] = _bp_event(frame)
    return frame


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name].astype("Float64") if name in frame else pd.Series(pd.NA, index=frame.index, dtype="Float64")


def _anxiety_response(frame: pd.DataFrame) -> pd.Series:
    """GAD-7 drop >= 50 % (missing where either score is)."""
    return (_column(frame, "gad7_end") <= RESPONSE_FRACTION * _column(frame, "gad7_baseline")).astype("boolean")


def _bp_event(frame: pd.DataFrame) -> pd.Series:
    """Any of the three criteria met (True as soon as one is known to be met; missing if none is and one is unknown)."""
    sbp_rise, dbp_rise = _column(frame, "sbp_rise_first_mmhg"), _column(frame, "dbp_rise_first_mmhg")
    met = (
        (sbp_rise >= BP_EVENT_SBP_RISE)
        | (_column(frame, "sbp_baseline") + sbp_rise >= BP_EVENT_SBP_PEAK)
        | (_column(frame, "dbp_baseline") + dbp_rise >= BP_EVENT_DBP_PEAK)
    )
    return met.astype("boolean")


def _to_contract(kept: pd.DataFrame, contract: CohortContract, source: str, *, unique_ids: bool) -> pd.DataFrame:
    frame = kept.copy(deep=False)  # columns are only added
    for spec in contract.columns:
        if spec.name not in frame:
            frame[spec.name] = pd.Series(None, index=frame.index, dtype=spec.pandas_dtype)
    frame = contract.coerce(frame.reset_index(drop=True))
    schema = _schema(contract, unique_ids)
    validated = _passes(frame, schema)
    if validated is not None:
        return validated
    try:  # pandera validates again, and names every failure
        return schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases = exc.failure_cases.head(10).to_string(index=False)
        raise PipelineError(
            f"harmonised '{source}' rows violate the canonical contract; nothing was written:\n{cases}",
            hint="this is a bug in an adapter or in harmonisation: please report it with this message",
        ) from None


_SCHEMAS: dict[tuple[int, bool], tuple[CohortContract, pandera.api.pandas.container.DataFrameSchema]] = {}


def _schema(contract: CohortContract, unique_ids: bool) -> pandera.api.pandas.container.DataFrameSchema:
    """The contract's pandera schema, built once per contract (the scorer validates thousands of chunks)."""
    cached = _SCHEMAS.get((id(contract), unique_ids))
    if cached is None or cached[0] is not contract:
        if len(_SCHEMAS) > 16:
            _SCHEMAS.clear()
        cached = _SCHEMAS[(id(contract), unique_ids)] = (contract, contract.pandera_schema(unique_ids=unique_ids))
    return cached[1]


def _passes(frame: pd.DataFrame, schema: pandera.api.pandas.container.DataFrameSchema) -> pd.DataFrame | None:
    """``schema.validate(frame)`` when the frame passes, with vectorised checks in place of pandera's per-check
    machinery (which costs more than harmonising a chunk); None when any check fails or the schema uses a
    feature not understood here, and then pandera validates and reports exactly as before.

    The frame is coerced as pandera coerces it, then checked as pandera checks: exact columns in order, dtypes,
    nullability, ``in_range`` and ``isin`` checks ignoring missing values, unique column combinations.
    """
    understood = (
        not (schema.checks or schema.parsers or schema.add_missing_columns or schema.drop_invalid_rows)
        and schema.index is None and schema.dtype is None
        and schema.coerce and schema.strict is True and schema.ordered
        and list(frame.columns) == list(schema.columns) and frame.columns.is_unique
    )  # fmt: skip
    if not understood:
        return None
    # pandera coerces a column by ``astype`` to its dtype; doing that only for the columns whose dtype differs
    # (the string columns, to pandas' default string dtype) skips pandera's per-column machinery on each chunk
    differing = {
        name: column.dtype.type for name, column in schema.columns.items() if frame[name].dtype != column.dtype.type
    }
    try:
        coerced = frame.astype(differing) if differing else frame
    except (TypeError, ValueError):
        return None  # pandera reports it
    if not all(_column_passes(coerced[name], column) for name, column in schema.columns.items()):
        return None
    unique = [schema.unique] if isinstance(schema.unique, str) else schema.unique
    if unique and coerced.duplicated(subset=list(unique)).any():
        return None
    return coerced


def _column_passes(values: pd.Series, column: pandera.api.pandas.components.Column) -> bool:
    if column.regex or column.unique or column.parsers or not column.required or values.dtype != column.dtype.type:
        return False
    missing = values.isna().to_numpy()
    if not column.nullable and missing.any():
        return False
    return all(_check_passes(values, missing, check) for check in column.checks)


def _check_passes(values: pd.Series, missing: np.ndarray, check: pandera.api.checks.Check) -> bool:
    stats = check.statistics
    if not check.ignore_na or check.groupby is not None or check.element_wise:
        return False
    if check.name == "in_range":
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        low, high = stats["min_value"], stats["max_value"]
        with np.errstate(invalid="ignore"):
            above = numbers >= low if stats["include_min"] else numbers > low
            below = numbers <= high if stats["include_max"] else numbers < high
        return bool((above & below | missing).all())
    if check.name == "isin":
        return bool((values.isin(list(stats["allowed_values"])).to_numpy() | missing).all())
    return False
