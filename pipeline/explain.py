"""Stage ``explain@<task>``: SHAP explanations of a task's champion that a clinician can read and a scientist
can check against the truth planted in the synthetic cohort.

What is explained is the model that produces the score (:mod:`pipeline.contributions`, the same code path as
``trd score --explain``): XGBoost through its own TreeSHAP (``pred_contribs``), scikit-learn histogram gradient
boosting through ``shap.TreeExplainer``, the logistic-regression pipeline exactly (``coef * z`` after scaling).
Values are on the explained model's log-odds (margin) scale and are credited to the canonical clinical columns
(one-hot levels and missingness indicators summed), so a reader sees ``route``, never ``route=oral``. A
calibrated champion is explained before its calibrator; ``explanation.json`` says what the calibrator does to
the log-odds (for a sigmoid calibrator reading the log-odds: a slope and an intercept, so a value can be read on
the calibrated scale by one multiplication).

Checks that the explanations are right:

1. **Additivity**, for every test row: base value + SHAP values = the model's own margin. A violation stops the
   stage before anything is written (a wrong explanation is worse than none).
2. **Fidelity to the planted truth** (synthetic cohort), reported as metrics. The generator knows every
   patient's true contribution per feature to the true log-odds (its exact SHAP value,
   ``data/raw/synthetic/true_contributions.parquet``), so the champion's SHAP values are compared with it patient
   by patient on the same log-odds scale: per planted feature, the correlation across test patients between the
   SHAP value and the true contribution; over planted features only, the rank agreement of mean |SHAP| with mean
   |true contribution|; and the share of the model's total mean |SHAP| that lands on features with no planted
   effect (noise). Also: the sign of each planted predictor's dependence (value vs SHAP for numbers and flags,
   each level against the reference level for categories) and where the noise features rank. Only features the
   planted truth covers are compared: features outside it (the first-dose markers of ``course_early``) and
   features listed in ``explain.fidelity_exclude`` are reported, not scored. The reference is exact when the
   outcome's log-odds are exactly linear in the planted terms and the model sees no feature outside them;
   otherwise (``course_early``, whose model also sees the 24-h MADRS) it is approximate, and
   ``explanation.json`` says so.

Outputs: ``reports/<task>/explain/`` (fidelity.json = DVC metrics, explanation.json, importance.csv,
sign_checks.csv, figures/*.png; identifier-free: example patients are named by their 0-based row number in the
test split) is logged to the task's MLflow training run. ``data/explanations/<task>/shap.parquet`` holds every
test patient's values with ``patient_id`` and stays under ``data/``: it is never logged to MLflow.

Pure core: :func:`explain_task`. ``main`` reads params and files, writes both folders (each replaced as a
whole) and logs to MLflow when the training run can be found.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from pipeline.errors import ConfigError, ModelError, PipelineError
from pipeline.features import FeatureColumn, FeatureSpec, build_features
from pipeline.modelling.contributions import SCALE_NOTE, explain, explained_estimator, model_margin
from pipeline.params import Frozen

if TYPE_CHECKING:  # the model module imports MLflow; only the types are needed here
    from pipeline.modelling.bundle import Bundle
    from pipeline.tasks import TaskSpec

log = logging.getLogger(__name__)

PARAMS_USED = ("base.seed", "tasks.{task}", "explain")

OUTPUT_FOLDER = "explain"  # reports/<task>/explain/, the stage's identifier-free DVC out
PER_PATIENT_FOLDER = Path("data") / "explanations"  # data/explanations/<task>/, the out with patient ids
PER_PATIENT_FILE = "shap.parquet"
PLANTED_EFFECTS_FILE = "planted_effects.json"
TRUE_CONTRIBUTIONS_FILE = "true_contributions.parquet"
CONTRIBUTION_SEPARATOR = "."  # true_contributions.parquet columns: "<outcome>.<canonical feature>"
SYNTHETIC_COHORT = "synthetic"
SHAP_PREFIX = "shap_"  # per-patient value columns: shap_<canonical feature>
LOG_ODDS = "SHAP value (log-odds)"  # every figure carries this phrase in a title or an axis label
# XGBoost sums float32 leaf values (about 1e-7 relative error per tree), the other paths are float64: 1e-4
# log-odds is far below anything a reader could see and far above rounding for thousands of trees
ADDITIVITY_TOLERANCE = 1e-4
FIGURE_DPI = 120
CSV_FLOAT_FORMAT = "%.6g"
WATERFALL_MAX_DISPLAY = 10  # the rest are summed into one bar, as shap does
DEPENDENCE_BINS = 10  # equal-count bins of the binned-mean line on numeric dependence plots


# --------------------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------------------


class ExplainParams(Frozen):
    figure_rows: int = Field(
        ge=50, le=200_000, description="Seeded sample of test rows drawn in the beeswarm and dependence plots."
    )
    example_patients: int = Field(
        ge=0, le=20, description="Waterfall plots: one seeded patient per equal-count band of predicted probability."
    )
    dependence_top_k: int = Field(
        ge=0, le=50, description="Dependence plots for the features with largest mean |SHAP|."
    )
    sign_min_rows: int = Field(
        ge=2, description="Fewest rows with a value (or at a level, and at its reference) for a sign check."
    )
    fidelity_exclude: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Task -> canonical features whose planted effect is not their truth there."
    )


# --------------------------------------------------------------------------------------------------------------
# the planted truth
# --------------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class PlantedReference:
    """The planted truth to check a task's explanations against, or why there is none."""

    truth: PlantedTruth | None
    reason: str | None = None
    # per test row (positional), each planted feature's true contribution to the log-odds; None: not available
    true_values: pd.DataFrame | None = None


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


def planted_reference(
    effects: dict[str, Any] | None,
    test: pd.DataFrame,
    outcome: str,
    *,
    file: Path | str,
    contributions: pd.DataFrame | None = None,
) -> PlantedReference:
    """Which truth applies to the test patients.

    Synthetic test patients without planted effects are an error (the generator always writes them, so the
    files come from different runs or were deleted); real patients have no planted truth, which is reported.
    """
    synthetic = test["cohort"].astype("string").eq(SYNTHETIC_COHORT).fillna(False).to_numpy(dtype=bool)
    if effects is None:
        if synthetic.any():
            raise PipelineError(
                "the test split holds synthetic patients but there are no planted effects to check the "
                "explanations against",
                file=file,
                hint="re-create the synthetic cohort and its truth (dvc repro synthesize)",
            )
        return PlantedReference(None, no_truth_sentence(test))
    if not synthetic.all():
        return PlantedReference(None, no_truth_sentence(test))
    parsed = parse_planted_truth(effects, outcome, file=file)
    if isinstance(parsed, str):
        return PlantedReference(None, f"fidelity unavailable: {parsed}")
    has_columns = contributions is not None and any(
        c.startswith(f"{outcome}{CONTRIBUTION_SEPARATOR}") for c in contributions.columns
    )
    true_values = true_values_of(contributions, test, outcome, file=file) if has_columns else None
    return PlantedReference(parsed, true_values=true_values)


def no_truth_sentence(rows: pd.DataFrame) -> str:
    """Why fidelity is dropped for patients outside the synthetic cohort, naming their cohort(s)."""
    cohorts = rows["cohort"].astype("string").fillna("unknown")
    others = sorted(set(cohorts[cohorts != SYNTHETIC_COHORT]))
    return (
        f"fidelity unavailable: {int((cohorts != SYNTHETIC_COHORT).sum())} of the {len(rows)} explained patients "
        f"come from {', '.join(others)}, which has no synthetic truth (no planted effects to compare with); the "
        "SHAP summaries show what the model relies on, not whether that is the true effect"
    )


# --------------------------------------------------------------------------------------------------------------
# additivity and global importance
# --------------------------------------------------------------------------------------------------------------


def check_additivity(values: pd.DataFrame, base_value: np.ndarray, margin: np.ndarray) -> float:
    """Largest |base + sum(values) - margin| over rows; a PipelineError if any row exceeds the tolerance."""
    reconstructed = np.asarray(base_value, dtype="float64") + values.to_numpy(dtype="float64").sum(axis=1)
    error = np.abs(reconstructed - np.asarray(margin, dtype="float64"))
    worst = float(np.nanmax(error)) if error.size else 0.0
    bad = ~(error <= ADDITIVITY_TOLERANCE)  # NaN counts as a violation
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise PipelineError(
            f"SHAP values are not additive: base value + contributions differ from the model's margin by up to "
            f"{worst:.3g} log-odds ({int(bad.sum())} of {error.size} rows above {ADDITIVITY_TOLERANCE:g}; first at "
            f"test row {row})",
            hint="the explanation path does not match the model (pipeline/contributions.py); nothing was written",
        )
    return worst


def global_importance(values: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Mean |SHAP| and mean SHAP per canonical feature, largest first (ties in spec order), with ranks."""
    columns = {c.name: c for c in spec.columns}
    mean_abs = values.abs().mean(axis=0)
    total = float(mean_abs.sum())
    table = pd.DataFrame(
        {
            "feature": list(values.columns),
            "kind": [columns[name].kind for name in values.columns],
            "unit": [columns[name].unit or "" for name in values.columns],
            "mean_abs_shap": mean_abs.to_numpy(),
            "share_of_total": (mean_abs / total).to_numpy() if total > 0 else np.zeros(len(mean_abs)),
            "mean_shap": values.mean(axis=0).to_numpy(),
        }
    )
    table = table.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", stats.rankdata(-table["mean_abs_shap"].to_numpy(), method="min").astype(int))
    return table


# --------------------------------------------------------------------------------------------------------------
# fidelity to the planted truth
# --------------------------------------------------------------------------------------------------------------

ROLE_EFFECT = "planted effect"
ROLE_NOISE = "noise (planted 0)"
ROLE_EXCLUDED = "excluded (explain.fidelity_exclude)"
ROLE_NOT_COVERED = "not in the planted truth"


@dataclass(frozen=True)
class Fidelity:
    metrics: dict[str, float]  # numbers only -> fidelity.json 'fidelity'
    roles: pd.DataFrame  # per canonical feature: role, planted importance, ranks among compared features
    signs: pd.DataFrame  # one row per planted predictor (feature, or level of a category)
    report: dict[str, Any]


def _sign(value: float) -> int:
    return int(np.sign(value)) if math.isfinite(value) else 0


def _opposing(interactions: list[PlantedTerm], expected: int) -> list[str]:
    return [t.name for t in interactions if _sign(t.coefficient) not in (0, expected)]


def _sign_row(feature: str, level: str, terms: list[PlantedTerm], expected: int, **fields: Any) -> dict[str, Any]:
    return {
        "feature": feature,
        "level": level,
        "planted_terms": "; ".join(f"{t.name} {t.coefficient:+g}" for t in terms),
        "expected_sign": expected,
        "observed": math.nan,
        "n_rows": 0,
        "agrees": False,
        "skipped": "",
        **fields,
    }


def _observed_dependence(x: np.ndarray, shap_values: np.ndarray) -> float:
    """Spearman rho of SHAP on the feature value; 0 when the model gives the feature no dependence at all."""
    if np.ptp(shap_values) == 0:
        return 0.0
    return float(stats.spearmanr(x, shap_values).statistic)


def sign_checks(
    values: pd.DataFrame,
    features: pd.DataFrame,
    spec: FeatureSpec,
    truth: PlantedTruth,
    *,
    checked_features: list[str],
    min_rows: int,
) -> pd.DataFrame:
    """Does each planted predictor push the log-odds the planted way?

    Numbers and flags: the sign of Spearman's rho between the value and its SHAP value (rows with a value).
    Categories: per level with a planted term ``<feature>_<level>``, the mean SHAP value at that level minus at
    the reference level (the one level without a term). Skipped, with the reason: predictors whose planted terms
    disagree in sign (not monotone), that act only through an interaction or against one, or with too few rows.
    """
    by_name = {c.name: c for c in spec.columns}
    rows = []
    for feature in checked_features:
        column = by_name[feature]
        main = [t for t in truth.terms if t.features == (feature,) and t.coefficient != 0]
        interactions = [t for t in truth.terms if len(t.features) > 1 and feature in t.features and t.coefficient != 0]
        shap_values = values[feature].to_numpy(dtype="float64")
        if column.kind == "categorical":
            rows += _categorical_sign_rows(
                column, truth, main=main, interactions=interactions, shap_values=shap_values, features=features,
                min_rows=min_rows,
            )  # fmt: skip
            continue
        signs = {_sign(t.coefficient) for t in main}
        if not main:
            rows.append(_sign_row(feature, "", interactions, 0, skipped="planted only through an interaction"))
            continue
        if len(signs) > 1:
            rows.append(_sign_row(feature, "", main, 0, skipped="planted terms of opposite signs (not monotone)"))
            continue
        expected = signs.pop()
        opposing = _opposing(interactions, expected)
        if opposing:
            reason = f"interaction {', '.join(opposing)} acts in the opposite direction"
            rows.append(_sign_row(feature, "", main, expected, skipped=reason))
            continue
        x = features[feature].to_numpy(dtype="float64")
        known = ~np.isnan(x)
        if known.sum() < min_rows or np.ptp(x[known]) == 0:
            reason = f"fewer than {min_rows} rows with a value, or a constant value"
            rows.append(_sign_row(feature, "", main, expected, n_rows=int(known.sum()), skipped=reason))
            continue
        observed = _observed_dependence(x[known], shap_values[known])
        agrees = _sign(observed) == expected
        rows.append(_sign_row(feature, "", main, expected, observed=observed, n_rows=int(known.sum()), agrees=agrees))
    frame = pd.DataFrame(rows, columns=list(_sign_row("", "", [], 0)))
    return frame.astype({"expected_sign": "int64", "n_rows": "int64", "agrees": "bool", "observed": "float64"})


def _categorical_sign_rows(
    column: FeatureColumn,
    truth: PlantedTruth,
    *,
    main: list[PlantedTerm],
    interactions: list[PlantedTerm],
    shap_values: np.ndarray,
    features: pd.DataFrame,
    min_rows: int,
) -> list[dict[str, Any]]:
    feature = column.name
    # a level is the reference when no planted term (of any size, zero included) encodes it
    encoded = {t.name for t in truth.terms if t.features == (feature,)}
    references = [level for level in column.levels if f"{feature}_{level}" not in encoded]
    level_of = {f"{feature}_{level}": level for level in column.levels}
    rows = []
    for term in main:
        level = level_of.get(term.name)
        expected = _sign(term.coefficient)
        if level is None:
            rows.append(_sign_row(feature, "", [term], expected, skipped="planted term matches no level"))
            continue
        opposing = _opposing(interactions, expected)
        if opposing:
            reason = f"interaction {', '.join(opposing)} acts in the opposite direction"
            rows.append(_sign_row(feature, level, [term], expected, skipped=reason))
            continue
        if len(references) != 1:
            rows.append(_sign_row(feature, level, [term], expected, skipped="no single reference level"))
            continue
        at_level = features[f"{feature}={level}"].to_numpy(dtype="float64") == 1
        at_reference = features[f"{feature}={references[0]}"].to_numpy(dtype="float64") == 1
        n_rows = int(min(at_level.sum(), at_reference.sum()))
        if n_rows < min_rows:
            reason = f"fewer than {min_rows} rows at the level or at the reference '{references[0]}'"
            rows.append(_sign_row(feature, level, [term], expected, n_rows=n_rows, skipped=reason))
            continue
        observed = float(shap_values[at_level].mean() - shap_values[at_reference].mean())
        agrees = _sign(observed) == expected
        rows.append(_sign_row(feature, level, [term], expected, observed=observed, n_rows=n_rows, agrees=agrees))
    return rows


def _separation(effects: np.ndarray, noise: np.ndarray) -> float:
    """P(a planted feature's mean |SHAP| exceeds a noise feature's), ties counting one half: 1 = noise at the bottom."""
    if effects.size == 0 or noise.size == 0:
        return math.nan
    diff = effects[:, None] - noise[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation across patients; 0 when the model gives the feature no variation (it ignores it)."""
    if np.ptp(b) == 0:
        return math.nan
    if np.ptp(a) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def patient_level_fidelity(values: pd.DataFrame, true_values: pd.DataFrame, planted: list[str]) -> dict[str, Any]:
    """SHAP values against the true per-patient contributions on the log-odds scale.

    ``patient_correlation``: per planted feature, Pearson's r across patients between the SHAP value and the true
    contribution (1: the model spreads patients exactly as the truth does, up to scale); ``rank_spearman_true``:
    over planted features only, Spearman's rho between mean |SHAP| and mean |true contribution| on the same
    patients.
    """
    correlations = {
        name: _pearson(
            values[name].to_numpy(dtype="float64"),
            true_values[name].to_numpy(dtype="float64") if name in true_values else np.zeros(len(values)),
        )
        for name in planted
    }
    finite = np.array([r for r in correlations.values() if math.isfinite(r)])
    model = values[planted].abs().mean(axis=0).to_numpy()
    truth = np.array([true_values[n].abs().mean() if n in true_values else 0.0 for n in planted])
    return {
        "patient_correlation": correlations,
        "patient_correlation_median": float(np.median(finite)) if finite.size else math.nan,
        "patient_correlation_min": float(finite.min()) if finite.size else math.nan,
        "rank_spearman_true": _spearman(truth, model),
    }


def _reference_note(*, exact: bool, truth: PlantedTruth, not_covered: list[str], excluded: list[str]) -> str:
    if exact:
        return (
            "the planted log-odds are exactly linear in the planted terms and the model sees only features they cover"
        )
    parts = ["approximate: the planted effects are log-odds given the baseline features only"]
    if not_covered:
        parts.append(f"the model also sees {', '.join(not_covered)}, which can carry part of those effects")
    if excluded:
        parts.append(f"left out by explain.fidelity_exclude: {', '.join(excluded)}")
    if not truth.exact:
        parts.append("the outcome's log-odds are not exactly linear in the planted terms")
    return "; ".join(parts)


def fidelity_checks(
    values: pd.DataFrame,
    features: pd.DataFrame,
    spec: FeatureSpec,
    truth: PlantedTruth,
    *,
    exclude: tuple[str, ...] = (),
    min_rows: int = 20,
    true_values: pd.DataFrame | None = None,
) -> Fidelity:
    """Patient-level agreement with the true contributions (when given), signs and noise placement of the
    explanations, over the features the truth covers."""
    model_importance = values.abs().mean(axis=0)
    roles = []
    for name in spec.input_columns:
        if name in exclude:
            role = ROLE_EXCLUDED
        elif name not in truth.importance:
            role = ROLE_NOT_COVERED
        else:
            role = ROLE_EFFECT if truth.importance[name] > 0 else ROLE_NOISE
        roles.append(role)
    table = pd.DataFrame(
        {
            "feature": spec.input_columns,
            "fidelity_role": roles,
            "planted_mean_abs_shap": [truth.importance.get(name, math.nan) for name in spec.input_columns],
            "mean_abs_shap": model_importance.reindex(spec.input_columns).to_numpy(),
        }
    )
    compared = table["fidelity_role"].isin([ROLE_EFFECT, ROLE_NOISE]).to_numpy()
    table["planted_rank"] = pd.array([pd.NA] * len(table), dtype="Int64")
    table["model_rank"] = pd.array([pd.NA] * len(table), dtype="Int64")
    table.loc[compared, "planted_rank"] = stats.rankdata(-table.loc[compared, "planted_mean_abs_shap"], method="min")
    table.loc[compared, "model_rank"] = stats.rankdata(-table.loc[compared, "mean_abs_shap"], method="min")

    planted = table.loc[compared, "planted_mean_abs_shap"].to_numpy(dtype="float64")
    model = table.loc[compared, "mean_abs_shap"].to_numpy(dtype="float64")
    is_effect = (table.loc[compared, "fidelity_role"] == ROLE_EFFECT).to_numpy()
    effect_names = table.loc[compared & (table["fidelity_role"] == ROLE_EFFECT).to_numpy(), "feature"].tolist()
    signs = sign_checks(values, features, spec, truth, checked_features=effect_names, min_rows=min_rows)
    checked = signs[signs["skipped"] == ""]
    noise_model, effect_model = model[~is_effect], model[is_effect]
    noise_ranks = table.loc[compared & (table["fidelity_role"] == ROLE_NOISE).to_numpy(), "model_rank"]
    noise_names = table.loc[compared & (table["fidelity_role"] == ROLE_NOISE).to_numpy(), "feature"].tolist()
    if true_values is not None:
        # on the test patients; a covered feature without a column has no planted effect (0)
        covered = [name in truth.importance for name in table["feature"]]
        table["true_mean_abs_contribution"] = [
            float(true_values[name].abs().mean()) if name in true_values else (0.0 if inside else math.nan)
            for name, inside in zip(table["feature"], covered, strict=True)
        ]
    patient_level = patient_level_fidelity(values, true_values, effect_names) if true_values is not None else {}
    total = float(model_importance.sum())  # every feature the model sees, compared or not
    metrics = {
        "n_features": int(compared.sum()),
        "n_planted": int(is_effect.sum()),
        "n_noise": int((~is_effect).sum()),
        **patient_level,
        "sign_checked": len(checked),
        "sign_agree": int(checked["agrees"].sum()),
        "sign_agreement": float(checked["agrees"].mean()) if len(checked) else math.nan,
        "noise_separation": _separation(effect_model, noise_model),
        "noise_best_rank": int(noise_ranks.min()) if len(noise_ranks) else math.nan,
        "noise_above_a_planted": int((noise_model > effect_model.min()).sum()) if effect_model.size else 0,
        "noise_share": float(model_importance[noise_names].sum() / total) if total > 0 else math.nan,
        "importance_scale_ratio": float(effect_model.sum() / planted[is_effect].sum()) if is_effect.any() else math.nan,
    }
    not_covered = table.loc[table["fidelity_role"] == ROLE_NOT_COVERED, "feature"].tolist()
    excluded = table.loc[table["fidelity_role"] == ROLE_EXCLUDED, "feature"].tolist()
    exact = truth.exact and not not_covered and not excluded
    report = {
        "available": True,
        "outcome": truth.outcome,
        "reference": "exact" if exact else "approximate",
        "reference_note": _reference_note(exact=exact, truth=truth, not_covered=not_covered, excluded=excluded),
        "compared_features": table.loc[compared, "feature"].tolist(),
        "planted_effects": effect_names,
        "noise_features": table.loc[compared & ~table["fidelity_role"].eq(ROLE_EFFECT).to_numpy(), "feature"].tolist(),
        "not_in_planted_truth": not_covered,
        "excluded": excluded,
        "planted_but_not_predictors": sorted(
            name for name, value in truth.importance.items() if value > 0 and name not in spec.input_columns
        ),
        "interactions": {
            key: {"planted_mean_abs_contribution": value, "split": "evenly between its features"}
            for key, value in truth.interactions.items()
        },
        "true_contributions": "available"
        if true_values is not None
        else "not available (no true_contributions file for this outcome): the patient-level measures are not computed",
        "definitions": {
            "patient_correlation": "per planted feature, Pearson r across test patients between its SHAP value and "
            "its true contribution to the log-odds (the generator's exact SHAP value); 0 when the model ignores "
            "the feature",
            "patient_correlation_median": "median of patient_correlation over planted features",
            "patient_correlation_min": "smallest patient_correlation over planted features",
            "rank_spearman_true": "Spearman rho, over planted features only, between the model's mean |SHAP| and the "
            "mean |true contribution| on the same test patients",
            "noise_share": "share of the model's summed mean |SHAP| over every feature it sees that goes to "
            "features with no planted effect",
            "sign_agreement": "share of sign checks (sign_checks.csv) where the model's dependence has the "
            "planted sign; a feature the model never uses counts as disagreeing",
            "noise_separation": "P(a planted feature's mean |SHAP| exceeds a noise feature's), ties 1/2; 1 = "
            "every noise feature ranks below every planted one",
            "noise_best_rank": "best (smallest) model rank of a noise feature among the compared features; "
            "n_planted + 1 when all noise is at the bottom",
            "noise_above_a_planted": "noise features with a larger mean |SHAP| than the weakest planted feature",
            "importance_scale_ratio": "model / planted summed mean |SHAP| over planted features (< 1: attenuated, "
            "by regularisation or because other features carry the effect)",
        },
    }
    return Fidelity(metrics=metrics, roles=table, signs=signs, report=report)


# --------------------------------------------------------------------------------------------------------------
# how the explained model relates to the reported probability
# --------------------------------------------------------------------------------------------------------------


def calibration_map(estimator: Any) -> dict[str, Any]:
    """What turns the explained log-odds into the reported probability, in words and, where linear, numbers."""
    from sklearn.calibration import CalibratedClassifierCV  # noqa: PLC0415

    from pipeline.modelling.calibration import CalibratedModel  # noqa: PLC0415

    model, note = explained_estimator(estimator)
    explained = {"explained_model": type(model).__name__, "note": note}
    if isinstance(estimator, CalibratedModel):
        return explained | _own_calibrator_map(estimator.calibrator)
    if not isinstance(estimator, CalibratedClassifierCV):
        return explained | {
            "calibration": "none",
            "description": "reported probability = sigmoid(base value + sum of the SHAP values): the values "
            "explain the reported probability exactly, on its log-odds scale",
        }
    calibrator = estimator.calibrated_classifiers_[0].calibrators[0]
    # CalibratedClassifierCV feeds the calibrator decision_function when the model has one, else predict_proba
    reads_log_odds = hasattr(model, "decision_function")
    reads = "the explained log-odds" if reads_log_odds else "the explained model's probability sigmoid(log-odds)"
    if estimator.method == "sigmoid":
        slope, intercept = -float(calibrator.a_), -float(calibrator.b_)
        if reads_log_odds:
            return explained | _sigmoid_on_log_odds(slope, intercept)
        return explained | {
            "calibration": "sigmoid",
            "calibrator_input": "probability",
            "slope": slope,
            "intercept": intercept,
            "description": f"reported probability = sigmoid({slope:.4g} × sigmoid(explained log-odds) "
            f"{intercept:+.4g}): a monotone{' increasing' if slope > 0 else ''} map of {reads}, not linear on the "
            "log-odds scale; directions and the ranking of patients are unchanged, sizes are those of the model "
            "before calibration",
        }
    return explained | {
        "calibration": str(estimator.method),
        "calibrator_input": "log-odds" if reads_log_odds else "probability",
        "description": f"reported probability = a monotone step function (isotonic) of {reads}: directions and the "
        "ranking of patients are preserved (up to ties), sizes are those of the model before calibration",
    }


def _sigmoid_on_log_odds(slope: float, intercept: float) -> dict[str, Any]:
    """The map of a Platt calibrator that reads the explained log-odds: linear on that scale."""
    return {
        "calibration": "sigmoid",
        "calibrator_input": "log-odds",
        "slope": slope,
        "intercept": intercept,
        "description": f"reported probability = sigmoid({slope:.4g} × explained log-odds {intercept:+.4g}): "
        f"multiply a SHAP value by {slope:.4g} to read it on the calibrated log-odds scale; directions and "
        "the ranking of patients are unchanged",
    }


def _own_calibrator_map(calibrator: dict[str, Any]) -> dict[str, Any]:
    """pipeline.calibration's calibrators all read the explained log-odds."""
    if calibrator["method"] == "sigmoid":
        slope, intercept = float(calibrator["slope"]), float(calibrator["intercept"])
        return _sigmoid_on_log_odds(slope, intercept)
    return {
        "calibration": str(calibrator["method"]),
        "calibrator_input": "log-odds",
        "description": "reported probability = a non-decreasing piecewise-linear (isotonic) function of the "
        "explained log-odds: directions and the ranking of patients are preserved (up to ties), sizes are those "
        "of the model before calibration",
    }


# --------------------------------------------------------------------------------------------------------------
# the whole explanation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Explanation:
    """Everything the stage writes, before anything is written."""

    task: str
    candidate: str
    spec: FeatureSpec
    values: pd.DataFrame  # every test row x canonical columns (positional index = test row)
    base_value: np.ndarray
    features: pd.DataFrame  # the feature matrix the values explain (positional index = test row)
    probability: np.ndarray  # the reported (calibrated) probability
    importance: pd.DataFrame  # global table -> importance.csv
    fidelity: Fidelity | None
    truth: PlantedTruth | None
    sample_rows: np.ndarray  # test rows drawn in the beeswarm and dependence plots
    example_rows: np.ndarray  # test rows with a waterfall plot
    dependence_features: list[str]
    metrics: dict[str, Any]  # -> fidelity.json (numbers only)
    report: dict[str, Any]  # -> explanation.json
    per_patient: pd.DataFrame  # -> data/explanations/<task>/shap.parquet (with patient_id)
    seed: int


def figure_sample(n_rows: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted, seeded sample of ``size`` row positions (all rows when there are fewer)."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(rng.choice(n_rows, size=size, replace=False))


def example_rows(probability: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """One seeded row per equal-count band of predicted probability, so the examples span low to high risk."""
    count = min(count, probability.size)
    if count == 0:
        return np.array([], dtype="int64")
    order = np.argsort(probability, kind="stable")
    return np.array([int(rng.choice(band)) for band in np.array_split(order, count)], dtype="int64")


def per_patient_frame(
    test: pd.DataFrame, values: pd.DataFrame, base_value: np.ndarray, margin: np.ndarray, probability: np.ndarray
) -> pd.DataFrame:
    """One row per test patient: identifier, row number, base value, margin, probability and every SHAP value."""
    frame = pd.DataFrame(
        {
            "patient_id": test["patient_id"].astype("string").to_numpy(),
            "test_row": np.arange(len(test), dtype="int64"),
            "base_value": base_value,
            "margin": margin,
            "p_response": probability,
        }
    )
    shap_columns = pd.DataFrame(values.to_numpy(), columns=[f"{SHAP_PREFIX}{c}" for c in values.columns])
    return pd.concat([frame, shap_columns], axis=1)


def explain_task(
    task_name: str,
    task: TaskSpec,
    test: pd.DataFrame,
    *,
    champion: Bundle,
    reference: PlantedReference,
    params: ExplainParams,
    seed: int,
    explained_split: str = "test",
) -> Explanation:
    """Pure core of the stage: explain every test row, check additivity and fidelity, pick what is drawn.

    ``explained_split`` is ``train`` when there is no test split (small-cohort protocol): the development patients
    are explained (SHAP describes the model; it measures no performance)."""
    spec = champion.feature_spec
    if spec.target != task.target:
        raise ModelError(
            f"the model predicts '{spec.target}' but the task's target is '{task.target}'",
            file=champion.path,
            hint="retrain the task (dvc repro train)",
        )
    if test.empty:
        raise PipelineError(f"the {explained_split} split is empty: nothing to explain", hint="check the split stage")
    exclude = tuple(params.fidelity_exclude.get(task_name, ()))
    unknown = sorted(set(exclude) - set(spec.input_columns))
    if unknown:
        raise ConfigError(f"explain.fidelity_exclude.{task_name} names features the model does not use: {unknown}")
    test = test.reset_index(drop=True)  # row numbers are positions in the test split
    features = build_features(test, spec)
    explained = explain(champion.estimator, features, spec)
    margin = model_margin(champion.estimator, features)
    additivity_error = check_additivity(explained.values, explained.base_value, margin)
    probability = champion.predict(features)
    values = explained.values

    importance = global_importance(values, spec)
    fidelity = None
    if reference.truth is not None:
        fidelity = fidelity_checks(
            values, features, spec, reference.truth, exclude=exclude, min_rows=params.sign_min_rows,
            true_values=reference.true_values,
        )  # fmt: skip
        planted = fidelity.roles.set_index("feature")
        joined = ["fidelity_role", "planted_mean_abs_shap", "planted_rank", "true_mean_abs_contribution"]
        importance = importance.join(planted[[c for c in joined if c in planted]], on="feature", how="left")

    sample_rng, example_rng = np.random.default_rng(seed).spawn(2)
    sample = figure_sample(len(test), params.figure_rows, sample_rng)
    examples = example_rows(probability, params.example_patients, example_rng)
    dependence = importance["feature"].head(params.dependence_top_k).tolist()

    metrics: dict[str, Any] = {"n_explained": len(test), "additivity": {"max_abs_error": additivity_error}}
    if fidelity is not None:
        metrics["fidelity"] = fidelity.metrics
    else:
        log.warning("%s: %s", task_name, reference.reason)
    info = champion.info
    report = {
        "task": task_name,
        "target": task.target,
        "prediction_time": task.prediction_time,
        "champion": {
            "candidate": info.candidate,
            "calibration": info.calibration,
            "estimator_sha256": info.estimator_sha256,
            "registered_model_name": info.registered_model_name,
        },
        "method": explained.method,
        "scale": f"{SCALE_NOTE}. The base value is the explained model's log-odds for a reference patient "
        "(tree models: the training-data average; logistic regression: every feature at its training mean); "
        "a patient's log-odds = base value + the sum of their SHAP values",
        "calibration": calibration_map(champion.estimator),
        "aggregation": "one-hot levels and missingness indicators are summed onto their canonical feature",
        "additivity": {
            "rule": "base value + sum of SHAP values = the explained model's margin, for every explained row",
            "tolerance": ADDITIVITY_TOLERANCE,
            "rows_checked": len(test),
            "max_abs_error": additivity_error,
        },
        "rows": {
            "explained": len(test),
            "in_beeswarm_and_dependence_plots": len(sample),
            "examples": examples.tolist(),  # one per band of predicted probability, lowest band first
            "split": explained_split,
            "row_numbers": f"0-based positions in data/processed/{task_name}/{explained_split}.parquet; "
            f"data/explanations/{task_name}/{PER_PATIENT_FILE} maps them to patients",
        },
        "global_importance": f"mean |SHAP value| over every {explained_split} row (importance.csv)",
        "dependence_plots": dependence,
        "fidelity": fidelity.report if fidelity is not None else {"available": False, "reason": reference.reason},
        "per_patient_values": f"{PER_PATIENT_FOLDER.as_posix()}/{task_name}/{PER_PATIENT_FILE} (with patient_id; "
        "never logged to MLflow)",
    }
    return Explanation(
        task=task_name,
        candidate=info.candidate,
        spec=spec,
        values=values.reset_index(drop=True),
        base_value=np.asarray(explained.base_value, dtype="float64"),
        features=features,
        probability=probability,
        importance=importance,
        fidelity=fidelity,
        truth=reference.truth,
        sample_rows=sample,
        example_rows=examples,
        dependence_features=dependence,
        metrics=metrics,
        report=report,
        per_patient=per_patient_frame(test, values, explained.base_value, explained.margin, probability),
        seed=seed,
    )


# --------------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Any:
    """A figure on the Agg canvas through matplotlib's object API: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # constrained layout fits our figures; shap's waterfall places its labels by hand and needs the tight box
    # (which costs a second draw, so only there)
    tight = "tight" if figure.get_layout_engine() is None else None
    # no 'Software' entry: the PNG bytes then depend on the drawing only
    figure.savefig(path, format="png", dpi=FIGURE_DPI, metadata={"Software": None}, bbox_inches=tight)


def _title(result: Explanation) -> str:
    return f"{result.task}: {result.candidate} champion"


def _display_matrix(result: Explanation) -> np.ndarray:
    """Feature values per canonical column for colouring: numbers and 0/1 flags; categories NaN (drawn grey)."""
    matrix = np.full(result.values.shape, np.nan)
    for j, column in enumerate(result.spec.columns):
        if column.kind != "categorical":
            matrix[:, j] = result.features[column.name].to_numpy(dtype="float64")
    return matrix


def _display_text(result: Explanation, row: int) -> np.ndarray:
    """A patient's values as a reader sees them: numbers to one decimal, yes/no, category levels, 'missing'."""
    texts = []
    features = result.features.iloc[row]
    for column in result.spec.columns:
        if column.kind == "categorical":
            hot = [level for level in column.levels if features[f"{column.name}={level}"] == 1]
            texts.append(hot[0] if hot else "missing")
            continue
        value = float(features[column.name])
        if math.isnan(value):
            texts.append("missing")
        elif column.kind == "binary":
            texts.append("yes" if value == 1 else "no")
        else:
            texts.append(f"{value:.1f}".removesuffix(".0"))
    return np.array(texts, dtype=object)


def _shap_explanation(result: Explanation, rows: np.ndarray) -> Any:
    import shap  # noqa: PLC0415

    return shap.Explanation(
        values=result.values.to_numpy()[rows],
        base_values=result.base_value[rows],
        data=_display_matrix(result)[rows],
        feature_names=list(result.values.columns),
    )


def importance_figure(result: Explanation) -> Any:
    """Mean |SHAP| per canonical feature over every test row (shap's bar plot)."""
    import shap  # noqa: PLC0415

    n_features = result.values.shape[1]
    figure = _new_figure(7.5, 0.32 * n_features + 1.6)
    axes = figure.subplots()
    everyone = np.arange(len(result.values))
    shap.plots.bar(_shap_explanation(result, everyone), max_display=n_features + 1, ax=axes, show=False)
    axes.set_xlabel(f"mean |{LOG_ODDS}| per patient")
    axes.set_title(f"{_title(result)}: global importance, {len(everyone)} test patients", fontsize=11)
    return figure


def beeswarm_figure(result: Explanation) -> Any:
    """Every sampled patient's SHAP value per feature, coloured by the feature's value (shap's beeswarm)."""
    import shap  # noqa: PLC0415

    n_features = result.values.shape[1]
    figure = _new_figure(8.0, 0.36 * n_features + 1.8)
    axes = figure.subplots()
    explanation = _shap_explanation(result, result.sample_rows)
    # shap's beeswarm jitters with NumPy's global generator: seed it for byte-identical figures, then restore it
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(result.seed % 2**32)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            # categories are drawn grey through an all-NaN colour column, which NumPy warns about
            warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
            shap.plots.beeswarm(
                explanation, max_display=n_features, ax=axes, show=False, plot_size=None,
                color_bar_label="feature value (grey: category or missing)",
            )  # fmt: skip
    finally:
        np.random.set_state(state)  # noqa: NPY002
    axes.set_xlabel(f"{LOG_ODDS}: > 0 raises the predicted probability of response")
    axes.set_title(f"{_title(result)}: {len(result.sample_rows)} test patients", fontsize=11)
    return figure


def _planted_text(result: Explanation, feature: str) -> str | None:
    """What the planted truth says about ``feature``, for the corner of its dependence plot."""
    if result.truth is None or result.fidelity is None:
        return None
    role = result.fidelity.roles.set_index("feature").loc[feature, "fidelity_role"]
    if role == ROLE_EFFECT:
        terms = [t for t in result.truth.terms if feature in t.features and t.coefficient != 0]
        return "planted log-odds: " + "; ".join(f"{t.name} {t.coefficient:+g}" for t in terms)
    return {
        ROLE_NOISE: "planted: no effect (noise feature)",
        ROLE_EXCLUDED: "left out of the fidelity checks (explain.fidelity_exclude)",
        ROLE_NOT_COVERED: "no planted coefficient (outside the planted truth)",
    }[role]


def dependence_figure(result: Explanation, feature: str) -> Any:
    """SHAP value against the feature's value on the sampled rows; missing values in their own strip."""
    column = next(c for c in result.spec.columns if c.name == feature)
    rows = result.sample_rows
    shap_values = result.values[feature].to_numpy()[rows]
    rng = np.random.default_rng(result.seed)  # jitter only; seeded so the figure is reproducible
    figure = _new_figure(6.5, 4.4)
    if column.kind == "numeric":
        x = result.features[feature].to_numpy(dtype="float64")[rows]
        known = ~np.isnan(x)
        if (~known).any():
            axes, missing_axes = figure.subplots(1, 2, sharey=True, width_ratios=[6, 1])
            missing_axes.scatter(rng.uniform(-0.3, 0.3, (~known).sum()), shap_values[~known], s=6, alpha=0.4)
            missing_axes.set(xlim=(-1, 1), xticks=[0], xticklabels=[f"missing\n(n={(~known).sum()})"])
        else:
            axes = figure.subplots()
        axes.scatter(x[known], shap_values[known], s=6, alpha=0.4, label="patient")
        if known.sum() >= DEPENDENCE_BINS:
            bins = np.array_split(np.argsort(x[known], kind="stable"), DEPENDENCE_BINS)
            centres = [x[known][b].mean() for b in bins]
            means = [shap_values[known][b].mean() for b in bins]
            axes.plot(centres, means, color="C3", marker="o", linewidth=1.5, label="mean per decile of the value")
            axes.legend(fontsize=7, loc="best")
        axes.set_xlabel(f"{feature} ({column.unit})" if column.unit else feature)
    else:
        axes = figure.subplots()
        levels = list(column.levels) if column.kind == "categorical" else ["no", "yes"]
        if column.kind == "categorical":
            matrix = result.features[[f"{feature}={level}" for level in levels]].to_numpy()[rows]
            code = np.where(np.isnan(matrix).any(axis=1), -1, np.nanargmax(np.nan_to_num(matrix, nan=0.0), axis=1))
        else:
            flag = result.features[feature].to_numpy(dtype="float64")[rows]
            code = np.where(np.isnan(flag), -1, np.nan_to_num(flag, nan=0.0)).astype(int)
        if (code == -1).any():
            levels.append("missing")
            code = np.where(code == -1, len(levels) - 1, code)
        for position in range(len(levels)):
            at = code == position
            axes.scatter(position + rng.uniform(-0.3, 0.3, at.sum()), shap_values[at], s=6, alpha=0.4, color="C0")
            if at.any():
                axes.hlines(shap_values[at].mean(), position - 0.35, position + 0.35, color="C3", linewidth=2)
        counts = [int((code == position).sum()) for position in range(len(levels))]
        # long level names (intranasal_esketamine) would run into each other on one line
        ticks = [f"{level.replace('_', chr(10))}\n(n={n})" for level, n in zip(levels, counts, strict=True)]
        axes.set_xticks(range(len(levels)), ticks, fontsize=8)
        axes.set_xlabel(f"{feature} (red: mean per level)")
    axes.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_ylabel(LOG_ODDS)
    axes.set_title(f"{_title(result)}: dependence on {feature}, {len(rows)} test patients", fontsize=10)
    planted = _planted_text(result, feature)
    if planted:
        axes.text(0.01, 0.99, planted, transform=axes.transAxes, va="top", fontsize=7, color="dimgrey")
    return figure


def waterfall_figure(result: Explanation, row: int) -> Any:
    """One test patient's SHAP values from the base value to their log-odds (shap's waterfall), by row number."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (shap's waterfall draws on pyplot's current figure)
    import shap  # noqa: PLC0415

    figure = plt.figure()
    explanation = shap.Explanation(
        values=result.values.to_numpy()[row],
        base_values=float(result.base_value[row]),
        data=_display_text(result, row),
        feature_names=list(result.values.columns),
    )
    shap.plots.waterfall(explanation, max_display=WATERFALL_MAX_DISPLAY, show=False)
    figure = plt.gcf()
    calibration = result.report["calibration"]["calibration"]
    probability = f"predicted probability of response {result.probability[row]:.2f}" + (
        f" (after {calibration} calibration)" if calibration != "none" else ""
    )
    figure.suptitle(
        f"{_title(result)}: test row {row}, {probability}\n"
        f"{LOG_ODDS}; E[f(X)] = base value, f(x) = this patient's log-odds before any calibration",
        fontsize=10,
    )
    return figure


def fidelity_figure(result: Explanation) -> Any:
    """Planted vs model mean |SHAP| per compared feature, planted effects first: the check a scientist makes first."""
    assert result.fidelity is not None  # only drawn with a truth
    roles = result.fidelity.roles
    compared = roles[roles["fidelity_role"].isin([ROLE_EFFECT, ROLE_NOISE])]
    # planted effects by planted size, then noise by model size: a faithful model shows two matching columns of
    # dots above and near-zero grey dots below
    compared = compared.assign(is_noise=compared["fidelity_role"] == ROLE_NOISE).sort_values(
        ["is_noise", "planted_mean_abs_shap", "mean_abs_shap"], ascending=[True, False, False], kind="stable"
    )
    metrics = result.fidelity.metrics
    # the truth on the same test patients when the generator wrote it, else the planted (whole-cohort) importance
    reference_column = (
        "true_mean_abs_contribution" if "true_mean_abs_contribution" in compared else "planted_mean_abs_shap"
    )
    figure = _new_figure(7.0, 0.3 * len(compared) + 1.8)
    axes = figure.subplots()
    position = np.arange(len(compared))[::-1]
    noise = compared["is_noise"].to_numpy()
    axes.hlines(position, 0, compared["mean_abs_shap"], color=np.where(noise, "lightgrey", "lightsteelblue"))
    axes.scatter(compared["mean_abs_shap"], position, color=np.where(noise, "grey", "C0"), zorder=3,
                 label="model (test split)")  # fmt: skip
    axes.scatter(compared[reference_column], position, facecolors="none", edgecolors="black", zorder=4,
                 label="true contributions (generator)")  # fmt: skip
    names = compared["feature"].tolist()
    labels = [f"{name} (noise)" if is_noise else name for name, is_noise in zip(names, noise, strict=True)]
    axes.set_yticks(position, labels, fontsize=8)
    axes.set_xlim(left=0)
    axes.set_xlabel(f"mean |{LOG_ODDS}|")
    reference = result.fidelity.report["reference"]
    patient_level = (
        f"patient r median {metrics['patient_correlation_median']:.2f}, rank rho {metrics['rank_spearman_true']:.2f}, "
        if "patient_correlation_median" in metrics
        else ""
    )
    axes.set_title(
        f"{_title(result)}\nfidelity to the planted truth ({reference}): {patient_level}"
        f"signs {metrics['sign_agree']}/{metrics['sign_checked']}, "
        f"noise share {metrics.get('noise_share', math.nan):.2f}",
        fontsize=9,
    )
    axes.legend(fontsize=8, loc="lower right")
    return figure


def figures(result: Explanation) -> dict[str, Any]:
    """Figure file name -> a function drawing it (drawn one at a time, so memory holds one figure)."""
    drawers: dict[str, Any] = {
        "importance_bar.png": lambda: importance_figure(result),
        "beeswarm.png": lambda: beeswarm_figure(result),
    }
    if result.fidelity is not None:
        drawers["fidelity.png"] = lambda: fidelity_figure(result)
    for feature in result.dependence_features:
        drawers[f"dependence_{feature}.png"] = lambda feature=feature: dependence_figure(result, feature)
    for row in result.example_rows:
        drawers[f"waterfall_row_{int(row)}.png"] = lambda row=int(row): waterfall_figure(result, row)
    return drawers


def write_figures(result: Explanation, folder: Path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    for name, draw in figures(result).items():
        figure = draw()
        _save(figure, Path(folder) / name)
        plt.close(figure)  # pyplot keeps the waterfall's figures alive until closed; a no-op for the others


# --------------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------------


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n")


def write_reports(result: Explanation, folder: Path) -> None:
    """The identifier-free outputs: fidelity.json, explanation.json, tables and figures."""
    from pipeline.evaluate import json_ready  # noqa: PLC0415
    from pipeline.headline import explain_headline  # noqa: PLC0415
    from pipeline.io import atomic_folder, write_json  # noqa: PLC0415

    with atomic_folder(folder) as staging:
        write_json(json_ready(result.metrics), staging / "fidelity.json")
        # the DVC metric of this stage (pipeline/headline.py)
        write_json(explain_headline(result.task, json_ready(result.metrics)), staging / "headline.json")
        write_json(json_ready(result.report), staging / "explanation.json")
        _write_csv(result.importance, staging / "importance.csv")
        if result.fidelity is not None:
            _write_csv(result.fidelity.signs, staging / "sign_checks.csv")
        write_figures(result, staging / "figures")


def write_per_patient(result: Explanation, folder: Path) -> None:
    """Every test patient's SHAP values, with patient_id: under data/ only."""
    from pipeline.io import atomic_folder, write_parquet  # noqa: PLC0415

    with atomic_folder(folder) as staging:
        write_parquet(result.per_patient, staging / PER_PATIENT_FILE)


# --------------------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------------------


def log_to_mlflow(task_name: str, root: Path, folder: Path, metrics: dict, estimator_sha256: str) -> str | None:
    """Log the fidelity metrics, tables and figures (never the per-patient values) to the task's training run.

    Warns and skips when there is no store or no matching run: the DVC outputs are the primary record.
    """
    import mlflow  # noqa: PLC0415

    from pipeline import tracking  # noqa: PLC0415
    from pipeline.evaluate import flatten_metrics  # noqa: PLC0415

    run_id = tracking.training_run_to_extend(root, task_name, estimator_sha256, "explanations")
    if run_id is None:
        return None
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flatten_metrics(metrics, prefix="explain."))
        # the whole folder is identifier-free by construction; the per-patient values live elsewhere (data/)
        mlflow.log_artifacts(str(folder), artifact_path="explain")
    log.info("%s: explanations logged to MLflow run %s", task_name, run_id)
    return run_id


# --------------------------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------------------------


def main(task_name: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # shap's waterfall draws through pyplot; a stage never has a display

    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.io import read_parquet  # noqa: PLC0415
    from pipeline.modelling.bundle import load_bundle  # noqa: PLC0415
    from pipeline.params import BaseParams, parse_section, read_params_file  # noqa: PLC0415
    from pipeline.paths import ProjectPaths  # noqa: PLC0415
    from pipeline.tasks import TasksParams  # noqa: PLC0415

    paths = ProjectPaths.discover()
    raw = read_params_file(paths.params_file)
    seed = parse_section(BaseParams, raw, "base", paths.params_file).seed
    tasks = parse_section(TasksParams, raw, "tasks", paths.params_file)
    task = tasks.get(task_name)
    params = parse_section(ExplainParams, raw, "explain", paths.params_file)
    unknown_tasks = sorted(set(params.fidelity_exclude) - set(tasks.root))
    if unknown_tasks:
        raise ConfigError(f"explain.fidelity_exclude names unknown tasks: {unknown_tasks}", file=paths.params_file)
    contract = load_contract(paths.cohort_schema)

    test = contract.coerce(read_parquet(paths.processed_dir / task_name / "test.parquet", "test split"))
    explained_split = "test"
    if test.empty:  # small-cohort protocol: no test split; the model is explained on its development patients
        explained_split = "train"
        test = contract.coerce(read_parquet(paths.processed_dir / task_name / "train.parquet", "training split"))
    champion = load_bundle(paths.models_dir / task_name)
    planted_path = paths.synthetic_dir / PLANTED_EFFECTS_FILE
    contributions_path = paths.synthetic_dir / TRUE_CONTRIBUTIONS_FILE
    contributions = read_parquet(contributions_path, "true contributions") if contributions_path.is_file() else None
    reference = planted_reference(
        read_planted_effects(planted_path), test, task.target, file=planted_path, contributions=contributions
    )

    result = explain_task(
        task_name, task, test, champion=champion, reference=reference, params=params, seed=seed,
        explained_split=explained_split,
    )  # fmt: skip
    folder = paths.reports_dir / task_name / OUTPUT_FOLDER
    write_reports(result, folder)
    write_per_patient(result, paths.root / PER_PATIENT_FOLDER / task_name)
    fidelity = result.metrics.get("fidelity")
    if fidelity:
        log.info(
            "%s: %d rows explained (additivity error %.2g); fidelity: patient-level r median %.2f (min %.2f), rank "
            "rho %.2f over planted features, noise share %.3f, signs %d/%d; written to %s",
            task_name, result.metrics["n_explained"], result.metrics["additivity"]["max_abs_error"],
            fidelity.get("patient_correlation_median", math.nan), fidelity.get("patient_correlation_min", math.nan),
            fidelity.get("rank_spearman_true", math.nan), fidelity.get("noise_share", math.nan),
            fidelity["sign_agree"], fidelity["sign_checked"], folder.relative_to(paths.root),
        )  # fmt: skip
    from pipeline.evaluate import json_ready  # noqa: PLC0415

    registered = champion.info.registered_model_name.removeprefix("trd-")  # trd-<task>[-<cohort>]
    log_to_mlflow(registered, paths.root, folder, json_ready(result.metrics), champion.info.estimator_sha256)
