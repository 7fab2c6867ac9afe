"""External validation against a continuous outcome: Spearman's rho with a Fisher-z interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from pipeline.errors import ConfigError
from pipeline.metrics.inputs import _check_level, _check_numeric, _check_same_length

# --------------------------------------------------------------------------------------------------------------
# External validation against a continuous outcome
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationCI:
    """A correlation with a Fisher-z confidence interval.

    Attributes:
        estimate: Spearman's rho.
        lower, upper: tanh(atanh(rho) ∓ z·SE), NaN when n < 4 or rho is undefined.
        p_value: two-sided test of rho = 0 (scipy's t approximation).
        n: number of pairs.
        level: nominal coverage.
        se_method: the standard error used for atanh(rho).
    """

    estimate: float
    lower: float
    upper: float
    p_value: float
    n: int
    level: float
    se_method: str


def spearman_ci(
    x: ArrayLike,
    y: ArrayLike,
    *,
    level: float = 0.95,
    se_method: Literal["bonett-wright", "fieller", "fisher"] = "bonett-wright",
) -> CorrelationCI:
    """Spearman's rank correlation with a Fisher-z interval, e.g. predicted probability vs percent MADRS change.

    The interval is tanh(atanh(rho) ± z_{(1+level)/2}·SE) with SE of atanh(rho):

    * ``"bonett-wright"`` (default): sqrt((1 + rho²/2) / (n − 3)) (Bonett & Wright 2000, recommended for rho);
    * ``"fieller"``: sqrt(1.06 / (n − 3)) (Fieller, Hartley & Pearson 1957);
    * ``"fisher"``: sqrt(1 / (n − 3)), the Pearson formula (too narrow for Spearman's rho).

    Mind the sign: if the change is (follow-up − baseline)/baseline, a useful model has a *negative* rho.
    """
    _check_level(level)
    if se_method not in ("bonett-wright", "fieller", "fisher"):
        raise ConfigError(f"se_method must be 'bonett-wright', 'fieller' or 'fisher', got {se_method!r}")
    x_arr = _check_numeric(x, "x")
    y_arr = _check_numeric(y, "y")
    _check_same_length(("x", x_arr), ("y", y_arr))
    n = int(x_arr.size)
    if n < 3 or np.ptp(x_arr) == 0 or np.ptp(y_arr) == 0:
        # Fewer than three pairs or a constant variable: rho is undefined or degenerate.
        return CorrelationCI(math.nan, math.nan, math.nan, math.nan, n, level, se_method)
    result = stats.spearmanr(x_arr, y_arr)
    rho, p_value = float(result.statistic), float(result.pvalue)
    if n < 4:
        return CorrelationCI(rho, math.nan, math.nan, p_value, n, level, se_method)
    factor = {"bonett-wright": 1.0 + rho * rho / 2.0, "fieller": 1.06, "fisher": 1.0}[se_method]
    se = math.sqrt(factor / (n - 3))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    centre = math.atanh(min(max(rho, -1.0 + 1e-15), 1.0 - 1e-15))  # |rho| = 1 would give an infinite z
    return CorrelationCI(rho, math.tanh(centre - z * se), math.tanh(centre + z * se), p_value, n, level, se_method)
