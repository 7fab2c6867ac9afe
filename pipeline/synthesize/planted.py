"""Reading the generator's planted truth back (planted_effects.json, true_contributions.parquet): the parser lives
next to :mod:`pipeline.synthesize.effects`, which writes both files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.synthesize.effects import CONTRIBUTION_SEPARATOR

PLANTED_EFFECTS_FILE = "planted_effects.json"
TRUE_CONTRIBUTIONS_FILE = "true_contributions.parquet"


@dataclass(frozen=True)
class PlantedTerm:
    """One term of the true linear predictor: an encoding of one or more canonical features."""

    name: str
    features: tuple[str, ...]
    coefficient: float


@dataclass(frozen=True)
class PlantedTruth:
    """The planted log-odds model of one outcome, as the fidelity checks need it."""

    outcome: str
    exact: bool  # log-odds exactly linear in the terms (planted_effects.json 'exact')
    terms: tuple[PlantedTerm, ...]
    # canonical feature -> mean |SHAP| of the true model; a two-feature interaction's share is split evenly
    importance: dict[str, float]
    interactions: dict[str, float]  # 'a:b' -> its mean |contribution| before the split


def read_planted_effects(path: Path) -> dict[str, Any] | None:
    """``planted_effects.json`` as a dict; None when the file does not exist, an error when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineError(
            f"planted effects unreadable ({exc})", file=path, hint="re-create them: dvc repro synthesize"
        ) from None
    if not isinstance(payload, dict):
        raise PipelineError("planted effects must be a JSON object", file=path, hint="dvc repro synthesize")
    return payload


def parse_planted_truth(effects: dict[str, Any], outcome: str, *, file: Path | str) -> PlantedTruth | str:
    """The planted truth of ``outcome``, or the reason it has none (e.g. no linear coefficients)."""
    try:
        entry = effects["outcomes"].get(outcome)
        if entry is None:
            return f"the planted effects describe no outcome '{outcome}'"
        if "coefficients" not in entry:
            note = f" ({entry['note']})" if "note" in entry else ""
            return f"the planted effects of '{outcome}' have no coefficients{note}"
        terms = tuple(
            PlantedTerm(
                name=str(name),
                features=tuple(str(f) for f in effects["terms"][name]["features"]),
                coefficient=float(coefficient),
            )
            for name, coefficient in entry["coefficients"].items()
        )
        raw_importance = {str(k): float(v) for k, v in entry["feature_importance"].items()}
        exact = bool(entry.get("exact", False))
        invalid = sorted(k for k, v in raw_importance.items() if not (math.isfinite(v) and v >= 0))
        if invalid:
            raise ValueError(f"feature_importance must be finite and >= 0 (not for {invalid})")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PipelineError(
            f"planted effects malformed for '{outcome}' ({type(exc).__name__}: {exc})",
            file=file,
            hint="re-create them with the current generator: dvc repro synthesize",
        ) from None
    covered = {feature for term in terms for feature in term.features}
    importance = dict.fromkeys(sorted(covered), 0.0)
    interactions = {}
    for key, value in raw_importance.items():
        parts = key.split(":")
        unknown = [p for p in parts if p not in covered]
        if unknown:
            raise PipelineError(f"planted importance names features no term uses: {unknown}", file=file)
        if len(parts) > 1:
            # Shapley values share an interaction between its features; crediting each half of its mean
            # |contribution| is a convention, not exact (the interaction is small next to the main effects)
            interactions[key] = value
        for part in parts:
            importance[part] += value / len(parts)
    return PlantedTruth(outcome=outcome, exact=exact, terms=terms, importance=importance, interactions=interactions)


def true_values_of(contributions: pd.DataFrame, test: pd.DataFrame, outcome: str, *, file: Path | str) -> pd.DataFrame:
    """Each test patient's true contribution per planted feature (positional rows; no column: planted 0)."""
    prefix = f"{outcome}{CONTRIBUTION_SEPARATOR}"
    columns = [c for c in contributions.columns if c.startswith(prefix)]
    table = contributions.set_index(contributions["patient_id"].astype("string").str.strip())[columns]
    ids = test["patient_id"].astype("string").str.strip().to_numpy()
    missing = int((~pd.Index(ids).isin(table.index)).sum())
    if missing:
        raise PipelineError(
            f"{missing} test patients have no true contributions",
            file=file,
            hint="the test split and the synthetic truth come from different runs: dvc repro synthesize clean split",
        )
    out = table.loc[ids].reset_index(drop=True)
    out.columns = [c.removeprefix(prefix) for c in columns]
    return out.astype("float64")
