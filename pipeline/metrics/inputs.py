"""Shared input checks, array helpers, types and constants of the metrics package.

Bad input raises :class:`~pipeline.errors.PipelineError` naming the argument and the first offending
position; bad settings raise :class:`~pipeline.errors.ConfigError` (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import special

from pipeline.errors import ConfigError, PipelineError

FloatArray = NDArray[np.float64]
#: A metric as the bootstrap sees it: validated ``(y, p)`` float arrays in, one float out (NaN = undefined).
Metric = Callable[[FloatArray, FloatArray], float]
BinStrategy = Literal["uniform", "quantile"]

#: Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before a logit is taken (logit(1e-6) ≈ -13.8).
PROB_CLIP = 1e-6


# --------------------------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------------------------


def _to_float_1d(values: ArrayLike, name: str) -> FloatArray:
    """One-dimensional float64 copy of ``values``; rejects text and other non-numeric data."""
    if isinstance(values, pd.Series | pd.Index):
        if not (pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)):
            raise PipelineError(f"'{name}' must be numeric, got dtype {values.dtype}", column=name)
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    raw = np.asarray(values)
    if raw.ndim != 1:
        raise PipelineError(f"'{name}' must be one-dimensional, got shape {raw.shape}", column=name)
    if raw.dtype.kind not in "biuf":
        raise PipelineError(f"'{name}' must be numeric, got dtype {raw.dtype}", column=name)
    return raw.astype(np.float64)


def _first_bad(mask: NDArray[np.bool_]) -> int:
    return int(np.argmax(mask))


def _check_finite(arr: FloatArray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = _first_bad(bad)
        raise PipelineError(
            f"'{name}' has {int(bad.sum())} missing or non-finite value(s); the first is at position {i} "
            f"(0-based): {arr[i]}",
            row=i,
            column=name,
            hint="drop or impute rows with a missing outcome or prediction before evaluating",
        )


def _check_numeric(values: ArrayLike, name: str) -> FloatArray:
    arr = _to_float_1d(values, name)
    if arr.size == 0:
        raise PipelineError(f"'{name}' is empty", column=name, hint="evaluation needs at least one patient")
    _check_finite(arr, name)
    return arr


def _check_same_length(*named: tuple[str, FloatArray]) -> None:
    lengths = {name: arr.size for name, arr in named}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"'{name}' has {size}" for name, size in lengths.items())
        raise PipelineError(f"inputs must have one value per patient, but {detail}")


def _check_outcome(values: ArrayLike, name: str = "y") -> FloatArray:
    y = _check_numeric(values, name)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = _first_bad(bad)
        raise PipelineError(
            f"'{name}' must be a binary outcome coded 0/1; position {i} (0-based) is {y[i]} "
            f"({int(bad.sum())} value(s) not 0/1)",
            row=i,
            column=name,
            hint="code the outcome as 1 = event (response) and 0 = no event",
        )
    return y


def _check_probability(values: ArrayLike, name: str = "p") -> FloatArray:
    p = _check_numeric(values, name)
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = _first_bad(bad)
        raise PipelineError(
            f"'{name}' must be a probability in [0, 1]; position {i} (0-based) is {p[i]} "
            f"({int(bad.sum())} value(s) outside [0, 1])",
            row=i,
            column=name,
            hint="pass predicted probabilities (e.g. predict_proba(...)[:, 1]), not scores, logits or labels",
        )
    return p


def _validate(y: ArrayLike, p: ArrayLike, *, y_name: str = "y", p_name: str = "p") -> tuple[FloatArray, FloatArray]:
    """Checked float copies of an outcome and a probability vector of equal length."""
    y_arr = _check_outcome(y, y_name)
    p_arr = _check_probability(p, p_name)
    _check_same_length((y_name, y_arr), (p_name, p_arr))
    return y_arr, p_arr


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be strictly between 0 and 1, got {level}", hint="use e.g. 0.95")


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"'{name}' must be an integer >= {minimum}, got {value!r}")


def _check_thresholds(thresholds: ArrayLike, name: str = "thresholds") -> FloatArray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if t.ndim != 1 or t.size == 0:
        raise ConfigError(f"'{name}' must be a non-empty 1-D list of probabilities")
    if not np.all(np.isfinite(t)) or np.any((t < 0) | (t > 1)):
        raise ConfigError(f"'{name}' must lie in [0, 1], got {t.tolist()}")
    return t


def _ratio(num: ArrayLike, den: ArrayLike) -> FloatArray:
    """Elementwise num / den with NaN (not inf, not an error) where den == 0 or either side is NaN."""
    num_arr, den_arr = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    out = np.full(num_arr.shape, np.nan)
    np.divide(num_arr, den_arr, out=out, where=den_arr != 0)
    return out


def _logit(p: FloatArray, clip: float = PROB_CLIP) -> FloatArray:
    return special.logit(np.clip(p, clip, 1.0 - clip))


def _both_classes(y: FloatArray) -> bool:
    events = y.sum()
    return 0 < events < y.size
