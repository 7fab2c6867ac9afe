"""Minimum sample size for developing a prediction model of a binary outcome (Riley et al.)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from pipeline.errors import ConfigError
from pipeline.metrics.inputs import _check_positive_int

# --------------------------------------------------------------------------------------------------------------
# Minimum sample size for model development (Riley et al.)
# --------------------------------------------------------------------------------------------------------------

# Gauss–Hermite (probabilists') nodes for E[f(Z)], Z ~ N(0, 1). The integrands below are smooth (log-sigmoids of
# a linear function), so 200 nodes give R²cs to ~1e-12.
_GH_NODES, _GH_WEIGHTS = special.roots_hermitenorm(200)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def _null_loglik_per_patient(prevalence: float) -> float:
    return prevalence * math.log(prevalence) + (1.0 - prevalence) * math.log(1.0 - prevalence)


def r2_cox_snell_from_c_statistic(c_statistic: float, prevalence: float) -> float:
    """Anticipated Cox-Snell R² of a logistic model with a given C statistic and outcome prevalence.

    Same model as pmsampsize's ``cstat2rsq`` (Riley, Van Calster & Collins 2021): the linear predictor is
    N(μ, 1) in events and N(0, 1) in non-events with μ = √2·Φ⁻¹(C), which gives AUROC = C. pmsampsize simulates
    10⁶ patients and fits a logistic regression; here the population limit of that simulation is computed
    exactly. Under this binormal model the true log-odds is linear in the predictor (logit(φ) − μ²/2 + μ·x), so
    the fitted model is the true one and LR/n = 2·[E log P(y | x) − (φ ln φ + (1 − φ) ln(1 − φ))], evaluated by
    Gauss–Hermite quadrature; R²cs = 1 − exp(−LR/n). Deterministic (no seed) and free of Monte Carlo error.
    """
    if not 0.5 < c_statistic < 1:
        raise ConfigError(f"C statistic must be in (0.5, 1), got {c_statistic}")
    if not 0 < prevalence < 1:
        raise ConfigError(f"prevalence must be in (0, 1), got {prevalence}")
    mu = math.sqrt(2.0) * float(stats.norm.ppf(c_statistic))
    intercept = math.log(prevalence / (1.0 - prevalence)) - mu * mu / 2.0
    ll_events = float(np.sum(_GH_WEIGHTS * special.log_expit(intercept + mu * (_GH_NODES + mu))))
    ll_nonevents = float(np.sum(_GH_WEIGHTS * special.log_expit(-(intercept + mu * _GH_NODES))))
    loglik = prevalence * ll_events + (1.0 - prevalence) * ll_nonevents
    lr_per_patient = 2.0 * (loglik - _null_loglik_per_patient(prevalence))
    return float(1.0 - math.exp(-lr_per_patient))


@dataclass(frozen=True)
class RileySampleSize:
    """Minimum development sample size for a binary-outcome prediction model (Riley et al. BMJ 2020;368:m441).

    Attributes:
        n: the minimum sample size, max(n_shrinkage, n_r2_difference, n_overall_risk).
        n_shrinkage: criterion 1, expected uniform shrinkage ≥ ``shrinkage`` (default 0.9).
        n_r2_difference: criterion 2, apparent − adjusted Nagelkerke R² ≤ 0.05.
        n_overall_risk: criterion 3, overall risk estimated within ±0.05 (95 %).
        events: expected events at ``n``, n·prevalence (not rounded).
        epp: events per candidate predictor parameter at ``n``.
        r2_cs: the anticipated Cox-Snell R² used.
        max_r2_cs: its maximum possible value, 1 − exp(2·lnL_null/n).
        shrinkage_criterion2: the shrinkage S₂ implied by criterion 2.
        expected_shrinkage: the larger of ``shrinkage`` and S₂ (pmsampsize's "final" shrinkage).
        parameters, prevalence: the inputs.
    """

    n: int
    n_shrinkage: int
    n_r2_difference: int
    n_overall_risk: int
    events: float
    epp: float
    r2_cs: float
    max_r2_cs: float
    shrinkage_criterion2: float
    expected_shrinkage: float
    parameters: int
    prevalence: float


def riley_sample_size(
    *,
    parameters: int,
    prevalence: float,
    r2_cs: float | None = None,
    c_statistic: float | None = None,
    shrinkage: float = 0.9,
    r2_difference: float = 0.05,
    risk_margin: float = 0.05,
    pmsampsize_rounding: bool = True,
) -> RileySampleSize:
    """Riley et al. minimum sample size for developing a logistic prediction model (criteria 1-3).

    Give the anticipated Cox-Snell R² (``r2_cs``) or the anticipated C statistic (``c_statistic``, converted with
    :func:`r2_cox_snell_from_c_statistic`), not both.

    1. n₁ = P / ((S − 1)·ln(1 − R²cs/S)), S = ``shrinkage``;
    2. S₂ = R²cs / (R²cs + δ·maxR²cs), maxR²cs = 1 − exp(2·lnL_null/n), lnL_null/n = φ ln φ + (1 − φ) ln(1 − φ),
       δ = ``r2_difference``; n₂ = P / ((S₂ − 1)·ln(1 − R²cs/S₂));
    3. n₃ = (1.96 / ``risk_margin``)²·φ(1 − φ).

    Each n is rounded up. ``pmsampsize_rounding=True`` (default) rounds maxR²cs to 2 and S₂ to 3 decimals as the
    R package pmsampsize does, so results match it exactly; False uses unrounded values.
    """
    _check_positive_int(parameters, "parameters")
    if not 0 < prevalence < 1:
        raise ConfigError(f"prevalence must be in (0, 1), got {prevalence}")
    if not 0 < shrinkage < 1:
        raise ConfigError(f"shrinkage must be in (0, 1), got {shrinkage}")
    if not (0 < r2_difference < 1 and 0 < risk_margin < 1):
        raise ConfigError("r2_difference and risk_margin must be in (0, 1)")
    if (r2_cs is None) == (c_statistic is None):
        raise ConfigError("give exactly one of r2_cs or c_statistic")
    r2 = r2_cox_snell_from_c_statistic(c_statistic, prevalence) if c_statistic is not None else float(r2_cs)
    max_r2 = 1.0 - math.exp(2.0 * _null_loglik_per_patient(prevalence))
    if pmsampsize_rounding:
        max_r2 = round(max_r2, 2)
    if not 0 < r2 < min(max_r2, shrinkage):
        raise ConfigError(
            f"anticipated Cox-Snell R² {r2:.4f} must be in (0, {min(max_r2, shrinkage):.4f}): below the maximum "
            f"possible R² for prevalence {prevalence} ({max_r2:.4f}) and below the target shrinkage",
            hint="Cox-Snell R² is bounded well below 1 for a binary outcome; check it is not Nagelkerke's R²",
        )

    def n_for(s: float) -> int:
        return math.ceil(parameters / ((s - 1.0) * math.log(1.0 - r2 / s)))

    s2 = r2 / (r2 + r2_difference * max_r2)
    if pmsampsize_rounding:
        s2 = round(s2, 3)
    n1, n2 = n_for(shrinkage), n_for(s2)
    n3 = math.ceil((1.96 / risk_margin) ** 2 * prevalence * (1.0 - prevalence))
    n = max(n1, n2, n3)
    return RileySampleSize(
        n=n,
        n_shrinkage=n1,
        n_r2_difference=n2,
        n_overall_risk=n3,
        events=n * prevalence,
        epp=n * prevalence / parameters,
        r2_cs=r2,
        max_r2_cs=max_r2,
        shrinkage_criterion2=s2,
        expected_shrinkage=max(shrinkage, s2),
        parameters=int(parameters),
        prevalence=float(prevalence),
    )
