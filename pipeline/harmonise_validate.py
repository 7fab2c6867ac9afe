"""The last step of harmonisation: kept rows become the canonical contract's frame, validated.

Apart from the frame-level driver (pipeline/harmonise.py) because it is about pandera, not about values: a
vectorised check that accepts a passing chunk without pandera's per-check machinery (the scorer validates
thousands of chunks), and pandera itself, which names every failure, whenever that check does not accept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.errors

from pipeline.contract import CohortContract
from pipeline.errors import PipelineError


def to_contract(kept: pd.DataFrame, contract: CohortContract, source: str, *, unique_ids: bool) -> pd.DataFrame:
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
