"""The headline metrics in one dict, and the subgroup (fairness) table with small-cell suppression."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from pipeline.errors import ConfigError, PipelineError
from pipeline.metrics.calibration import (
    _logistic_recalibration,
    _observed_minus_expected,
    expected_calibration_error,
)
from pipeline.metrics.discrimination import _auprc, _auroc, _brier, _scaled_brier
from pipeline.metrics.inputs import FloatArray, _ratio, _validate

#: Small-cell suppression threshold (seismometer ``censor_min_count``); lower values only for synthetic data.
DEFAULT_MIN_CELL = 10


# --------------------------------------------------------------------------------------------------------------
# Summary and subgroup (fairness) table
# --------------------------------------------------------------------------------------------------------------


def performance_summary(y: ArrayLike, p: ArrayLike, *, n_bins: int = 10) -> dict[str, float]:
    """The headline metrics in one flat dict (for ``metrics.json`` and the model card), point estimates only.

    Keys: n, events, prevalence, mean_predicted, auroc, auprc, brier, scaled_brier, observed_minus_expected,
    calibration_intercept, calibration_slope, recalibration_intercept, ece (``n_bins`` equal-width bins).
    """
    y_arr, p_arr = _validate(y, p)
    recal = _logistic_recalibration(y_arr, p_arr)
    return {
        "n": float(y_arr.size),
        "events": float(y_arr.sum()),
        "prevalence": float(y_arr.mean()),
        "mean_predicted": float(p_arr.mean()),
        "auroc": _auroc(y_arr, p_arr),
        "auprc": _auprc(y_arr, p_arr),
        "brier": _brier(y_arr, p_arr),
        "scaled_brier": _scaled_brier(y_arr, p_arr),
        "observed_minus_expected": _observed_minus_expected(y_arr, p_arr),
        "calibration_intercept": recal.calibration_intercept,
        "calibration_slope": recal.slope,
        "recalibration_intercept": recal.intercept,
        "ece": expected_calibration_error(y_arr, p_arr, n_bins=n_bins, strategy="uniform"),
    }


_SUBGROUP_VALUES = ("n", "events", "event_rate", "mean_predicted", "auroc", "o_minus_e", "o_e_ratio")
_MISSING_LEVEL = "(missing)"


def _subgroup_row(y: FloatArray, p: FloatArray) -> dict[str, float]:
    mean_p = float(p.mean())
    return {
        "n": y.size,
        "events": int(y.sum()),
        "event_rate": float(y.mean()),
        "mean_predicted": mean_p,
        "auroc": _auroc(y, p),
        "o_minus_e": float(y.mean()) - mean_p,
        "o_e_ratio": float(_ratio(y.mean(), mean_p)),
    }


def subgroup_table(
    frame: pd.DataFrame,
    groups: str | Sequence[str],
    *,
    y: str = "y",
    p: str = "p",
    min_cell: int = DEFAULT_MIN_CELL,
    suppress_small_event_counts: bool = True,
) -> pd.DataFrame:
    """Per-subgroup performance with ratios to the overall population and small-cell suppression.

    One ``overall`` row, then one row per level of each grouping column (missing values form the level
    ``"(missing)"``: patients whose group is unknown are a subgroup too). Columns:

    * ``group`` (the grouping column, or ``"overall"``), ``level`` (as text);
    * ``n``, ``events`` (nullable integers), ``event_rate``, ``mean_predicted``;
    * ``auroc`` (NaN when the level has only one outcome class);
    * ``o_minus_e`` = mean(y) − mean(p) (calibration-in-the-large) and ``o_e_ratio`` = mean(y) / mean(p);
    * ``event_rate_ratio``, ``auroc_ratio``: the level's value divided by the overall value (seismometer's
      fairness convention; 1 = same as overall). O − E gets no ratio: a ratio of two differences that can both be
      near 0 is unstable; compare ``o_minus_e`` directly or use ``o_e_ratio``;
    * ``suppressed`` (bool) and ``suppression_reason``.

    Small-cell suppression (seismometer ``censor_min_count``): a row is suppressed when ``n < min_cell`` or, with
    ``suppress_small_event_counts`` (default), when events or non-events ``< min_cell`` (the event count is itself
    a cell). If exactly one level of a grouping column is suppressed, the smallest other level is suppressed too
    (reason ``"secondary"``), since otherwise its counts could be recovered by subtraction from the overall row.
    Suppressed rows keep their ``group``/``level`` but every number is missing (``<NA>``/NaN); read them as "fewer
    than ``min_cell``". ``min_cell`` below 10 triggers a warning: only for data that do not identify real
    individuals (e.g. synthetic data).
    """
    if isinstance(min_cell, bool) or not isinstance(min_cell, int | np.integer) or min_cell < 0:
        raise ConfigError(f"'min_cell' must be a non-negative integer, got {min_cell!r}")
    if min_cell < DEFAULT_MIN_CELL:
        warnings.warn(
            f"small-cell suppression threshold min_cell={min_cell} is below {DEFAULT_MIN_CELL}: use this only for "
            "data that do not identify real individuals (e.g. synthetic data)",
            UserWarning,
            stacklevel=2,
        )
    group_cols = [groups] if isinstance(groups, str) else list(groups)
    for column in [y, p, *group_cols]:
        if column not in frame.columns:
            raise PipelineError(f"column '{column}' not found; have {list(frame.columns)}", column=column)
    y_arr, p_arr = _validate(frame[y], frame[p], y_name=y, p_name=p)

    records: list[dict[str, object]] = [{"group": "overall", "level": "all", **_subgroup_row(y_arr, p_arr)}]
    for column in group_cols:
        # Sorted levels (category order for a categorical column), then the missing level last.
        codes, uniques = pd.factorize(frame[column], sort=True, use_na_sentinel=True)
        levels = [(code, str(value)) for code, value in enumerate(uniques)]
        if (codes < 0).any():
            levels.append((-1, _MISSING_LEVEL))
        for code, level in levels:
            mask = codes == code
            records.append({"group": column, "level": level, **_subgroup_row(y_arr[mask], p_arr[mask])})
    table = pd.DataFrame.from_records(records)

    reason = np.full(len(table), "", dtype=object)
    small_n = table["n"].to_numpy() < min_cell
    reason[small_n] = f"n<{min_cell}"
    if suppress_small_event_counts:
        small_events = ~small_n & (table["events"].to_numpy() < min_cell)
        small_nonevents = ~small_n & ~small_events & ((table["n"] - table["events"]).to_numpy() < min_cell)
        reason[small_events] = f"events<{min_cell}"
        reason[small_nonevents] = f"non-events<{min_cell}"
    for column in group_cols:
        rows = np.flatnonzero(table["group"].to_numpy() == column)
        primary = rows[reason[rows] != ""]
        others = rows[reason[rows] == ""]
        if primary.size == 1 and others.size > 0:
            reason[others[np.argmin(table["n"].to_numpy()[others])]] = "secondary"

    overall = table.iloc[0]
    table["event_rate_ratio"] = _ratio(table["event_rate"], overall["event_rate"])
    table["auroc_ratio"] = _ratio(table["auroc"], overall["auroc"])
    suppressed = reason != ""
    table["n"] = table["n"].astype("Int64")
    table["events"] = table["events"].astype("Int64")
    for column in [*_SUBGROUP_VALUES, "event_rate_ratio", "auroc_ratio"]:
        table.loc[suppressed, column] = pd.NA if column in ("n", "events") else np.nan
    table["suppressed"] = suppressed
    table["suppression_reason"] = pd.Series(reason, dtype="string")
    return table
