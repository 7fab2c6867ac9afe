"""Fidelity of the champion's SHAP values to the planted truth: signs, rank, noise share, patient-level agreement."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.explain.types import ROLE_EFFECT, ROLE_EXCLUDED, ROLE_NOISE, ROLE_NOT_COVERED, Fidelity
from pipeline.features import FeatureColumn, FeatureSpec
from pipeline.synthesize.planted import PlantedTerm, PlantedTruth


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
