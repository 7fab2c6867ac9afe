"""The little analysis the card does on top of its inputs, pure and in one place: Riley's minimum sample size,
the thresholds where the decision curve beats both defaults, the registry gate re-checked from the CV metrics,
whether the test split would have picked another candidate, and which explanations disagree with the truth.

Each function returns plain values; the facts builders cite them as ``computed: …``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline import sample_size
from pipeline.errors import ConfigError
from pipeline.report.format import finite, fmt_number
from pipeline.report.inputs import CardInputs
from pipeline.tracking import gate_decision

# below this patient-level correlation a feature's explanations are called poor in the card's reading
POOR_CORRELATION = 0.5
TREE_FAMILIES = ("xgboost", "hist_gb")


@dataclass(frozen=True)
class SampleSizeCheck:
    parameters: int
    n_train: int
    events_train: int
    prevalence: float
    c_statistic: float | None
    c_from_params: bool
    riley: sample_size.RileySampleSize | None
    reason: str | None  # why Riley could not be computed

    @property
    def met(self) -> bool | None:
        return None if self.riley is None else self.n_train >= self.riley.n


def sample_size_check(inputs: CardInputs) -> SampleSizeCheck:
    """Riley's minimum development size: P = feature columns, φ = training prevalence, C stated or the CV AUROC."""
    parameters = len(inputs.feature_spec.feature_names)
    n_train = int(inputs.cv.get("n_train"))
    events = int(inputs.cv.get("events_train"))
    prevalence = events / n_train if n_train else math.nan
    from_params = inputs.params.anticipated_c is not None
    c_statistic = (
        inputs.params.anticipated_c if from_params else inputs.cv.get(f"candidates.{inputs.champion}.cv_auroc")
    )
    riley, reason = None, None
    if not finite(c_statistic):
        reason = "no anticipated C statistic (the champion's CV AUROC is missing)"
    else:
        try:
            riley = sample_size.riley_sample_size(parameters=parameters, prevalence=prevalence, c_statistic=c_statistic)
        except ConfigError as exc:
            reason = exc.message
    return SampleSizeCheck(
        parameters=parameters,
        n_train=n_train,
        events_train=events,
        prevalence=prevalence,
        c_statistic=float(c_statistic) if finite(c_statistic) else None,
        c_from_params=from_params,
        riley=riley,
        reason=reason,
    )


def net_benefit_ranges(curve: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Runs of consecutive thresholds where the model's net benefit exceeds both treat-all and treat-none."""
    ranges: list[tuple[float, float]] = []
    start: int | None = None
    better = [
        finite(row["net_benefit_model"])
        and float(row["net_benefit_model"])
        > max(float(row["net_benefit_treat_all"]), float(row["net_benefit_treat_none"]))
        for row in curve
    ]
    for i, flag in enumerate([*better, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            ranges.append((float(curve[start]["threshold"]), float(curve[i - 1]["threshold"])))
            start = None
    return ranges


def fmt_ranges(ranges: list[tuple[float, float]]) -> str:
    if not ranges:
        return "none"
    return "; ".join(
        fmt_number(low, 2) if low == high else f"{fmt_number(low, 2)} to {fmt_number(high, 2)}" for low, high in ranges
    )


def gate_reasons(inputs: CardInputs) -> list[str] | None:
    """Why the registry's gate refuses the champion (empty: it passes), re-applied to the champion's CV metrics
    with the train stage's own rule; None when the CV metrics lack what the rule reads."""
    champion = inputs.cv.get(f"candidates.{inputs.champion}") or {}
    try:
        return gate_decision(champion, inputs.train.gate.min_cv_auroc_lower, tuple(inputs.train.gate.calibration_slope))
    except (KeyError, TypeError):
        return None


def gate_verdict(inputs: CardInputs) -> str:
    """The gate's verdict in words (from the CV metrics, so the same in every MLflow store)."""
    reasons = gate_reasons(inputs)
    if reasons is None:
        return "The gate could not be re-checked from the CV metrics."
    recheck = "passes" if not reasons else "fails (" + "; ".join(reasons) + ")"
    return f"Re-checked from the CV metrics, the champion {recheck}."


def best_test_candidate(inputs: CardInputs) -> str | None:
    """The candidate with the highest test AUROC when it is not the champion (the test split never chooses)."""
    candidates = inputs.metrics.get("test.candidates") or {}
    scored = {name: c.get("auroc") for name, c in candidates.items() if finite(c.get("auroc"))}
    if not scored:
        return None
    best = max(sorted(scored), key=lambda name: scored[name])
    if best == inputs.champion or scored[best] == scored.get(inputs.champion):
        return inputs.champion
    return best


def poor_correlations(correlations: dict[str, Any]) -> list[str]:
    """Planted features whose SHAP values follow their true contributions poorly (or undefined)."""
    return [name for name, r in correlations.items() if not finite(r) or float(r) < POOR_CORRELATION]


def noise_above_planted(importance: list[dict[str, Any]]) -> list[str] | None:
    """Noise features the model uses more than its least-used planted one; None when the table cannot say."""
    if not importance or not {"fidelity_role", "mean_abs_shap", "feature"} <= set(importance[0]):
        return None
    planted = [
        r["mean_abs_shap"] for r in importance if r["fidelity_role"] == "planted effect" and finite(r["mean_abs_shap"])
    ]
    if not planted:
        return []
    weakest = min(planted)
    return [
        r["feature"]
        for r in importance
        if str(r["fidelity_role"]).startswith("noise") and finite(r["mean_abs_shap"]) and r["mean_abs_shap"] > weakest
    ]
