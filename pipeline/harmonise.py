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

This module is the frame-level driver (rules, the steps above, duplicates); the pieces it calls live apart:
parsing, code lookup, units and issue collection in pipeline/harmonise_values.py, outcome derivation (step 8)
in pipeline/harmonise_outcomes.py, validation against the contract in pipeline/harmonise_validate.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.contract import CohortContract
from pipeline.errors import PipelineError
from pipeline.harmonise_outcomes import RECORDED_PREFIX, count_not_on_madrs, derive_outcomes
from pipeline.harmonise_validate import to_contract
from pipeline.harmonise_values import (
    CANONICAL_FLAGS,
    Issues,
    Message,
    code_lookup,
    issue_rows,
    map_codes,
    norm,
    parse_numbers,
    to_si,
)
from pipeline.missing import MISSING_MARKERS, blank_missing, markers_with
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


def harmonise(
    staged: pd.DataFrame, rules: HarmoniseRules, contract: CohortContract, scales: ScaleConversions
) -> HarmoniseResult:
    """Turn a staged frame into validated canonical rows and quarantine rows (see module docstring)."""
    # constants are canonical values, never markers (psychotherapy 'none' is a level)
    staged = _blank_missing_markers(staged.reset_index(drop=True), rules, contract)
    issues = Issues(staged.index)
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
        weight_kg, n_weight = to_si(staged, "weight", rules.weight_units, "kg", issues)
        height_m, n_height = to_si(staged, "height", rules.height_units or {}, "m", issues)
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
    quarantine_rows = issue_rows(issues, staged, out, rules.source, quarantined)

    kept = out.loc[~quarantined].copy()
    if rules.resolve_duplicates:
        kept, duplicates = _resolve_duplicates(kept, staged, contract, rules.source, rules.duplicate_order)
        quarantine_rows = pd.concat([quarantine_rows, duplicates], ignore_index=True)

    kept = derive_outcomes(kept, scales)
    not_on_madrs = count_not_on_madrs(kept, scales)
    source_rows = kept["source_row"].to_numpy(dtype="int64", na_value=-1)
    # the scorer resolves duplicates across chunks itself, so only the clean stage demands unique ids here
    cohort = to_contract(kept, contract, rules.source, unique_ids=rules.resolve_duplicates)
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
    issues = Issues(staged.index)
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
    staged: pd.DataFrame, rules: HarmoniseRules, contract: CohortContract, issues: Issues, out: pd.DataFrame
) -> None:
    """Parse numbers and map codes for every canonical column the staged frame has (fills ``out``)."""
    for spec in contract.columns:
        name = spec.name
        if name in ("patient_id",) or name not in staged.columns or name in rules.score_columns:
            continue
        raw = staged[name]
        if spec.dtype in ("float", "int"):
            parsed, bad = parse_numbers(raw)
            issues.add(Reason.WRONG_TYPE, name, bad, Message("'", raw, f"' is not a number ({name})"))
            if spec.dtype == "int":
                fractional = parsed.notna() & (parsed != np.round(parsed))
                issues.add(Reason.WRONG_TYPE, name, fractional, Message("'", raw, f"' is not a whole number ({name})"))
            out[name] = parsed
        elif name in rules.passthrough:
            out[name] = raw.astype("string").str.strip().mask(lambda s: s == "")
        elif name in rules.boolean or spec.dtype == "bool":
            # a constant is written canonically (true/false), whatever codes the source's own columns use
            lookup_flags = CANONICAL_FLAGS if name in rules.constants else rules.boolean_lookup
            mapped, unknown = map_codes(raw, lookup_flags, "boolean")
            known = ", ".join(sorted(lookup_flags)) or "none configured"
            issues.add(
                Reason.UNKNOWN_CODE, name, unknown, Message("'", raw, f"' is not a yes/no code for {name} ({known})")
            )
            out[name] = mapped
        elif spec.dtype == "category":
            lookup = None if name in rules.constants else rules.categorical.get(name)
            if lookup is None:  # the source records canonical levels (always so for a constant)
                lookup = {level.casefold(): level for level in spec.levels or ()}
            mapped, unknown = map_codes(raw, lookup, "string")
            if name in rules.constants:
                hint = f"levels: {', '.join(spec.levels or ())}; a constant is written as a canonical level"
            else:
                hint = f"known: {', '.join(sorted(set(lookup)))}; add the code to configs/sources/{rules.source}.yaml"
            issues.add(Reason.UNKNOWN_CODE, name, unknown, Message("'", raw, f"' is not a known {name} ({hint})"))
            out[name] = mapped
        else:
            out[name] = raw.astype("string")


def _check_ranges(contract: CohortContract, issues: Issues, out: pd.DataFrame) -> None:
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
            Message(
                f"{spec.name} ",
                values.round(2),
                f" is outside the possible range {spec.min:g}–{spec.max:g}" + (f" {spec.unit}" if spec.unit else ""),
            ),
        )


def _harmonise_scores(
    staged: pd.DataFrame,
    *,
    rules: HarmoniseRules,
    scales: ScaleConversions,
    issues: Issues,
    out: pd.DataFrame,
    conversions: dict[str, int],
) -> None:
    present = [c for c in rules.score_columns if c in staged]
    if rules.scale_lookup is None or "score_scale" not in staged:
        scale = pd.Series(rules.constants.get("madrs_source_scale", "madrs"), index=staged.index, dtype="string")
    else:
        normed = norm(staged["score_scale"])
        scale = normed.map(rules.scale_lookup).astype("string")
        unknown = normed.notna() & scale.isna()
        codes = ", ".join(sorted(rules.scale_lookup))
        issues.add(
            Reason.UNKNOWN_CODE,
            "score_scale",
            unknown,
            Message(
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
        value, bad = parse_numbers(raw)
        issues.add(
            Reason.WRONG_TYPE,
            column,
            bad,
            Message("'", raw, f"' is not a number ({column})"),
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
                Message(f"{column} ", value, f" is outside the {scales.scales[name].label} range {low:g}–{high:g}"),
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
