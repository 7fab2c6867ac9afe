"""The planted effects and oracle performance, as the explain and evaluate stages read them (planted_effects.json),
and every patient's true contribution per feature to the log-odds (true_contributions.parquet)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import rankdata

from pipeline.outcomes import REMISSION_MAX_MADRS
from pipeline.synthesize.outcomes import (
    Term,
    bivariate_normal_upper,
    model_terms,
    normal_from_logistic,
    planted_coefficients,
    term_values,
)
from pipeline.synthesize.params import PSYCHOTHERAPIES, ROUTES, SynthesizeParams
from pipeline.synthesize.truth import SimulatedTruth

DIGITS = 6  # rounding keeps the JSON short; it is deterministic either way
PROJECTION_ROWS = 200_000  # the linear projection of the sustained log-odds uses at most this many rows

# outcomes whose log-odds are exactly additive in the planted terms: outcome -> latent (true_contributions.parquet)
ADDITIVE_OUTCOMES: dict[str, str] = {"response_acute": "acute", "response_end": "end"}
CONTRIBUTION_SEPARATOR = "."  # true_contributions.parquet columns read "<outcome>.<canonical feature>"

# outcome -> (true-probability column, latent whose coefficients apply, exact logistic-linear?)
OUTCOMES: dict[str, tuple[str, str, bool]] = {
    "response_acute": ("p_response_acute", "acute", True),
    "response_end": ("p_response_end", "end", True),
    "remission_end": ("p_remission_end", "end", True),
    "sustained_week8": ("p_sustained_week8", "week8", False),
}
# outcomes of lit §11-§12, not logistic in the terms: outcome -> (probability column, the terms their generating
# model uses; 'end' stands for every term of the end-of-induction latent). Their 'coefficients' are the
# least-squares projection of the true log-odds on those terms (and the site); every other term is planted 0.
PROJECTED_OUTCOMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bp_event_first": (
        "p_bp_event_first",
        (
            "age_per_10y",
            "hypertension_history",
            "sbp_baseline_per_10",
            "dbp_baseline_per_10",
            *(f"route_{r}" for r in ROUTES[1:]),
            "dose",
        ),
    ),
    "anxiety_response_end": ("p_anxiety_response_end", ("end", "anxious_depression")),
}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN if a class is empty."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype="float64"))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def oracle_aurocs(truth: pd.DataFrame) -> dict[str, float]:
    """Best AUROC any model could reach: the true probability against the realised outcome, per task target."""
    pairs = {
        **{o: (p, o) for o, (p, _, _) in OUTCOMES.items()},
        "response_end_early": ("p_response_end_early", "response_end"),
        **{o: (p, o) for o, (p, _) in PROJECTED_OUTCOMES.items()},
    }
    return {name: auroc(truth[p].to_numpy(), truth[o].to_numpy(dtype=bool)) for name, (p, o) in pairs.items()}


def anxiety_population(truth: pd.DataFrame, params: SynthesizeParams) -> np.ndarray:
    """Patients whose baseline GAD-7 reaches the anxiety target's population (the anxiety task's eligibility)."""
    return truth["gad7_baseline"].to_numpy(dtype="float64") >= params.anxiety.calibration_min_baseline


def relapse_hazard_ratios(truth: pd.DataFrame, model: Any, params: SynthesizeParams) -> dict[str, float]:
    """The planted psychotherapy effect read as lit §13 reads it: relapse by week 8 among end-of-induction
    responders, as a hazard ratio vs no psychotherapy under proportional hazards, ln S_therapy / ln S_none, with
    S the share of responders still responding at week 8. Counterfactual: every patient with and without it."""
    terms = term_values(truth, params)
    coefficients = planted_coefficients(params)
    offsets = np.array([s.intercept for s in params.sites])
    site = pd.Categorical(truth["site"], categories=[s.name for s in params.sites]).codes
    eta = {}
    for latent in ("end", "week8"):
        total = model.intercepts[latent] + offsets[site]
        for name, beta in coefficients[latent].items():
            if beta != 0.0 and not name.startswith("psychotherapy_"):
                total = total + beta * terms[name]
        eta[latent] = total
    responders = expit(eta["end"]).sum()
    end_cut = normal_from_logistic(-eta["end"])

    def sustained(therapy: str) -> float:
        beta = coefficients["week8"].get(f"psychotherapy_{therapy}", 0.0)
        cut = normal_from_logistic(-(eta["week8"] + beta))
        rho = params.outcomes.latent_correlation.end_week8
        return float(bivariate_normal_upper(end_cut, cut, rho).sum() / responders)

    reference = np.log(sustained(PSYCHOTHERAPIES[0]))
    return {therapy: round(float(np.log(sustained(therapy)) / reference), DIGITS) for therapy in PSYCHOTHERAPIES[1:]}


def _rounded(mapping: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), DIGITS) for key, value in mapping.items()}


def _importance(
    terms: dict[str, np.ndarray], coefficients: dict[str, float], definitions: tuple[Term, ...]
) -> dict[str, float]:
    """Mean |contribution to the log-odds| per canonical feature: the mean |SHAP| of the true linear model.

    A feature's contribution is the sum over its terms of coefficient * (term - mean term); interaction terms
    are reported under 'a:b' rather than split between their features.
    """
    contributions: dict[str, np.ndarray] = {}
    for term in definitions:
        key = ":".join(term.features)
        centred = coefficients[term.name] * (terms[term.name] - terms[term.name].mean())
        contributions[key] = contributions.get(key, 0.0) + centred
    return {key: float(np.abs(values).mean()) for key, values in contributions.items()}


def _factors(frame: pd.DataFrame, params: SynthesizeParams) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The two-feature terms as products u(a) * v(b), so their Shapley split can be exact."""
    route = frame["route"].to_numpy(dtype=object)
    age = frame["age"].to_numpy(dtype="float64")
    return {
        "esketamine_older_adult": (
            (route == "intranasal_esketamine").astype("float64"),
            (age >= params.treatment.older_adult_age).astype("float64"),
        )
    }


def true_contributions(frame: pd.DataFrame, params: SynthesizeParams) -> pd.DataFrame:
    """Every patient's exact SHAP value per canonical feature in the true log-odds of each additive outcome.

    A one-feature term contributes ``beta * (term - mean term)`` (centred on the generated cohort, the background);
    a product term ``beta * u(a) v(b)`` is shared by the exact interventional Shapley split:
    ``phi_a = beta/2 * [(u mean(v) - mean(uv)) + (u v - mean(u) v)]``, symmetrically for ``b``. The site offset is
    not a predictor and is left out. Only features with a planted effect get a column (the others are 0).
    """
    terms = term_values(frame, params)
    coefficients = planted_coefficients(params)
    factors = _factors(frame, params)
    columns: dict[str, np.ndarray] = {"patient_id": frame["patient_id"].to_numpy(dtype=object)}
    for outcome, latent in ADDITIVE_OUTCOMES.items():
        values: dict[str, np.ndarray] = {}
        for term in model_terms(params):
            beta = coefficients[latent][term.name]
            if beta == 0.0:
                continue
            if len(term.features) == 1:
                share = {term.features[0]: beta * (terms[term.name] - terms[term.name].mean())}
            elif term.name in factors:
                u, v = factors[term.name]
                mean_u, mean_v, mean_uv = u.mean(), v.mean(), (u * v).mean()
                share = {
                    term.features[0]: beta * 0.5 * ((u * mean_v - mean_uv) + (u * v - mean_u * v)),
                    term.features[1]: beta * 0.5 * ((mean_u * v - mean_uv) + (u * v - u * mean_v)),
                }
            else:  # pragma: no cover (every planted product is factorised above)
                raise ValueError(f"no factorisation of the interaction term '{term.name}'")
            for feature, value in share.items():
                values[feature] = values.get(feature, 0.0) + value
        columns |= {f"{outcome}{CONTRIBUTION_SEPARATOR}{feature}": v for feature, v in sorted(values.items())}
    return pd.DataFrame(columns)


def planted_effects(simulated: SimulatedTruth, params: SynthesizeParams) -> dict[str, Any]:
    """Everything the explain and evaluate stages need to check a model against the truth."""
    truth = simulated.frame
    model = simulated.model
    terms = term_values(truth, params)
    definitions = model_terms(params)
    coefficients = planted_coefficients(params)
    oracle = oracle_aurocs(truth)
    baseline = truth["madrs_baseline"].to_numpy(dtype="float64")

    outcomes: dict[str, Any] = {}
    for outcome, (probability, latent, exact) in OUTCOMES.items():
        entry: dict[str, Any] = {
            "probability_column": probability,
            "exact": exact,
            "intercept": round(model.intercepts[latent], DIGITS),
            "coefficients": _rounded(coefficients[latent]),
            "feature_importance": _rounded(_importance(terms, coefficients[latent], definitions)),
            "target_rate": getattr(params.outcomes.targets, outcome),
            "realised_rate": round(float(truth[outcome].astype(bool).mean()), DIGITS),
            "mean_true_probability": round(float(truth[probability].mean()), DIGITS),
            "oracle_auroc": round(oracle[outcome], DIGITS),
        }
        outcomes[outcome] = entry
    outcomes["remission_end"]["nonlinear"] = {
        "madrs_baseline": {
            "formula": (
                "log-odds -= max(0, spread * (logit(0.5 / max_ratio) - logit((10.5) / (madrs_baseline * max_ratio))))"
            ),
            "average_slope_per_6_points": round(_remission_slope(baseline, model.spread, model.max_ratio), DIGITS),
        }
    }
    sustained = outcomes["sustained_week8"]
    sustained["note"] = (
        "sustained = response at end AND at week 8: its log-odds is not linear in the terms. 'coefficients' and "
        "'intercept' are those of the week-8 latent (P(madrs_week8 <= baseline/2 | x) = sigmoid(intercept + "
        "site offset + sum(coefficients * terms))); 'projection' is the least-squares fit of logit(p_sustained_week8) "
        "on the terms and site, the best linear summary of the true log-odds"
    )
    sustained["projection"] = _rounded(
        _projection(truth, terms, params, column="p_sustained_week8", names=list(terms), rows=None)
    )
    outcomes["sustained_week8"]["relapse_hazard_ratio"] = relapse_hazard_ratios(truth, model, params)
    anxious = anxiety_population(truth, params)
    for outcome, (probability, used) in PROJECTED_OUTCOMES.items():
        rows = anxious if outcome == "anxiety_response_end" else np.ones(len(truth), dtype=bool)
        names = [name for name in terms if name in used or ("end" in used and coefficients["end"][name] != 0.0)]
        projection = _projection(truth, terms, params, column=probability, names=names, rows=rows)
        outcomes[outcome] = {
            "probability_column": probability,
            "exact": False,
            "coefficients": _rounded({name: projection.get(name, 0.0) for name in terms}),
            "feature_importance": _rounded(
                _importance(
                    {k: v[rows] for k, v in terms.items()}, {n: projection.get(n, 0.0) for n in terms}, definitions
                )
            ),
            "realised_rate": round(float(truth[outcome].astype(bool)[rows].mean()), DIGITS),
            "mean_true_probability": round(float(truth[probability][rows].mean()), DIGITS),
            "oracle_auroc": round(
                auroc(truth[probability].to_numpy()[rows], truth[outcome].to_numpy(bool)[rows]), DIGITS
            ),
            "population": (
                f"gad7_baseline >= {params.anxiety.calibration_min_baseline}"
                if outcome == "anxiety_response_end"
                else "all patients"
            ),
            "note": (
                "not logistic in the terms: 'coefficients' are the least-squares projection of logit(probability) on "
                "the terms its generating model uses (and the site), over the population; other terms are planted 0"
            ),
        }
    outcomes["anxiety_response_end"]["target_rate"] = params.anxiety.response_target
    outcomes["anxiety_response_end"]["offset"] = round(simulated.anxiety_offset, DIGITS)
    outcomes["response_end_early"] = {
        "probability_column": "p_response_end_early",
        "exact": True,
        "note": "P(response_end | baseline, madrs_24h, cadss_peak_first, sbp_rise_first_mmhg) by quadrature "
        "(absolute error below 1e-5); early markers enter non-linearly, so no coefficients",
        "oracle_auroc": round(oracle["response_end_early"], DIGITS),
    }
    return {
        "description": (
            "Planted effects of the synthetic cohort (pipeline/synthesize). Scale: marginal log-odds, "
            "logit P(outcome | baseline) = intercept + site_offsets[site] + sum(coefficients[t] * term t), exact "
            "where 'exact' is true. Terms are intercept-free encodings of canonical columns (see 'terms'); a 0 "
            "coefficient marks a noise feature. feature_importance = mean |coefficient * (term - mean)| per "
            "canonical feature, i.e. the mean |SHAP| (log-odds) of the true model."
        ),
        "effect_scale": params.effect_scale,
        "terms": {t.name: {"features": list(t.features), "encoding": t.encoding} for t in definitions},
        "site_offsets": {s.name: s.intercept for s in params.sites},
        "outcomes": outcomes,
        "latent_model": {
            "spread": round(model.spread, DIGITS),
            "max_ratio": model.max_ratio,
            "remission_max_madrs": REMISSION_MAX_MADRS,
            "latent_correlation": params.outcomes.latent_correlation.model_dump(),
        },
        "n_patients": len(truth),
    }


def _remission_slope(baseline: np.ndarray, spread: float, max_ratio: float) -> float:
    """Average d(log-odds of remission)/d(baseline) x 6, where the baseline term is active."""
    fraction = (REMISSION_MAX_MADRS + 0.5) / (baseline * max_ratio)
    active = logit(0.5 / max_ratio) > logit(fraction)
    slope = np.where(active, -spread / (baseline * (1.0 - fraction)), 0.0)
    return float(6.0 * slope.mean())


def _projection(
    truth: pd.DataFrame,
    terms: dict[str, np.ndarray],
    params: SynthesizeParams,
    *,
    column: str,
    names: list[str],
    rows: np.ndarray | None,
) -> dict[str, float]:
    """Least-squares coefficients of logit(``column``) on the named terms (with site dummies and an intercept),
    over ``rows`` (a mask; None: all) capped at the first PROJECTION_ROWS of them."""
    selected = np.flatnonzero(np.ones(len(truth), dtype=bool) if rows is None else rows)
    rows = selected[:PROJECTION_ROWS]  # rows are i.i.d., so the first ones are a random sample
    site = truth["site"].to_numpy(dtype=object)[rows]
    sites = [s.name for s in params.sites][1:]
    design = np.column_stack(
        [np.ones(len(site)), *(terms[name][rows] for name in names), *((site == s).astype(float) for s in sites)]
    )
    p = np.clip(truth[column].to_numpy(dtype="float64")[rows], 1e-12, 1 - 1e-12)
    solution, *_ = np.linalg.lstsq(design, logit(p), rcond=None)
    # columns that are constant (e.g. a route nobody takes) get no coefficient rather than an arbitrary one
    constant = design.std(axis=0) == 0
    return {name: (0.0 if constant[i + 1] else float(solution[i + 1])) for i, name in enumerate(names)}
