"""What counts as a missing value, in every source and in the scorer: one shared definition.

Exports from R, SAS, SPSS, Stata, Excel and pandas spell "missing" in many ways. A value whose text, with
surrounding whitespace removed and case ignored, is one of :data:`MISSING_MARKERS` is read as missing in every
column, by the clean stage and by ``trd score``. A source can add its own markers (``missing_values:`` in
``configs/sources/<name>.yaml``, e.g. an SPSS sentinel such as ``-99``); markers that are numbers also match
numeric columns by value.

The verdict depends on the value alone, never on the rest of its chunk, so a file scores the same at any chunk size.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# compared after stripping whitespace and lower-casing; "" covers empty and whitespace-only cells
MISSING_MARKERS: tuple[str, ...] = (
    "",
    "na",  # R, pandas
    "n/a",  # Excel, BIDS
    "nan",  # pandas, NumPy
    "null",  # SQL, JSON
    "none",  # Python
    "#n/a",  # Excel
    "#null!",  # Excel
    "<na>",  # pandas' NA written as text
    ".",  # SAS, Stata
)


def normalise_markers(markers: Iterable[str]) -> tuple[str, ...]:
    """Markers as they are compared: stripped and lower-cased, without repeats, in a stable order."""
    return tuple(dict.fromkeys(str(m).strip().lower() for m in markers))


def markers_with(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The shared markers plus a source's own."""
    return normalise_markers([*MISSING_MARKERS, *extra])


def _numeric_markers(markers: Iterable[str]) -> np.ndarray:
    values = []
    for marker in markers:
        try:
            number = float(marker)
        except ValueError:
            continue
        if np.isfinite(number):  # "nan" and "inf" are text markers, not numbers to compare with
            values.append(number)
    return np.array(values, dtype="float64")


def missing_mask(series: pd.Series, markers: tuple[str, ...]) -> np.ndarray:
    """True where ``series`` holds a missing-value marker (values already missing are not counted)."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return np.zeros(len(series), dtype=bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        numbers = _numeric_markers(markers)
        if not len(numbers):
            return np.zeros(len(series), dtype=bool)
        return series.isin(numbers).to_numpy(dtype=bool, na_value=False)
    text = pa.array(series.astype("string").array, type=pa.string())
    normalised = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    hit = pc.is_in(normalised, value_set=pa.array(list(markers), type=pa.string()))
    hit = hit.to_numpy(zero_copy_only=False).astype(bool) & series.notna().to_numpy()
    numbers = _numeric_markers(markers)
    if len(numbers):  # "-99", "-99.0" and -99 are the same sentinel
        as_numbers = pd.to_numeric(pd.Series(normalised.to_numpy(zero_copy_only=False)), errors="coerce")
        hit |= as_numbers.isin(numbers).to_numpy(dtype=bool)
    return hit


def blank_missing(series: pd.Series, markers: tuple[str, ...]) -> pd.Series:
    """``series`` with every marker replaced by a missing value (the same object when there is none)."""
    hit = missing_mask(series, markers)
    if not hit.any():
        return series
    return series.mask(hit)
