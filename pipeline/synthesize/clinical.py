"""The clinical questions beyond response (lit §11-§14): anxiety, first-session blood pressure, postpartum onset.

- **Baseline** (:func:`simulate_clinical_baseline`): hypertension history (its latent correlated with age's),
  baseline SBP/DBP (truncated normals rising with age and hypertension; patients at >= 180/110 are not dosed),
  baseline GAD-7 (truncated normal, its latent correlated with the anxious-depression flag's) and a
  postpartum-onset flag among women (no effect on any outcome: lit §14 found no TRD data, a documented null).
- **First-session blood pressure** (:func:`simulate_blood_pressure`): SBP rise ~ Normal(mu(x), sd) with mu from
  the site's cohort mean (the published spread between cohorts), age, hypertension, dose, route and dissociation
  above a CADSS cut; DBP rise = ratio x SBP rise + Normal(0, tau). The event (pipeline/outcomes.py
  ``BP_EVENT_*``) is read on the recorded whole mmHg, so given mu its probability is one bivariate-normal orthant;
  before the first dose the dissociation term is unknown and is averaged over P(CADSS > cut | route).
- **Anxiety** (:func:`simulate_anxiety`): fractional GAD-7 change = slope x depression change (the unrounded
  MADRS ratio at the end of induction, minus 1) + offset + direct term + Normal(0, sd): partly mediated by the
  depression change (KADS), with a non-mediated part. Responders (change <= -50 %) are capped at floor(baseline
  / 2), non-responders kept above it, so the response flag is exactly the latent event. Its probability given the
  baseline integrates the depression latent's logistic noise by Gauss-Hermite quadrature.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

from pipeline.errors import ConfigError
from pipeline.outcomes import BP_EVENT_DBP_PEAK, BP_EVENT_SBP_PEAK, BP_EVENT_SBP_RISE, RESPONSE_FRACTION
from pipeline.synthesize.outcomes import bivariate_normal_upper, logistic_from_normal, residual_fraction
from pipeline.synthesize.params import ROUTES, BaselineBp, SynthesizeParams

Columns = dict[str, np.ndarray]
_HERMITE_NODES, _HERMITE_WEIGHTS = hermegauss(48)
_HERMITE_WEIGHTS = _HERMITE_WEIGHTS / np.sqrt(2.0 * np.pi)  # expectation over a standard normal
_CHUNK = 1 << 14
CALIBRATION_ROWS = 100_000  # the anxiety offset is solved on at most this many (i.i.d.) rows
OFFSET_BRACKET = (-3.0, 3.0)
SBP_RISE_RANGE = (-60.0, 120.0)  # the contract's range of the recorded rises
DBP_RISE_RANGE = (-40.0, 80.0)
GAD7_MAX = 21


# --- baseline -------------------------------------------------------------------------------------------------


def _truncated(latent: np.ndarray, mean: np.ndarray, sd: float, low: float, high: float) -> np.ndarray:
    lower, upper = ndtr((low - mean) / sd), ndtr((high - mean) / sd)
    return np.clip(mean + sd * ndtri(lower + ndtr(latent) * (upper - lower)), low, high)


def _bp(latent: np.ndarray, cfg: BaselineBp, age: np.ndarray, hypertension: np.ndarray, ref: float) -> np.ndarray:
    mean = cfg.mean + cfg.per_year * (age - ref) + cfg.hypertension * hypertension
    # whole mmHg, kept inside [min, max] after rounding
    return np.floor(_truncated(latent, mean, cfg.sd, cfg.min - 0.5, cfg.max + 0.4999) + 0.5)


def simulate_clinical_baseline(
    params: SynthesizeParams,
    *,
    age: np.ndarray,
    age_latent: np.ndarray,
    anxious_latent: np.ndarray,
    female: np.ndarray,
    rng: np.random.Generator,
) -> Columns:
    """Hypertension history, baseline SBP/DBP, baseline GAD-7 and the postpartum-onset flag (clean values)."""
    n = age.size
    bp = params.blood_pressure
    anxiety = params.anxiety
    draws = rng.standard_normal((n, 4))
    rho_age = bp.hypertension_age_correlation
    htn_latent = rho_age * age_latent + np.sqrt(1.0 - rho_age**2) * draws[:, 0]
    hypertension = htn_latent > ndtri(1.0 - bp.hypertension)
    rho_bp = bp.dbp_sbp_correlation
    sbp = _bp(draws[:, 1], bp.sbp_baseline, age, hypertension, bp.reference_age)
    dbp_latent = rho_bp * draws[:, 1] + np.sqrt(1.0 - rho_bp**2) * draws[:, 2]
    dbp = _bp(dbp_latent, bp.dbp_baseline, age, hypertension, bp.reference_age)

    rho_anx = anxiety.anxious_depression_correlation
    gad_latent = rho_anx * anxious_latent + np.sqrt(1.0 - rho_anx**2) * draws[:, 3]
    cfg = anxiety.gad7_baseline
    gad7 = np.floor(_truncated(gad_latent, np.full(n, cfg.mean), cfg.sd, cfg.min - 0.5, cfg.max + 0.4999) + 0.5)

    postpartum = female & (rng.random(n) < params.cohort.postpartum_onset_female)
    return {
        "hypertension_history": hypertension,
        "sbp_baseline": sbp,
        "dbp_baseline": dbp,
        "postpartum_onset": postpartum,
        "gad7_baseline": gad7,
    }


# --- first-session blood pressure -----------------------------------------------------------------------------


def site_sbp_rise_means(params: SynthesizeParams) -> np.ndarray:
    """Each site's cohort mean SBP rise (mmHg), falling back to early_markers.sbp_rise_mean."""
    default = params.early_markers.sbp_rise_mean
    return np.array([default if s.sbp_rise_mean is None else s.sbp_rise_mean for s in params.sites])


def sbp_rise_mean_without_site(columns: Mapping[str, np.ndarray], params: SynthesizeParams) -> np.ndarray:
    """The patient part of the mean SBP rise: age, hypertension, dose and route (no site, no dissociation)."""
    bp = params.blood_pressure
    markers = params.early_markers
    route = np.asarray(columns["route"], dtype=object)
    dose = np.asarray(columns["dose"], dtype="float64")
    mean = markers.sbp_rise_per_year * (np.asarray(columns["age"], dtype="float64") - markers.sbp_reference_age)
    mean = mean + bp.rise_hypertension * np.asarray(columns["hypertension_history"], dtype="float64")
    parenteral = (route == "iv_racemic") | (route == "im_sc")  # oral racemic: low, first-pass-reduced levels
    mean = mean + np.where(parenteral, bp.rise_per_quarter_mg_kg * (dose - bp.racemic_reference_mg_kg) / 0.25, 0.0)
    esketamine = route == "intranasal_esketamine"
    mean = mean + np.where(esketamine, bp.rise_per_28_mg_esketamine * (dose - bp.esketamine_reference_mg) / 28.0, 0.0)
    for name in ROUTES[1:]:
        mean = mean + np.where(route == name, getattr(bp.rise_route, name), 0.0)
    return mean


def dbp_rise_sd(params: SynthesizeParams) -> float:
    bp = params.blood_pressure
    return float(np.hypot(bp.dbp_rise_ratio * params.early_markers.sbp_rise_sd, bp.dbp_rise_noise_sd))


def bp_event_probability(
    mean: np.ndarray, sbp_baseline: np.ndarray, dbp_baseline: np.ndarray, params: SynthesizeParams
) -> np.ndarray:
    """P(event | mean SBP rise, baseline BP) on the recorded whole-mmHg values, exactly.

    Recorded rise r = round(s): r >= 40 iff s >= 39.5; SBP peak baseline + r >= 180 iff s >= 179.5 - baseline
    (baselines are whole mmHg); likewise for DBP. No event = (s, d) below both cuts: one bivariate-normal orthant.
    """
    bp = params.blood_pressure
    sd_s = params.early_markers.sbp_rise_sd
    sd_d = dbp_rise_sd(params)
    rho = bp.dbp_rise_ratio * sd_s / sd_d
    cut_s = np.minimum(BP_EVENT_SBP_RISE - 0.5, BP_EVENT_SBP_PEAK - 0.5 - np.asarray(sbp_baseline, dtype="float64"))
    cut_d = BP_EVENT_DBP_PEAK - 0.5 - np.asarray(dbp_baseline, dtype="float64")
    below = bivariate_normal_upper(-(cut_s - mean) / sd_s, -(cut_d - bp.dbp_rise_ratio * mean) / sd_d, rho)
    return np.clip(1.0 - below, 0.0, 1.0)


def dissociation_share(cadss_cdf_table: np.ndarray, params: SynthesizeParams) -> np.ndarray:
    """P(CADSS peak > dissociation_cadss) per route (rows of the CADSS CDF table)."""
    cut = int(np.floor(params.blood_pressure.dissociation_cadss))
    return 1.0 - cadss_cdf_table[:, min(cut, cadss_cdf_table.shape[1] - 1)]


def simulate_blood_pressure(
    columns: Mapping[str, np.ndarray],
    params: SynthesizeParams,
    *,
    site_index: np.ndarray,
    route_index: np.ndarray,
    cadss: np.ndarray,
    cadss_cdf_table: np.ndarray,
    sbp_normal: np.ndarray,
    dbp_normal: np.ndarray,
    site_weights: np.ndarray,
) -> Columns:
    """First-session SBP/DBP rises, the hypertensive event and its true probabilities before the first dose."""
    bp = params.blood_pressure
    site_means = site_sbp_rise_means(params)
    patient = sbp_rise_mean_without_site(columns, params)
    dissociated = cadss > bp.dissociation_cadss
    mean = site_means[site_index] + patient + bp.rise_dissociation * dissociated
    sbp_rise = np.clip(np.floor(mean + params.early_markers.sbp_rise_sd * sbp_normal + 0.5), *SBP_RISE_RANGE)
    # the DBP rise follows the unrounded SBP rise
    sbp_continuous = mean + params.early_markers.sbp_rise_sd * sbp_normal
    dbp_rise = np.clip(
        np.floor(bp.dbp_rise_ratio * sbp_continuous + bp.dbp_rise_noise_sd * dbp_normal + 0.5), *DBP_RISE_RANGE
    )
    sbp_base, dbp_base = columns["sbp_baseline"], columns["dbp_baseline"]
    event = (
        (sbp_rise >= BP_EVENT_SBP_RISE)
        | (sbp_base + sbp_rise >= BP_EVENT_SBP_PEAK)
        | (dbp_base + dbp_rise >= BP_EVENT_DBP_PEAK)
    )

    q = dissociation_share(cadss_cdf_table, params)[route_index]

    def before_dose(site_mean: np.ndarray | float) -> np.ndarray:
        low = bp_event_probability(site_mean + patient, sbp_base, dbp_base, params)
        high = bp_event_probability(site_mean + patient + bp.rise_dissociation, sbp_base, dbp_base, params)
        return q * high + (1.0 - q) * low

    marginal = np.zeros(len(site_index))
    for k, site_mean in enumerate(site_means):
        marginal += site_weights[:, k] * before_dose(site_mean)
    return {
        "sbp_rise_first_mmhg": sbp_rise,
        "dbp_rise_first_mmhg": dbp_rise,
        "bp_event_first": event,
        "p_bp_event_first": before_dose(site_means[site_index]),
        "p_bp_event_first_predictors": marginal,
    }


# --- anxiety --------------------------------------------------------------------------------------------------


def _depression_change(latent: np.ndarray, spread: float, max_ratio: float) -> np.ndarray:
    return residual_fraction(latent, spread, max_ratio) - 1.0


def anxiety_direct(columns: Mapping[str, np.ndarray], params: SynthesizeParams) -> np.ndarray:
    """The non-mediated part of the fractional GAD-7 change (offset excluded)."""
    return params.anxiety.anxious_depression_direct * np.asarray(columns["anxious_depression"], dtype="float64")


def anxiety_response_probability(
    eta_end: np.ndarray, shift: np.ndarray, spread: float, max_ratio: float, params: SynthesizeParams
) -> np.ndarray:
    """P(GAD-7 change <= -50 % | eta_end, offset + direct term), integrating the end latent's logistic noise.

    The end latent is eta_end + logit(Phi(N)), N standard normal; Gauss-Hermite over N (48 nodes), in chunks.
    """
    cfg = params.anxiety
    noise = logistic_from_normal(_HERMITE_NODES)
    out = np.empty(eta_end.size)
    for start in range(0, eta_end.size, _CHUNK):
        eta = eta_end[start : start + _CHUNK, None]
        change = cfg.depression_slope * _depression_change(eta + noise, spread, max_ratio)
        cut = (RESPONSE_FRACTION - 1.0 - shift[start : start + _CHUNK, None] - change) / cfg.noise_sd
        out[start : start + _CHUNK] = ndtr(cut) @ _HERMITE_WEIGHTS
    return np.clip(out, 0.0, 1.0)


def calibrate_anxiety_offset(
    eta_end: np.ndarray,
    direct: np.ndarray,
    gad7: np.ndarray,
    *,
    spread: float,
    max_ratio: float,
    params: SynthesizeParams,
) -> float:
    """The offset at which the mean anxiety response probability of the target population is the target."""
    cfg = params.anxiety
    rows = np.flatnonzero(gad7 >= cfg.calibration_min_baseline)[:CALIBRATION_ROWS]
    if rows.size == 0:
        raise ConfigError(
            "synthesize.anxiety.calibration_min_baseline: no patient reaches it",
            hint="lower it or raise anxiety.gad7_baseline.mean",
        )

    def mean_at(offset: float) -> float:
        return float(
            anxiety_response_probability(eta_end[rows], direct[rows] + offset, spread, max_ratio, params).mean()
        )

    low, high = OFFSET_BRACKET
    if (mean_at(low) - cfg.response_target) * (mean_at(high) - cfg.response_target) > 0:
        raise ConfigError(
            f"synthesize.anxiety.response_target: {cfg.response_target:g} cannot be reached",
            hint="choose a target nearer the depression response rate, or a larger noise_sd",
        )
    return float(brentq(lambda x: mean_at(x) - cfg.response_target, low, high, xtol=1e-12, rtol=1e-14, maxiter=200))


def simulate_anxiety(
    columns: Mapping[str, np.ndarray],
    params: SynthesizeParams,
    *,
    eta_end: np.ndarray,
    z_end: np.ndarray,
    spread: float,
    max_ratio: float,
    noise: np.ndarray,
    site_index: np.ndarray,
    site_weights: np.ndarray,
) -> tuple[Columns, float]:
    """GAD-7 at the end of induction, anxiety response and its true probabilities; and the calibrated offset."""
    cfg = params.anxiety
    gad7 = np.asarray(columns["gad7_baseline"], dtype="float64")
    direct = anxiety_direct(columns, params)
    offset = calibrate_anxiety_offset(eta_end, direct, gad7, spread=spread, max_ratio=max_ratio, params=params)
    change = (
        cfg.depression_slope * _depression_change(z_end, spread, max_ratio) + offset + direct + cfg.noise_sd * noise
    )
    responded = change <= RESPONSE_FRACTION - 1.0
    score = np.clip(np.floor(gad7 * (1.0 + change) + 0.5), 0, GAD7_MAX)
    largest_responding = np.floor(RESPONSE_FRACTION * gad7)
    score = np.where(responded, np.minimum(score, largest_responding), np.maximum(score, largest_responding + 1))
    score = np.clip(score, 0, GAD7_MAX)  # a non-responder at 21 stays at 21 (floor(21/2) + 1 = 11 <= 21)

    offsets = np.array([s.intercept for s in params.sites])
    without_site = eta_end - offsets[site_index]
    marginal = np.zeros(eta_end.size)
    for k, site_offset in enumerate(offsets):
        marginal += site_weights[:, k] * anxiety_response_probability(
            without_site + site_offset, direct + offset, spread, max_ratio, params
        )
    return {
        "gad7_end": score,
        "anxiety_response_end": score <= RESPONSE_FRACTION * gad7,
        "p_anxiety_response_end": anxiety_response_probability(eta_end, direct + offset, spread, max_ratio, params),
        "p_anxiety_response_end_predictors": marginal,
    }, offset
