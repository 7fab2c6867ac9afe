"""Reason codes and the quarantine table: every input row that is not kept is accounted for here."""

from __future__ import annotations

from enum import StrEnum

import pandas as pd


class Reason(StrEnum):
    """Machine-readable reason codes; the message column carries the human explanation."""

    INELIGIBLE = "ineligible"  # outside the cohort's eligibility rules (e.g. a healthy control)
    MISSING_ID = "missing_id"  # no patient identifier: the row cannot be linked to anyone
    DUPLICATE = "duplicate_record"  # another record of the same patient won duplicate resolution
    UNKNOWN_CODE = "unknown_code"  # a category value that is not in the source's code list
    WRONG_TYPE = "wrong_type"  # a value that cannot be parsed as the column's type
    IMPOSSIBLE_VALUE = "impossible_value"  # outside the contract's physical/scale range
    ORPHAN_RECORD = "orphan_record"  # a measurement row for a participant not in the participants table
    INCONSISTENT = "inconsistent"  # values that contradict each other (e.g. unit without a value)
    # a long export's patient without a baseline visit row: a later visit is never used in its place
    MISSING_BASELINE = "missing_baseline"
    # too few predictors for a score (the model's scoring rule): a confident-looking probability built from
    # imputed values would be worse than none
    INSUFFICIENT_DATA = "insufficient_data"


QUARANTINE_COLUMNS: tuple[str, ...] = (
    "source",
    "source_file",
    "source_row",
    "patient_id",
    "reason_code",
    "column",
    "value",
    "message",
)

QUARANTINE_DTYPES: dict[str, str] = {
    "source": "string",
    "source_file": "string",
    "source_row": "Int64",
    "patient_id": "string",
    "reason_code": "string",
    "column": "string",
    "value": "string",
    "message": "string",
}


def quarantine_frame(records: list[dict] | pd.DataFrame | None = None) -> pd.DataFrame:
    """A quarantine table with the fixed columns and dtypes (empty when ``records`` is empty)."""
    frame = pd.DataFrame(records if records is not None else [], columns=list(QUARANTINE_COLUMNS))
    return frame.astype(QUARANTINE_DTYPES)
