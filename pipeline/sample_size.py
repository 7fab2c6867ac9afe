"""Minimum sample size for developing a binary-outcome prediction model (Riley et al.), and the gate the train
stage applies before any fitting.

Pure: numbers in, numbers out (no I/O, no logging). :func:`riley_sample_size` gives the three criteria of Riley et
al. (shrinkage >= 0.9, optimism in Nagelkerke R² <= 0.05, overall risk within ±0.05); :func:`check_sample_size`
applies them to a development cohort (its size, its events, the task's candidate parameters and an anticipated C
statistic declared in params) and :func:`gate_message` says what to do when it is too small. The model card's
sample-size section imports the same functions.

References
----------
* Riley RD, Ensor J, Snell KIE, et al. Calculating the sample size required for developing a clinical prediction
  model. BMJ 2020;368:m441; Riley RD, Snell KIE, Ensor J, et al. Stat Med 2019;38:1276-96 (Part II).
* Riley RD, Van Calster B, Collins GS. A note on estimating the Cox-Snell R² from a reported C statistic (AUROC)
  to inform sample size calculations for developing a prediction model with a binary outcome. Stat Med
  2021;40:859-64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from pipeline.errors import ConfigError

__all__ = [
    "RileySampleSize",
    "SampleSizeCheck",
    "check_sample_size",
    "gate_message",
    "r2_cox_snell_from_c_statistic",
    "riley_sample_size",
]


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"'{name}' must be an integer >= 1, got {value!r}")


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


# --------------------------------------------------------------------------------------------------------------
# the gate: a development cohort against the Riley minimum
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSizeCheck:
    """A development cohort against the Riley minimum for its task.

    Attributes:
        n, events: the development cohort's patients and responders.
        parameters: the task's candidate predictor parameters (design columns of the feature matrix).
        anticipated_c: the C statistic declared in params.
        riley: the criteria at the cohort's prevalence; None when they are undefined (no events or no non-events).
        passed: n >= riley.n.
        events_per_parameter: events / parameters in the cohort itself.
        reason: why the criteria are undefined, if they are.
    """

    n: int
    events: int
    parameters: int
    anticipated_c: float
    riley: RileySampleSize | None
    passed: bool
    events_per_parameter: float
    reason: str | None = None

    def as_dict(self) -> dict[str, float | int | bool | str | None]:
        """JSON-ready numbers (cv_metrics.json, the model card)."""
        riley = self.riley
        return {
            "n": self.n,
            "events": self.events,
            "parameters": self.parameters,
            "prevalence": self.events / self.n if self.n else None,
            "anticipated_c": self.anticipated_c,
            "events_per_parameter": self.events_per_parameter,
            "passed": self.passed,
            "minimum_n": riley.n if riley else None,
            "minimum_events": riley.events if riley else None,
            "minimum_events_per_parameter": riley.epp if riley else None,
            "n_shrinkage": riley.n_shrinkage if riley else None,
            "n_r2_difference": riley.n_r2_difference if riley else None,
            "n_overall_risk": riley.n_overall_risk if riley else None,
            "r2_cs": riley.r2_cs if riley else None,
            "reason": self.reason,
        }


def check_sample_size(
    *,
    n: int,
    events: int,
    parameters: int,
    anticipated_c: float,
    shrinkage: float = 0.9,
    r2_difference: float = 0.05,
    risk_margin: float = 0.05,
) -> SampleSizeCheck:
    """Whether ``n`` patients with ``events`` responders meet the Riley minimum for ``parameters`` candidate
    parameters and an anticipated C statistic, at the cohort's own prevalence."""
    _check_positive_int(parameters, "parameters")
    if n < 0 or not 0 <= events <= n:
        raise ConfigError(f"inconsistent counts: {events} events among {n} patients")
    epp = events / parameters
    if events in (0, n):
        reason = (
            f"{events} patients with the outcome among {n}: an outcome prevalence of 0 or 1 leaves nothing to predict"
        )
        return SampleSizeCheck(n, events, parameters, anticipated_c, None, False, epp, reason)
    riley = riley_sample_size(
        parameters=parameters,
        prevalence=events / n,
        c_statistic=anticipated_c,
        shrinkage=shrinkage,
        r2_difference=r2_difference,
        risk_margin=risk_margin,
    )
    return SampleSizeCheck(n, events, parameters, anticipated_c, riley, n >= riley.n, epp)


def gate_message(check: SampleSizeCheck, *, cohort: str, task: str) -> str:
    """One paragraph for a cohort below the minimum: the numbers and what to do."""
    have = (
        f"the development cohort '{cohort}' has {check.n} patients with a known outcome, {check.events} of "
        f"them with the outcome ({check.events_per_parameter:.2f} events per candidate parameter, {check.parameters} "
        f"parameters for task {task})"
    )
    if check.riley is None:
        return f"{have}; {check.reason}"
    r = check.riley
    return (
        f"{have}; the Riley et al. minimum for an anticipated C statistic of {check.anticipated_c:g} at prevalence "
        f"{r.prevalence:.3f} is {r.n} patients ({r.events:.0f} with the outcome, {r.epp:.1f} events per parameter; "
        f"criteria: shrinkage {r.n_shrinkage}, optimism in R² {r.n_r2_difference}, overall risk {r.n_overall_risk})"
    )


GATE_HINT = (
    "add patients (or pool cohorts: split.training_cohort takes a list), reduce the task's candidate predictors "
    "(tasks.<task>.predictors: a pre-specified list, or tasks.<task>.exclude_predictors), or, knowing the model "
    "will be overfitted, set "
    "train.sample_size.override: true (the model card then says 'underpowered')"
)
