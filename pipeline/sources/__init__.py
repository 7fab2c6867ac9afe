"""Source adapters: each turns one cohort's files into a *staged* frame for the shared harmonisation.

A staged frame has one row per input record, canonical column names (configs/cohort_schema.yaml) holding the
source's *raw* values (codes, units and scales as recorded), plus the bookkeeping columns ``source_file`` and
``source_row`` (1-based data-row number in that file), and any helper columns the source's YAML declares
(weight/height with units, the depression-scale code). Harmonisation (pipeline/harmonise.py) does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

BOOKKEEPING_COLUMNS: tuple[str, ...] = ("source_file", "source_row")


@dataclass(frozen=True)
class Staged:
    """What an adapter returns."""

    source: str
    # one row per kept input record (a long export's: per patient), raw values under canonical names, bookkeeping
    rows: pd.DataFrame
    excluded: pd.DataFrame  # quarantine_frame() rows for records the adapter already set aside
    rows_in: int  # records read from the source's primary table: rows_in == len(rows) + len(excluded)
    # per file read: raw columns present but mapped to nothing (reported in reports/cleaning.json)
    unused_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict, kw_only=True)
