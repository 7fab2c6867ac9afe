"""Value-level harmonisation: numbers parsed, codes looked up, units converted, and each problem collected as a
quarantine message.

Apart from the frame-level driver (pipeline/harmonise.py) because these pieces know nothing about a source or the
contract: they turn one column of raw values into typed values plus a mask of bad ones, and :class:`Issues`
collects those masks (in the order problems are found) until :func:`issue_rows` writes one quarantine row per
flagged input row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.quarantine import Reason, quarantine_frame


def _norm_codes(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each value's position among the distinct values (-1: missing), and those values normalised (None: empty).

    Exports repeat a handful of codes millions of times, so only the distinct values are normalised.
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if len(uniques) == 0:
        return codes, np.empty(0, dtype=object)
    text = pd.Series(uniques).astype("string").str.strip().str.casefold().to_numpy(dtype=object, na_value=None)
    return codes, np.array([None if value == "" else value for value in text], dtype=object)


def norm(series: pd.Series) -> pd.Series:
    """Codes compared case-insensitively, ignoring surrounding spaces; empty text counts as missing."""
    codes, text = _norm_codes(series)
    if len(text) == 0:
        return pd.Series(pd.NA, index=series.index, dtype="string")
    normalised = np.where(codes >= 0, text[np.maximum(codes, 0)], None)
    return pd.Series(normalised, index=series.index, dtype="string")


def map_codes(series: pd.Series, lookup: Mapping[str, object], dtype: str) -> tuple[pd.Series, np.ndarray]:
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


def parse_numbers(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
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


@dataclass(frozen=True)
class Message:
    """``prefix + value + suffix`` for each row, the value shown as text; built only for the rows flagged."""

    prefix: str
    values: pd.Series
    suffix: str

    def build(self, mask: np.ndarray) -> pd.Series:
        return self.prefix + _shown(self.values[mask]) + self.suffix


class Issues:
    """Collects (reason, column, row mask, message per flagged row) in the order problems are found."""

    def __init__(self, index: pd.Index) -> None:
        self.index = index
        self.items: list[tuple[Reason, str, np.ndarray, pd.Series]] = []

    def add(
        self, reason: Reason, column: str, mask: pd.Series | np.ndarray, messages: Message | pd.Series | str
    ) -> None:
        mask_arr = np.asarray(mask, dtype=bool)
        if not mask_arr.any():
            return
        # messages are kept for the flagged rows only (a few per chunk): text for every row is the slow part
        if isinstance(messages, Message):
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


def to_si(
    staged: pd.DataFrame, what: str, units: Mapping[str, float], si: str, issues: Issues
) -> tuple[pd.Series, int]:
    """``{what}_raw`` in SI units (``{what}_unit`` looked up in ``units``), and how many values were converted."""
    raw = staged[f"{what}_raw"]
    value, bad = parse_numbers(raw)
    issues.add(
        Reason.WRONG_TYPE,
        what,
        bad,
        Message("'", raw, f"' is not a number ({what})"),
    )
    unit = norm(staged[f"{what}_unit"]) if f"{what}_unit" in staged else pd.Series(pd.NA, index=staged.index)
    lookup = {k.casefold(): v for k, v in units.items()}
    factor = unit.map(lookup).astype("float64")
    unknown = value.notna() & factor.isna()
    issues.add(
        Reason.UNKNOWN_CODE,
        f"{what}_unit",
        unknown,
        Message("unit '", unit, f"' of {what} is not one of {', '.join(sorted(lookup))}"),
    )
    converted = int((value.notna() & factor.notna() & (factor != 1.0)).sum())
    return value * factor, converted


def issue_rows(
    issues: Issues, staged: pd.DataFrame, out: pd.DataFrame, source: str, quarantined: np.ndarray
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
