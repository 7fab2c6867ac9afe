"""The champion: the declared selection rule over the candidates' cross-validated per-patient losses."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.modelling.calibration import PROB_EPS
from pipeline.modelling.candidates import CandidateResult
from pipeline.modelling.params import SelectionMetric, SelectionParams


def _per_patient_loss(metric: SelectionMetric, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, PROB_EPS, 1 - PROB_EPS)
    if metric == "brier":
        return (p - y) ** 2
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def selection_table(results: list[CandidateResult], y: np.ndarray, selection: SelectionParams) -> dict[str, Any]:
    """Each candidate's mean CV loss, its margin over the best and the paired SE of that margin, and the champion.

    The margin's SE is that of the mean per-patient difference in loss between the candidate's and the best
    candidate's calibrated out-of-fold predictions (the same patients, so the comparison is paired). Under
    ``one_se`` the champion is the first candidate in ``simplicity_order`` whose margin is at most
    ``se_multiplier`` SEs; under ``best`` it is the lowest loss (ties: the simpler).
    """
    order = {name: i for i, name in enumerate(selection.simplicity_order)}
    losses = {r.name: _per_patient_loss(selection.metric, y, r.oof) for r in results}
    means = {name: float(loss.mean()) for name, loss in losses.items()}
    best = min(means, key=lambda name: (means[name], order[name]))
    rows: dict[str, dict[str, Any]] = {}
    for name, loss in losses.items():
        diff = loss - losses[best]
        se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
        margin = means[name] - means[best]
        within = margin <= selection.se_multiplier * se + 1e-12
        rows[name] = {
            "mean_loss": means[name],
            "margin": margin,
            "margin_se": se,
            "margin_in_se": margin / se if se > 0 else (0.0 if margin == 0 else None),  # None: JSON has no inf
            "eligible": bool(within) if selection.rule == "one_se" else name == best,
            "simplicity_rank": order[name] + 1,
        }
    eligible = [name for name in rows if rows[name]["eligible"]]
    champion = min(eligible, key=lambda name: order[name])
    return {
        "metric": selection.metric,
        "rule": selection.rule,
        "se_multiplier": selection.se_multiplier,
        "simplicity_order": list(selection.simplicity_order),
        "best_by_metric": best,
        "champion": champion,
        "candidates": rows,
    }


def select_champion(results: list[CandidateResult], y: np.ndarray, selection: SelectionParams) -> CandidateResult:
    """The candidate the declared rule picks (see :func:`selection_table`)."""
    name = selection_table(results, y, selection)["champion"]
    return next(r for r in results if r.name == name)


def selection_rule_text(selection: SelectionParams) -> str:
    """The declared selection rule in words (MLflow tag, model card)."""
    order = " < ".join(selection.simplicity_order)
    if selection.rule == "best":
        return f"lowest cross-validated {selection.metric} (ties: the simpler, in the order {order})"
    return (
        f"the simplest candidate (order {order}) whose cross-validated {selection.metric} is within "
        f"{selection.se_multiplier:g} paired standard error(s) of the lowest"
    )
