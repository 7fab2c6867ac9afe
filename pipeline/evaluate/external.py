"""External validation of the champion on the real cohorts (ds005917 and any other), with a plain statement of what
their size can and cannot show."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.errors import ConfigError
from pipeline.evaluate.performance import bootstrap, missing_value_handling, wald
from pipeline.evaluate.types import EXTERNAL_VALIDATION_EVENTS, EvaluateParams, ExternalOutcomes
from pipeline.features import build_features

if TYPE_CHECKING:  # the model module imports MLflow; only the type is needed here
    from pipeline.modelling.bundle import Bundle


def _auroc_with_interval(
    y: np.ndarray, p: np.ndarray, params: EvaluateParams, seed: int
) -> tuple[dict[str, float], str | None]:
    """AUROC and, when both classes have at least ``min_events_for_interval`` patients, DeLong's interval (logit
    scale; it behaves with few events), the stratified bootstrap interval beside it, and the leave-one-out range."""
    events = int(y.sum())
    out = {"n": int(y.size), "events": events, "auroc": metrics.auroc(y, p), "auroc_lower": math.nan}
    out["auroc_upper"] = math.nan
    minimum = params.external.min_events_for_interval
    if min(events, y.size - events) < minimum:
        return out, f"no interval: fewer than {minimum} events or non-events"
    delong = metrics.delong_ci(y, p, level=params.confidence_level)
    ci = bootstrap(y, p, metrics.auroc, params, seed, stratify=True)
    note = None
    lower, upper = delong.lower, delong.upper
    if not (math.isfinite(lower) and math.isfinite(upper)):  # AUROC 0 or 1: DeLong's variance is 0
        lower, upper = ci.lower, ci.upper
        note = "DeLong's interval is undefined at an AUROC of 0 or 1: the bootstrap interval is shown"
    out |= {
        "auroc_lower": lower,
        "auroc_upper": upper,
        "auroc_se": delong.se,
        "auroc_bootstrap_lower": ci.lower,
        "auroc_bootstrap_upper": ci.upper,
        "auroc_loo_min": delong.loo_min,
        "auroc_loo_max": delong.loo_max,
    }
    return out, note


def _spearman(p: np.ndarray, outcome: np.ndarray, level: float) -> dict[str, float]:
    known = ~np.isnan(outcome)
    if not known.any():  # the cohort has the column but no value in it
        return {"spearman_n": 0, "spearman_rho": math.nan, "spearman_lower": math.nan, "spearman_upper": math.nan}
    result = metrics.spearman_ci(p[known], outcome[known], level=level)
    return {
        "spearman_n": result.n,
        "spearman_rho": result.estimate,
        "spearman_lower": result.lower,
        "spearman_upper": result.upper,
        "spearman_p": result.p_value,
    }


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column]).to_numpy(dtype="float64", na_value=np.nan)


def _binary(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows where ``column`` is known, and its 0/1 values there."""
    known = frame[column].notna().to_numpy()
    return known, frame.loc[known, column].astype(bool).to_numpy(dtype="int64")


def _check_outcome_columns(outcomes: ExternalOutcomes, cohort: pd.DataFrame) -> None:
    for column in (outcomes.continuous, outcomes.negative_control, outcomes.negative_control_madrs):
        if column is not None and column not in cohort.columns:
            raise ConfigError(f"evaluate.external.outcomes names '{column}', which is not a cohort column")


def external_validation(
    cohort: pd.DataFrame,
    champion: Bundle,
    params: EvaluateParams,
    seed: int,
    *,
    name: str | None = None,
    development: tuple[str, ...] = ("synthetic",),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score an external cohort's patients with a known target; return (numbers for metrics.json, report).

    ``name`` defaults to ``evaluate.external.cohort``, the only one whose extra outcomes (continuous, negative
    control) are configured; a development cohort is never its own external validation.
    """
    ext = params.external
    name = name or ext.cohort
    target = champion.feature_spec.target
    if name in development:
        return {}, {"available": False, "reason": f"{name} is the development cohort of this model"}
    rows = cohort[(cohort["cohort"].astype("string") == name).fillna(False).to_numpy(dtype=bool)]
    if rows.empty:
        return {}, {"available": False, "reason": f"the clean cohort has no '{name}' patients"}
    if target not in rows.columns or rows[target].notna().sum() == 0:
        reason = f"{name} does not record this task's target '{target}'"
        return {}, {"available": False, "reason": reason}
    known_target = rows[target].notna().to_numpy()
    if len(set(rows.loc[known_target, target].astype(bool))) < 2:
        return {}, {"available": False, "reason": f"{name} has only one outcome class for '{target}'"}
    outcomes = ext.outcomes.get(target, ExternalOutcomes()) if name == ext.cohort else ExternalOutcomes()
    _check_outcome_columns(outcomes, rows)
    level = params.confidence_level

    features = build_features(rows, champion.feature_spec)
    p_all = champion.predict(features)
    known, y = _binary(rows, target)
    p = p_all[known]
    spec = champion.feature_spec
    # a canonical column is entirely missing when none of its feature columns (one per one-hot level) has a value
    observed = features.loc[known].notna().any(axis=0)
    observed_columns = {column for feature, column in spec.feature_to_column().items() if observed[feature]}
    entirely_missing = [c for c in spec.input_columns if c not in observed_columns]
    missing_features = [f for f in spec.feature_names if not observed[f]]

    numbers, interval_note = _auroc_with_interval(y, p, params, seed)
    recal = metrics.logistic_recalibration(y, p)
    citl_lower, citl_upper = wald(recal.calibration_intercept, recal.calibration_intercept_se, level)
    slope_lower, slope_upper = wald(recal.slope, recal.slope_se, level)
    (rate_lower,), (rate_upper,) = metrics.wilson_ci([int(y.sum())], [y.size], level=level)
    numbers |= {
        "mean_predicted": float(p.mean()),
        "observed_rate": float(y.mean()),
        "observed_rate_lower": float(rate_lower),
        "observed_rate_upper": float(rate_upper),
        "observed_minus_expected": metrics.observed_minus_expected(y, p),
        "calibration_in_the_large": recal.calibration_intercept,
        "calibration_in_the_large_lower": citl_lower,
        "calibration_in_the_large_upper": citl_upper,
        "calibration_slope": recal.slope,
        "calibration_slope_lower": slope_lower,
        "calibration_slope_upper": slope_upper,
        "features_entirely_missing": len(entirely_missing),
        "features_total": len(spec.input_columns),
    }
    if outcomes.continuous is not None:
        numbers |= _spearman(p_all, _numeric(rows, outcomes.continuous), level)

    control: dict[str, float] = {}
    control_note = None
    if outcomes.negative_control is not None:
        control_known, control_y = _binary(rows, outcomes.negative_control)
        if control_known.any():
            control, control_note = _auroc_with_interval(control_y, p_all[control_known], params, seed)
    if outcomes.negative_control_madrs is not None:
        baseline = _numeric(rows, "madrs_baseline")
        with np.errstate(divide="ignore", invalid="ignore"):
            control_change = 100.0 * (_numeric(rows, outcomes.negative_control_madrs) - baseline) / baseline
        control_change[~np.isfinite(control_change)] = np.nan
        control |= _spearman(p_all, control_change, level)
    if control:
        numbers["negative_control"] = control

    candidate = champion.info.candidate
    report = {
        "available": True,
        "cohort": name,
        "target": target,
        "model": {"candidate": candidate, "calibration": champion.info.calibration},
        "n": numbers["n"],
        "events": numbers["events"],
        "features_entirely_missing": entirely_missing,
        "features_observed": [c for c in spec.input_columns if c not in entirely_missing],
        "missing_value_handling": missing_value_handling(
            candidate, champion.estimator, spec.feature_names, missing_features
        ),
        "auroc_interval_note": interval_note,
        "continuous_outcome": outcomes.continuous,
        "continuous_outcome_expected_sign": "negative (higher predicted probability, larger MADRS drop)",
        "negative_control": {
            "outcome": outcomes.negative_control,
            "madrs": outcomes.negative_control_madrs,
            "auroc_interval_note": control_note,
        },
        "metrics": numbers,
        "limitations": external_limitations(
            numbers,
            cohort=name,
            target=target,
            missing=entirely_missing,
            inputs=spec.input_columns,
            level=level,
            development=development,
        ),
    }
    return numbers, report


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "undefined"


def _interval(lower: float, upper: float, level: float, digits: int = 2) -> str:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return "no interval"
    return f"{level:.0%} CI {lower:.{digits}f} to {upper:.{digits}f}"


def _reading(lower: float, upper: float, null: float, *, below: str, inside: str, above: str) -> str:
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return "no interval could be estimated, so the point estimate is not interpretable"
    if lower > null:
        return above
    if upper < null:
        return below
    return inside


def external_limitations(
    numbers: dict[str, Any],
    *,
    cohort: str,
    target: str,
    missing: list[str],
    inputs: list[str],
    level: float,
    development: tuple[str, ...] = ("synthetic",),
) -> str:
    """Plain text: what the external numbers can and cannot support, worded from the intervals themselves."""
    n, events = numbers["n"], numbers["events"]
    small = events < EXTERNAL_VALIDATION_EVENTS
    parts = [
        f"External check on {n} patients with {events} responders ({cohort}; target {target}). "
        + (
            "This is a sanity check, not a validation study: external validation is usually planned with at least "
            f"about {EXTERNAL_VALIDATION_EVENTS} events, and no claim beyond the intervals below is supported."
            if small
            else "No claim beyond the intervals below is supported."
        ),
        f"{len(missing)} of the model's {len(inputs)} input columns are missing for every patient here "
        f"({', '.join(missing) if missing else 'none'}), so the model runs on a reduced set of information."
        if missing
        else "Every input column of the model is recorded for at least some of these patients.",
    ]
    lower, upper = numbers["auroc_lower"], numbers["auroc_upper"]
    auroc_text = _reading(
        lower, upper, 0.5,
        below="the interval lies below 0.5: on these patients the model ranks worse than chance",
        inside="the interval includes 0.5: these data cannot distinguish the model from chance",
        above="the interval lies above 0.5, consistent with better-than-chance ranking of these patients; with so "
        "few events the size of the effect remains uncertain",
    )  # fmt: skip
    parts.append(f"AUROC {_fmt(numbers['auroc'])} ({_interval(lower, upper, level)}): {auroc_text}.")
    if math.isfinite(numbers.get("auroc_loo_min", math.nan)):
        parts.append(
            f"The estimate is unstable: leaving out any one of the {n} patients moves it between "
            f"{_fmt(numbers['auroc_loo_min'])} and {_fmt(numbers['auroc_loo_max'])}, and the stratified bootstrap "
            f"gives {_interval(numbers['auroc_bootstrap_lower'], numbers['auroc_bootstrap_upper'], level)}."
        )
    if "spearman_rho" in numbers and math.isfinite(numbers["spearman_rho"]):
        rho_text = _reading(
            numbers["spearman_lower"], numbers["spearman_upper"], 0.0,
            below="negative, the expected direction (higher predicted probability, larger drop)",
            inside="the interval includes 0, so no association is shown",
            above="positive, opposite to the expected direction",
        )  # fmt: skip
        interval = _interval(numbers["spearman_lower"], numbers["spearman_upper"], level)
        parts.append(
            f"Spearman rho between predicted probability and percent MADRS change "
            f"{numbers['spearman_rho']:.2f} (n = {numbers['spearman_n']}, {interval}): {rho_text}."
        )
    parts.append(
        f"Observed response rate {numbers['observed_rate']:.2f} "
        f"({_interval(numbers['observed_rate_lower'], numbers['observed_rate_upper'], level)}) against a mean "
        f"predicted probability of {numbers['mean_predicted']:.2f}; a model developed on "
        f"{' + '.join(development)} data is not expected to be calibrated for a different population"
        + (", and the calibration slope from so few events is too imprecise to read." if small else ".")
    )
    control = numbers.get("negative_control", {})
    if control:
        text = "Negative control (saline infusion): "
        if "auroc" in control:
            if min(control["events"], control["n"] - control["events"]) < 2:
                text += (
                    f"{control['events']} responder(s) among {control['n']} patients, too few for the AUROC "
                    f"({_fmt(control['auroc'])}) to mean anything"
                )
            else:
                interval = _interval(control["auroc_lower"], control["auroc_upper"], level)
                text += f"AUROC {_fmt(control['auroc'])} ({interval})"
        if "spearman_rho" in control and math.isfinite(control["spearman_rho"]):
            rho_text = _reading(
                control["spearman_lower"], control["spearman_upper"], 0.0,
                below="it excludes 0, so the score may also track non-specific (placebo) improvement",
                inside="its interval includes 0, as expected if the score is specific to ketamine, though so small "
                "a sample cannot show specificity",
                above="it excludes 0 in the unexpected direction",
            )  # fmt: skip
            text += (
                f"{'; ' if 'auroc' in control else ''}rank correlation with the percent MADRS change after saline "
                f"{control['spearman_rho']:.2f} "
                f"({_interval(control['spearman_lower'], control['spearman_upper'], level)}): {rho_text}"
            )
        parts.append(text + ".")
    return " ".join(parts)


def other_external_cohorts(
    cohort: pd.DataFrame, champion: Bundle, params: EvaluateParams, seed: int, *, development: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """External validation on every cohort that is neither a development cohort nor ``evaluate.external.cohort``
    (reported on its own) and records the task's target: transport of the model to each other clinic."""
    names = sorted(set(cohort["cohort"].dropna().astype(str)) - set(development) - {params.external.cohort})
    numbers, reports = {}, {}
    for name in names:
        found, report = external_validation(cohort, champion, params, seed, name=name, development=development)
        if found:
            numbers[name] = found
        reports[name] = report
    return numbers, reports


def external_parts(
    cohort: pd.DataFrame, champion: Bundle, params: EvaluateParams, seed: int, *, development: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's ``external`` (evaluate.external.cohort) and ``external_cohorts`` (every other cohort), and
    evaluation.json's ``external_validation`` and ``external_cohorts``: each present only when there is one."""
    numbers, report = external_validation(cohort, champion, params, seed, development=development)
    other_numbers, other_reports = other_external_cohorts(cohort, champion, params, seed, development=development)
    found = ({"external": numbers} if numbers else {}) | ({"external_cohorts": other_numbers} if other_numbers else {})
    reports = {"external_validation": report} | ({"external_cohorts": other_reports} if other_reports else {})
    return found, reports
