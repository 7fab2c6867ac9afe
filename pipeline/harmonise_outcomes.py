"""Outcome derivation: response, remission, sustained response, percent change, anxiety response and the
blood-pressure event, from the harmonised scores of the rows harmonisation keeps.

Apart from value parsing (pipeline/harmonise_values.py) and the frame-level driver (pipeline/harmonise.py)
because it runs once, after quarantine and duplicate resolution, on typed columns only; the thresholds are the
bottom-floor outcome definitions (pipeline/outcomes.py) the synthetic generator also uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.outcomes import BP_EVENT_DBP_PEAK, BP_EVENT_SBP_PEAK, BP_EVENT_SBP_RISE, RESPONSE_FRACTION
from pipeline.scales import ScaleConversions

RECORDED_PREFIX = "__recorded__"  # recorded scores of a scale without a conversion, kept for its outcome rules


def derive_outcomes(frame: pd.DataFrame, scales: ScaleConversions) -> pd.DataFrame:
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


def count_not_on_madrs(kept: pd.DataFrame, scales: ScaleConversions) -> dict[str, dict[str, int]]:
    """Per scale without a conversion: how many kept scores each MADRS-point column lacks for that reason."""
    counts: dict[str, dict[str, int]] = {}
    if "madrs_source_scale" not in kept:
        return counts
    for helper in (c for c in kept.columns if c.startswith(RECORDED_PREFIX)):
        column = helper.removeprefix(RECORDED_PREFIX)
        for scale, n in kept.loc[kept[helper].notna(), "madrs_source_scale"].value_counts().items():
            counts.setdefault(str(scale), {})[column] = int(n)
    return {scale: dict(sorted(columns.items())) for scale, columns in sorted(counts.items())}
