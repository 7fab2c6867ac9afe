"""The clean synthetic cohort: baseline, treatment, early markers, MADRS trajectories, outcomes, true probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, ndtr
from scipy.stats import nbinom

from pipeline.outcomes import REMISSION_MAX_MADRS, RESPONSE_FRACTION
from pipeline.synthesize.clinical import simulate_anxiety, simulate_blood_pressure
from pipeline.synthesize.cohort import simulate_baseline
from pipeline.synthesize.outcomes import (
    MADRS_MAX,
    CalibratedModel,
    bivariate_normal_upper,
    calibrate,
    latent_at_fraction,
    linear_predictors,
    logistic_from_normal,
    madrs_from_latent,
    markers_joint,
    normal_from_logistic,
    probability_given_markers,
    remission_threshold,
    term_values,
)
from pipeline.synthesize.params import PSYCHOTHERAPIES, ROUTES, SynthesizeParams

COHORT_NAME = "synthetic"

# canonical columns in contract order (tests check this against configs/cohort_schema.yaml)
CANONICAL_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "cohort",
    "site",
    "age",
    "sex",
    "bmi",
    "n_failed_trials",
    "anxious_depression",
    "comorbid_ptsd",
    "lifetime_suicide_attempt",
    "prior_psych_hospitalisation",
    "family_history_aud",
    "prior_ect",
    "benzodiazepine_mg_deq",
    "crp_mg_l",
    "hypertension_history",
    "sbp_baseline",
    "dbp_baseline",
    "postpartum_onset",
    "madrs_baseline",
    "current_suicidal_ideation",
    "gad7_baseline",
    "route",
    "dose",
    "n_sessions",
    "psychotherapy",
    "madrs_24h",
    "cadss_peak_first",
    "sbp_rise_first_mmhg",
    "dbp_rise_first_mmhg",
    "madrs_acute",
    "madrs_end",
    "madrs_week8",
    "madrs_pct_change_acute",
    "response_acute",
    "response_end",
    "remission_end",
    "sustained_week8",
    "gad7_end",
    "anxiety_response_end",
    "bp_event_first",
    "madrs_placebo_acute",
    "response_placebo_acute",
    "madrs_source_scale",
)
# site, baseline predictors and treatment plan: what simulate_baseline() returns
BASELINE_COLUMNS = CANONICAL_COLUMNS[CANONICAL_COLUMNS.index("site") : CANONICAL_COLUMNS.index("psychotherapy") + 1]
# P(outcome | what is known at the task's prediction time), exact under the generating model (site included);
# the *_predictors columns marginalise the site, which no task sees (see site_posterior)
PROBABILITY_COLUMNS: tuple[str, ...] = (
    "p_response_acute",
    "p_response_end",
    "p_remission_end",
    "p_sustained_week8",
    "p_response_end_early",
    "p_anxiety_response_end",
    "p_bp_event_first",
    "p_response_acute_predictors",
    "p_response_end_predictors",
    "p_response_end_early_predictors",
    "p_sustained_week8_predictors",
    "p_anxiety_response_end_predictors",
    "p_bp_event_first_predictors",
)
RACEMIC_ROUTES = ("iv_racemic", "oral", "im_sc")  # CADSS predicts response for racemic ketamine only (lit §8c)


@dataclass(frozen=True)
class SimulatedTruth:
    frame: pd.DataFrame  # CANONICAL_COLUMNS + PROBABILITY_COLUMNS, one row per patient
    model: CalibratedModel
    anxiety_offset: float = 0.0  # calibrated offset of the fractional GAD-7 change (see .clinical)


def patient_ids(n: int) -> np.ndarray:
    """Pseudonymous, zero-padded ids ('syn-000001', ...), in generation order (rows are i.i.d.)."""
    width = max(6, len(str(n)))
    numbers = np.strings.zfill(np.arange(1, n + 1).astype(str), width)
    return np.strings.add("syn-", numbers).astype(object)


def _cadss_cdf_table(params: SynthesizeParams) -> np.ndarray:
    """CDF of the capped negative binomial CADSS peak per route, shape (routes, cadss_max + 1)."""
    markers = params.early_markers
    shape = markers.cadss_negbin_shape
    support = np.arange(markers.cadss_max + 1)
    table = np.empty((len(ROUTES), support.size))
    for k, route in enumerate(ROUTES):
        mean = getattr(markers.cadss_mean, route)
        table[k] = nbinom.cdf(support, shape, shape / (shape + mean))
    table[:, -1] = 1.0  # mass above the scale maximum sits at the maximum
    return table


def simulate_truth(params: SynthesizeParams, rng: np.random.Generator) -> SimulatedTruth:
    """Generate the clean cohort with its calibrated model; pure apart from the random generator."""
    baseline_rng, latent_rng, marker_rng = rng.spawn(3)
    (clinical_rng,) = rng.spawn(1)  # spawned after the others, so adding it left their streams unchanged
    columns = simulate_baseline(params, baseline_rng)
    n = params.n_patients
    site_index = columns.pop("_site_index")
    route_index = columns.pop("_route_index")
    madrs_baseline = columns["madrs_baseline"]

    predictors = linear_predictors(term_values(columns, params), site_index, params)
    model = calibrate(predictors, madrs_baseline, params)
    eta = {latent: model.intercepts[latent] + lp for latent, lp in predictors.items()}
    spread, max_ratio = model.spread, model.max_ratio

    # latent normals: a chain 24 h - acute - end - week 8, and CADSS hanging off end for racemic routes
    corr = params.outcomes.latent_correlation
    draws = latent_rng.standard_normal((n, 5))
    rho_cadss = np.where(np.isin(columns["route"], RACEMIC_ROUTES), corr.cadss_end_racemic, 0.0)
    n_end = draws[:, 0]
    n_acute = corr.acute_end * n_end + np.sqrt(1 - corr.acute_end**2) * draws[:, 1]
    n_24h = corr.h24_acute * n_acute + np.sqrt(1 - corr.h24_acute**2) * draws[:, 2]
    n_week8 = corr.end_week8 * n_end + np.sqrt(1 - corr.end_week8**2) * draws[:, 3]
    n_cadss = rho_cadss * n_end + np.sqrt(1 - rho_cadss**2) * draws[:, 4]

    z_24h = eta["acute"] + logistic_from_normal(n_24h)
    z_acute = eta["acute"] + logistic_from_normal(n_acute)
    z_end = eta["end"] + logistic_from_normal(n_end)
    z_week8 = eta["week8"] + logistic_from_normal(n_week8)
    madrs_24h = madrs_from_latent(z_24h, madrs_baseline, spread, max_ratio, keep_response=False)
    madrs_acute = madrs_from_latent(z_acute, madrs_baseline, spread, max_ratio, keep_response=True)
    madrs_end = madrs_from_latent(z_end, madrs_baseline, spread, max_ratio, keep_response=True)
    madrs_week8 = madrs_from_latent(z_week8, madrs_baseline, spread, max_ratio, keep_response=True)

    cdf_table = _cadss_cdf_table(params)
    cadss_int = np.empty(n, dtype=np.int64)
    for k in range(len(ROUTES)):
        on_route = route_index == k
        cadss_int[on_route] = np.searchsorted(cdf_table[k], ndtr(n_cadss[on_route]), side="left")  # min k: F(k) >= u
    cadss = cadss_int.astype("float64")

    weights = site_posterior(columns, route_index, params)
    clinical_draws = clinical_rng.standard_normal((n, 2))
    blood_pressure = simulate_blood_pressure(
        columns, params, site_index=site_index, route_index=route_index, cadss=cadss, cadss_cdf_table=cdf_table,
        sbp_normal=marker_rng.standard_normal(n), dbp_normal=clinical_draws[:, 0], site_weights=weights,
    )  # fmt: skip
    anxiety, anxiety_offset = simulate_anxiety(
        columns, params, eta_end=eta["end"], z_end=z_end, spread=spread, max_ratio=max_ratio,
        noise=clinical_draws[:, 1], site_index=site_index, site_weights=weights,
    )  # fmt: skip

    # true probabilities given what is known at each prediction time
    end_cut = normal_from_logistic(-eta["end"])
    week8_cut = normal_from_logistic(-eta["week8"])
    h24_interval = _score_interval(madrs_24h, madrs_baseline, eta["acute"], spread, max_ratio)
    cadss_cdf_interval = (
        np.where(cadss_int > 0, cdf_table[route_index, np.maximum(cadss_int - 1, 0)], 0.0),
        cdf_table[route_index, cadss_int],
    )
    predictors_only = _site_marginal(
        params, columns, weights=weights, site_index=site_index, eta=eta, madrs_24h=madrs_24h,
        cadss_cdf_interval=cadss_cdf_interval, rho_cadss=rho_cadss, model=model,
    )  # fmt: skip
    probabilities = {
        "p_response_acute": expit(eta["acute"]),
        "p_response_end": expit(eta["end"]),
        "p_remission_end": expit(eta["end"] - remission_threshold(madrs_baseline, spread, max_ratio)),
        "p_sustained_week8": bivariate_normal_upper(end_cut, week8_cut, corr.end_week8),
        "p_response_end_early": probability_given_markers(
            end_cut, h24_interval, corr.h24_acute * corr.acute_end, cadss_cdf_interval, rho_cadss
        ),
        "p_anxiety_response_end": anxiety.pop("p_anxiety_response_end"),
        "p_bp_event_first": blood_pressure.pop("p_bp_event_first"),
        **predictors_only,
        "p_anxiety_response_end_predictors": anxiety.pop("p_anxiety_response_end_predictors"),
        "p_bp_event_first_predictors": blood_pressure.pop("p_bp_event_first_predictors"),
    }

    half_baseline = RESPONSE_FRACTION * madrs_baseline
    response_end = madrs_end <= half_baseline
    site_scale = {s.name: s.scale for s in params.sites}
    frame = pd.DataFrame(
        {
            "patient_id": patient_ids(n),
            "cohort": COHORT_NAME,
            **{name: columns[name] for name in BASELINE_COLUMNS},
            "madrs_24h": madrs_24h,
            "cadss_peak_first": cadss,
            "sbp_rise_first_mmhg": blood_pressure["sbp_rise_first_mmhg"],
            "dbp_rise_first_mmhg": blood_pressure["dbp_rise_first_mmhg"],
            "madrs_acute": madrs_acute,
            "madrs_end": madrs_end,
            "madrs_week8": madrs_week8,
            "madrs_pct_change_acute": 100.0 * ((madrs_acute - madrs_baseline) / madrs_baseline),  # as the cleaner
            "response_acute": madrs_acute <= half_baseline,
            "response_end": response_end,
            "remission_end": madrs_end <= REMISSION_MAX_MADRS,
            "sustained_week8": response_end & (madrs_week8 <= half_baseline),
            "gad7_end": anxiety["gad7_end"],
            "anxiety_response_end": anxiety["anxiety_response_end"],
            "bp_event_first": blood_pressure["bp_event_first"],
            "madrs_placebo_acute": np.nan,  # the saline crossover exists only in ds005917
            "response_placebo_acute": None,
            "madrs_source_scale": pd.Series(columns["site"]).map(site_scale).to_numpy(dtype=object),
            **{name: probabilities[name] for name in PROBABILITY_COLUMNS},
        }
    )
    return SimulatedTruth(frame=frame, model=model, anxiety_offset=anxiety_offset)


def _site_marginal(
    params: SynthesizeParams,
    columns: dict[str, np.ndarray],
    *,
    weights: np.ndarray,
    site_index: np.ndarray,
    eta: dict[str, np.ndarray],
    madrs_24h: np.ndarray,
    cadss_cdf_interval: tuple[np.ndarray, np.ndarray],
    rho_cadss: np.ndarray,
    model: CalibratedModel,
) -> dict[str, np.ndarray]:
    """The true probabilities with the site marginalised over :func:`site_posterior` (what a model of the
    predictors, which never see the site, can at best reach); for the first-dose task the 24-h MADRS, whose
    latent shares the acute linear predictor and so the site offset, re-weights the sites too."""
    n = len(site_index)
    corr = params.outcomes.latent_correlation
    offsets = np.array([site.intercept for site in params.sites])
    without_site = {latent: values - offsets[site_index] for latent, values in eta.items()}
    joint_sum, marker_sum = np.zeros(n), np.zeros(n)
    for k, offset in enumerate(offsets):
        joint, marker = markers_joint(
            normal_from_logistic(-(without_site["end"] + offset)),
            _score_interval(
                madrs_24h, columns["madrs_baseline"], without_site["acute"] + offset, model.spread, model.max_ratio
            ),
            corr.h24_acute * corr.acute_end,
            cadss_cdf_interval,
            rho_cadss,
        )
        joint_sum += weights[:, k] * joint
        marker_sum += weights[:, k] * marker
    out = {
        "p_response_acute_predictors": (weights * expit(without_site["acute"][:, None] + offsets)).sum(axis=1),
        "p_response_end_predictors": (weights * expit(without_site["end"][:, None] + offsets)).sum(axis=1),
        "p_sustained_week8_predictors": sum(
            weights[:, k]
            * bivariate_normal_upper(
                normal_from_logistic(-(without_site["end"] + offset)),
                normal_from_logistic(-(without_site["week8"] + offset)),
                corr.end_week8,
            )
            for k, offset in enumerate(offsets)
        ),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        out["p_response_end_early_predictors"] = np.where(
            marker_sum > 0, np.clip(joint_sum / marker_sum, 0.0, 1.0), out["p_response_end_predictors"]
        )
    return out


def site_posterior(columns: dict[str, np.ndarray], route_index: np.ndarray, params: SynthesizeParams) -> np.ndarray:
    """P(site | age, route, psychotherapy) per patient, shape (n, sites): the site's share times the probability of
    the patient's whole-year age under its truncated normal, its route share and its psychotherapy share.

    These are the only predictors whose distribution the generator ties to the site directly. Not included: the
    weak information the Gaussian copula lends to traits correlated with age (failed trials, rho 0.25 on the
    latent scale, and through them prior ECT), because the site shifts age's mean; treating it as absent makes
    the marginal probabilities very slightly less sharp than the exact E[outcome | predictors].
    """
    age_cfg = params.cohort.age
    low, high = age_cfg.min - 0.5, age_cfg.max + 0.4999  # as simulate_baseline truncates before rounding
    age = np.asarray(columns["age"], dtype="float64")
    therapy_index = pd.Series(columns["psychotherapy"]).map({p: i for i, p in enumerate(PSYCHOTHERAPIES)}).to_numpy()
    log_weight = np.empty((len(age), len(params.sites)))
    with np.errstate(divide="ignore"):
        for k, site in enumerate(params.sites):
            mass = ndtr((high - site.age_mean) / age_cfg.sd) - ndtr((low - site.age_mean) / age_cfg.sd)
            upper = ndtr((np.minimum(age + 0.5, high) - site.age_mean) / age_cfg.sd)
            lower = ndtr((np.maximum(age - 0.5, low) - site.age_mean) / age_cfg.sd)
            route_share = np.array([getattr(site.route_mix, r) for r in ROUTES])[route_index]
            therapy_share = np.array([getattr(site.psychotherapy_mix, p) for p in PSYCHOTHERAPIES])[therapy_index]
            log_weight[:, k] = (
                np.log(site.share) + np.log((upper - lower) / mass) + np.log(route_share) + np.log(therapy_share)
            )
    log_weight -= log_weight.max(axis=1, keepdims=True)
    weight = np.exp(log_weight)
    return weight / weight.sum(axis=1, keepdims=True)


def _score_interval(
    score: np.ndarray, baseline: np.ndarray, eta: np.ndarray, spread: float, max_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """The interval of the latent normal that rounds to the recorded (un-capped) integer ``score``."""
    with np.errstate(divide="ignore"):
        low_z = np.where(score < MADRS_MAX, latent_at_fraction((score + 0.5) / baseline, spread, max_ratio), -np.inf)
        high_z = np.where(score > 0, latent_at_fraction((score - 0.5) / baseline, spread, max_ratio), np.inf)
    return normal_from_logistic(low_z - eta), normal_from_logistic(high_z - eta)
