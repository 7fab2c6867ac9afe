"""Outcome model: planted effects, latent improvement, MADRS trajectories and exact true probabilities.

For each time point k (24 h, acute, end of induction, week 8) a patient's latent improvement is
``z_k = eta_k(x) + L_k`` with ``L_k`` standard logistic, so ``P(z_k > 0 | x) = sigmoid(eta_k(x))`` exactly and
the planted coefficients of ``eta_k`` are marginal log-odds. ``L_k = logit(Phi(N_k))`` where the standard normals
``N_k`` form a Gaussian-copula chain (24 h - acute - end - week 8, and the first session's CADSS - end for racemic
routes): the marginals stay exactly logistic while the time points are correlated.

A MADRS score is ``baseline * r(z)``, rounded half up, with ``r`` decreasing from ``1 + max_worsening`` to 0 and
``r(0) = 1/2``. Responders (``z > 0``) are then capped at ``floor(baseline / 2)`` and non-responders floored just
above it, which moves at most one point and makes ``response == (z > 0)`` exact despite rounding. Remission
(MADRS <= 10) is then ``z_end > max(0, r^-1(10.5 / baseline))``: again a logistic tail, so its probability is
exact too. Sustained response needs ``z_end > 0`` and ``z_week8 > 0``: a bivariate-normal orthant, computed with
Drezner & Wesolowsky's (1990) Gauss-Legendre formula (double precision for |rho| < 0.925, as in Genz's BVNU).
``p_response_end_early`` conditions on the recorded integer MADRS at 24 h and CADSS, each an interval of its
latent normal: exact bivariate-normal differences for the 24 h interval, integrated over the CADSS interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy.optimize import brentq
from scipy.special import expit, log_ndtr, logit, ndtr, ndtri

from pipeline.errors import ConfigError
from pipeline.outcomes import REMISSION_MAX_MADRS, RESPONSE_FRACTION
from pipeline.synthesize.params import PSYCHOTHERAPIES, ROUTES, SynthesizeParams

MADRS_MAX = 60
INTERCEPT_BRACKET = (-30.0, 30.0)
SPREAD_BRACKET = (1e-3, 50.0)
_GAUSS_LEGENDRE = {m: leggauss(m) for m in (1, 6, 12, 20)}
_CHUNK = 1 << 14


# --- planted effects ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One encoded feature of the linear predictor (intercept-free)."""

    name: str
    features: tuple[str, ...]  # canonical columns it is computed from
    encoding: str


def model_terms(params: SynthesizeParams) -> tuple[Term, ...]:
    """Every term of the linear predictors, including the noise features whose planted effect is 0."""
    bzd_high = params.effects.benzodiazepine_high_mg
    crp_high = params.cohort.crp.high_mg_l
    older = params.treatment.older_adult_age
    terms = [
        Term("age_per_10y", ("age",), "age / 10 (years)"),
        Term("sex_female", ("sex",), "1 if sex == 'F'"),
        Term("bmi_per_5", ("bmi",), "bmi / 5 (kg/m2)"),
        Term("n_failed_trials", ("n_failed_trials",), "count of failed adequate trials"),
        Term("anxious_depression", ("anxious_depression",), "1 if true"),
        Term("comorbid_ptsd", ("comorbid_ptsd",), "1 if true"),
        Term("lifetime_suicide_attempt", ("lifetime_suicide_attempt",), "1 if true"),
        Term("prior_psych_hospitalisation", ("prior_psych_hospitalisation",), "1 if true"),
        Term("family_history_aud", ("family_history_aud",), "1 if true"),
        Term("prior_ect", ("prior_ect",), "1 if true"),
        Term("benzodiazepine_any", ("benzodiazepine_mg_deq",), "1 if benzodiazepine_mg_deq > 0"),
        Term("benzodiazepine_high", ("benzodiazepine_mg_deq",), f"1 if benzodiazepine_mg_deq > {bzd_high:g} mg"),
        Term("crp_high", ("crp_mg_l",), f"1 if crp_mg_l >= {crp_high:g} mg/L"),
        Term("madrs_baseline_per_6", ("madrs_baseline",), "madrs_baseline / 6"),
        Term("current_suicidal_ideation", ("current_suicidal_ideation",), "1 if true"),
        # planted 0 on response (lit §11-§14): noise for the response tasks, structural for safety and anxiety
        Term("hypertension_history", ("hypertension_history",), "1 if true"),
        Term("sbp_baseline_per_10", ("sbp_baseline",), "sbp_baseline / 10 (mmHg)"),
        Term("dbp_baseline_per_10", ("dbp_baseline",), "dbp_baseline / 10 (mmHg)"),
        Term("postpartum_onset", ("postpartum_onset",), "1 if true"),
        Term("gad7_baseline_per_5", ("gad7_baseline",), "gad7_baseline / 5 (GAD-7 points)"),
        *(Term(f"route_{r}", ("route",), f"1 if route == '{r}' (reference iv_racemic)") for r in ROUTES[1:]),
        Term(
            "esketamine_older_adult",
            ("route", "age"),
            f"1 if route == 'intranasal_esketamine' and age >= {older}",
        ),
        Term("dose", ("dose",), "dose per session (mg/kg racemic, mg esketamine)"),
        Term("n_sessions_log2", ("n_sessions",), "log2(n_sessions)"),
        *(
            Term(f"psychotherapy_{p}", ("psychotherapy",), f"1 if psychotherapy == '{p}' (reference none)")
            for p in PSYCHOTHERAPIES[1:]
        ),
    ]
    return tuple(terms)


def _as_array(columns: Mapping[str, Any], name: str, dtype: str | type) -> np.ndarray:
    values = columns[name]
    if hasattr(values, "to_numpy"):
        return values.to_numpy(dtype=dtype)
    return np.asarray(values, dtype=dtype)


def term_values(columns: Mapping[str, Any], params: SynthesizeParams) -> dict[str, np.ndarray]:
    """Encode canonical columns (a truth frame or a dict of arrays) into the model terms, as float arrays."""
    age = _as_array(columns, "age", "float64")
    route = _as_array(columns, "route", object)
    therapy = _as_array(columns, "psychotherapy", object)
    bzd = _as_array(columns, "benzodiazepine_mg_deq", "float64")
    flag = {
        name: _as_array(columns, name, bool).astype("float64")
        for name in (
            "anxious_depression",
            "comorbid_ptsd",
            "lifetime_suicide_attempt",
            "prior_psych_hospitalisation",
            "family_history_aud",
            "prior_ect",
            "current_suicidal_ideation",
            "hypertension_history",
            "postpartum_onset",
        )
    }
    values = {
        "age_per_10y": age / 10.0,
        "sex_female": (_as_array(columns, "sex", object) == "F").astype("float64"),
        "bmi_per_5": _as_array(columns, "bmi", "float64") / 5.0,
        "n_failed_trials": _as_array(columns, "n_failed_trials", "float64"),
        **flag,
        "benzodiazepine_any": (bzd > 0).astype("float64"),
        "benzodiazepine_high": (bzd > params.effects.benzodiazepine_high_mg).astype("float64"),
        "crp_high": (_as_array(columns, "crp_mg_l", "float64") >= params.cohort.crp.high_mg_l).astype("float64"),
        "madrs_baseline_per_6": _as_array(columns, "madrs_baseline", "float64") / 6.0,
        "sbp_baseline_per_10": _as_array(columns, "sbp_baseline", "float64") / 10.0,
        "dbp_baseline_per_10": _as_array(columns, "dbp_baseline", "float64") / 10.0,
        "gad7_baseline_per_5": _as_array(columns, "gad7_baseline", "float64") / 5.0,
        **{f"route_{r}": (route == r).astype("float64") for r in ROUTES[1:]},
        "esketamine_older_adult": (
            (route == "intranasal_esketamine") & (age >= params.treatment.older_adult_age)
        ).astype("float64"),
        "dose": _as_array(columns, "dose", "float64"),
        "n_sessions_log2": np.log2(_as_array(columns, "n_sessions", "float64")),
        **{f"psychotherapy_{p}": (therapy == p).astype("float64") for p in PSYCHOTHERAPIES[1:]},
    }
    return {term.name: values[term.name] for term in model_terms(params)}


def planted_coefficients(params: SynthesizeParams) -> dict[str, dict[str, float]]:
    """Marginal log-odds coefficients of every term, per latent (acute, end, week8); 0 marks a noise feature.

    ``effect_scale`` multiplies the patient-level effects (lit §8b). Route and course-length effects are
    anchored on observed response rates and are not scaled (scaling them would break those anchors).
    """
    scale = params.effect_scale
    fx = params.effects
    outcomes = params.outcomes
    patient = {
        "age_per_10y": fx.age_per_10y,
        "bmi_per_5": fx.bmi_per_5,
        "n_failed_trials": fx.n_failed_trials,
        "lifetime_suicide_attempt": fx.lifetime_suicide_attempt,
        "prior_psych_hospitalisation": fx.prior_psych_hospitalisation,
        "family_history_aud": fx.family_history_aud,
        "prior_ect": fx.prior_ect,
        "benzodiazepine_any": fx.benzodiazepine_any,
        "benzodiazepine_high": fx.benzodiazepine_high,
        "crp_high": fx.crp_high,
        "esketamine_older_adult": fx.esketamine_older_adult,
    }
    zero = {term.name: 0.0 for term in model_terms(params)}
    shared = {**zero, **{name: scale * value for name, value in patient.items()}}
    acute = {**shared, **{f"route_{r}": getattr(outcomes.route_effects_acute, r) for r in ROUTES[1:]}}
    end = {
        **shared,
        **{f"route_{r}": getattr(outcomes.route_effects_end, r) for r in ROUTES[1:]},
        "n_sessions_log2": outcomes.sessions_per_doubling,
    }
    # psychotherapy acts on durability (week 8), not on acute or end-of-induction response (lit §8b)
    week8 = {**end, **{f"psychotherapy_{p}": scale * getattr(fx.psychotherapy_week8, p) for p in PSYCHOTHERAPIES[1:]}}
    return {"acute": acute, "end": end, "week8": week8}


def linear_predictors(
    terms: Mapping[str, np.ndarray], site_index: np.ndarray, params: SynthesizeParams
) -> dict[str, np.ndarray]:
    """Intercept-free linear predictor per latent: planted terms plus the site offset."""
    site_offset = np.array([s.intercept for s in params.sites])[site_index]
    predictors = {}
    for latent, coefficients in planted_coefficients(params).items():
        total = site_offset.copy()
        for name, coefficient in coefficients.items():
            if coefficient != 0.0:
                total += coefficient * terms[name]
        predictors[latent] = total
    return predictors


# --- latent scale <-> probability and score ------------------------------------------------------------------


def logistic_from_normal(normal: np.ndarray) -> np.ndarray:
    """logit(Phi(n)), computed in log space so the tails stay finite and exact."""
    return log_ndtr(normal) - log_ndtr(-normal)


def normal_from_logistic(value: np.ndarray) -> np.ndarray:
    """Phi^-1(sigmoid(x)), the inverse of :func:`logistic_from_normal`, accurate in both tails."""
    value = np.asarray(value, dtype="float64")
    return -np.sign(value) * ndtri(expit(-np.abs(value)))  # odd function; evaluate the accurate lower tail


def residual_fraction(latent: np.ndarray, spread: float, max_ratio: float) -> np.ndarray:
    """Score / baseline as a function of latent improvement: decreasing, r(0) = RESPONSE_FRACTION."""
    centre = spread * logit(RESPONSE_FRACTION / max_ratio)
    return max_ratio * expit(-(latent - centre) / spread)


def latent_at_fraction(fraction: np.ndarray, spread: float, max_ratio: float) -> np.ndarray:
    """Inverse of :func:`residual_fraction` (+inf at fraction <= 0, -inf at fraction >= max_ratio)."""
    centre = spread * logit(RESPONSE_FRACTION / max_ratio)
    with np.errstate(divide="ignore"):
        return centre - spread * logit(np.clip(np.asarray(fraction, dtype="float64") / max_ratio, 0.0, 1.0))


def madrs_from_latent(
    latent: np.ndarray, baseline: np.ndarray, spread: float, max_ratio: float, *, keep_response: bool
) -> np.ndarray:
    """Integer MADRS for a latent improvement; ``keep_response`` makes ``score <= baseline/2`` iff latent > 0."""
    score = np.floor(baseline * residual_fraction(latent, spread, max_ratio) + 0.5)
    if keep_response:
        largest_responding = np.floor(RESPONSE_FRACTION * baseline)
        score = np.where(latent > 0, np.minimum(score, largest_responding), np.maximum(score, largest_responding + 1))
    return np.clip(score, 0, MADRS_MAX)


def remission_threshold(baseline: np.ndarray, spread: float, max_ratio: float) -> np.ndarray:
    """Latent z_end above which MADRS_end <= REMISSION_MAX_MADRS (needs floor(baseline/2) >= that maximum)."""
    highest = latent_at_fraction((REMISSION_MAX_MADRS + 0.5) / baseline, spread, max_ratio)
    return np.maximum(0.0, highest)


def bivariate_normal_upper(h: np.ndarray, k: np.ndarray, rho: float) -> np.ndarray:
    """P(X > h, Y > k) for standard normals with correlation ``rho``, |rho| < 0.925.

    Drezner & Wesolowsky (1990) as in Genz's BVNU: Gauss-Legendre on the arcsine form, with 6, 12 or 20 nodes
    by |rho|, accurate to about 1e-15. Infinite limits are allowed.
    """
    if not abs(rho) < 0.925:
        raise ValueError("bivariate_normal_upper needs |rho| < 0.925")
    # beyond +-37 the normal tail is below 1e-299: clipping keeps the formula finite and the result exact
    h, k = np.broadcast_arrays(
        np.clip(np.asarray(h, dtype="float64"), -37.0, 37.0), np.clip(np.asarray(k, dtype="float64"), -37.0, 37.0)
    )
    if rho == 0.0:
        return ndtr(-h) * ndtr(-k)
    nodes, weights = _GAUSS_LEGENDRE[6 if abs(rho) < 0.3 else 12 if abs(rho) < 0.75 else 20]
    half_angle = np.arcsin(rho) / 2.0
    sine = np.sin(half_angle * (nodes + 1.0))
    on_product = sine / (1.0 - sine**2)
    on_squares = 1.0 / (1.0 - sine**2)
    out = np.empty(h.shape)
    flat_h, flat_k, flat_out = h.reshape(-1), k.reshape(-1), out.reshape(-1)
    for start in range(0, flat_h.size, _CHUNK):  # cache-sized blocks: about twice as fast as whole arrays
        hh, kk = flat_h[start : start + _CHUNK], flat_k[start : start + _CHUNK]
        hk = hh * kk
        hs = (hh * hh + kk * kk) / 2.0
        total = np.zeros_like(hh)
        for weight, a, b in zip(weights, on_product, on_squares, strict=True):
            total += weight * np.exp(a * hk - b * hs)
        flat_out[start : start + _CHUNK] = ndtr(-hh) * ndtr(-kk) + total * half_angle / (2.0 * np.pi)
    return np.clip(out, 0.0, 1.0)


def _interval_probability(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """P(lower < N <= upper) for a standard normal, without cancellation in the upper tail."""
    sign = np.where(lower > 0, -1.0, 1.0)  # reflect upper-tail intervals into the lower tail
    return sign * (ndtr(sign * upper) - ndtr(sign * lower))


def probability_given_markers(
    threshold: np.ndarray,
    a_interval: tuple[np.ndarray, np.ndarray],
    rho_a: float,
    b_cdf_interval: tuple[np.ndarray, np.ndarray],
    rho_b: np.ndarray,
    *,
    b_nodes: int = 6,
) -> np.ndarray:
    """P(N > threshold | A in a_interval, B in b_interval) for standard normals N, A, B with A, B independent given N.

    ``A = rho_a N + noise`` (the 24 h rating's latent), ``B = rho_b N + noise`` (the CADSS latent; ``b_cdf_interval``
    holds Phi of its limits). Given B = b, (N, A) is bivariate normal, so the A-interval is exact (a difference
    of two bivariate-normal orthants); B is integrated over its interval by Gauss-Legendre in Phi(b), where the
    integrand is smooth because |rho_b| is small (one node is exact when rho_b = 0).
    """
    joint, marker = markers_joint(threshold, a_interval, rho_a, b_cdf_interval, rho_b, b_nodes=b_nodes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(marker > 0, np.clip(joint / marker, 0.0, 1.0), ndtr(-threshold))


def markers_joint(
    threshold: np.ndarray,
    a_interval: tuple[np.ndarray, np.ndarray],
    rho_a: float,
    b_cdf_interval: tuple[np.ndarray, np.ndarray],
    rho_b: np.ndarray,
    *,
    b_nodes: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(N > threshold, A in a_interval, B in b_interval), P(A in a_interval, B in b_interval)), both divided by
    the same per-row constant (the width of B's interval in Phi): their ratio is :func:`probability_given_markers`,
    and the second, compared across rows' alternative thresholds and A-intervals, is a likelihood of the markers."""
    joint = np.empty_like(threshold, dtype="float64")
    marker = np.empty_like(threshold, dtype="float64")
    for rho in np.unique(rho_b):
        rows = rho_b == rho
        joint[rows], marker[rows] = _given_markers(
            threshold[rows],
            (a_interval[0][rows], a_interval[1][rows]),
            rho_a,
            (b_cdf_interval[0][rows], b_cdf_interval[1][rows]),
            rho_b=float(rho),
            b_nodes=1 if rho == 0 else b_nodes,
        )
    return joint, marker


def _given_markers(
    threshold: np.ndarray,
    a_interval: tuple[np.ndarray, np.ndarray],
    rho_a: float,
    b_cdf_interval: tuple[np.ndarray, np.ndarray],
    *,
    rho_b: float,
    b_nodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    sd_n = np.sqrt(1.0 - rho_b**2)  # N | B = b
    sd_a = np.sqrt(1.0 - (rho_a * rho_b) ** 2)  # A | B = b
    rho_na = rho_a * sd_n / sd_a  # corr(N, A | B = b)
    cdf_low, cdf_high = b_cdf_interval
    joint = np.zeros_like(threshold)
    marker = np.zeros_like(threshold)
    nodes, weights = _GAUSS_LEGENDRE[b_nodes]
    for node, gl_weight in zip(nodes, weights, strict=True):
        # u = Phi(b) = low + (high - low) * S(s) with the quintic smoothstep S: du/ds = 30 s^2 (1 - s)^2 vanishes
        # at both ends, which tames the log-type singularity of Phi^-1 at u = 0 and 1 (semi-infinite intervals)
        step = (node + 1.0) / 2.0
        weight = gl_weight * 30.0 * step**2 * (1.0 - step) ** 2
        smooth = step**3 * (10.0 - 15.0 * step + 6.0 * step**2)
        b = ndtri(cdf_low + (cdf_high - cdf_low) * smooth) if rho_b != 0.0 else 0.0
        h = (threshold - rho_b * b) / sd_n
        a_low = (a_interval[0] - rho_a * rho_b * b) / sd_a
        a_high = (a_interval[1] - rho_a * rho_b * b) / sd_a
        joint += weight * (bivariate_normal_upper(h, a_low, rho_na) - bivariate_normal_upper(h, a_high, rho_na))
        marker += weight * _interval_probability(a_low, a_high)
    return joint, marker


# --- calibration ----------------------------------------------------------------------------------------------


def _solve(mean_at: Callable[[float], float], target: float, bracket: tuple[float, float], param: str) -> float:
    """The value at which ``mean_at`` (monotone) equals ``target``; deterministic (Brent's method)."""
    low, high = bracket
    f_low, f_high = mean_at(low) - target, mean_at(high) - target
    if f_low * f_high > 0:
        raise ConfigError(
            f"synthesize.{param}: target {target:g} cannot be reached with these effects and this case-mix",
            hint="choose a target between the rates the extreme intercepts give, or weaken the effects",
        )
    return float(brentq(lambda x: mean_at(x) - target, low, high, xtol=1e-12, rtol=1e-14, maxiter=200))


@dataclass(frozen=True)
class CalibratedModel:
    """Constants fixed by calibration to the configured marginal rates."""

    intercepts: dict[str, float]  # per latent
    spread: float  # width of the latent -> score map
    max_ratio: float  # largest score / baseline


def calibrate(predictors: Mapping[str, np.ndarray], baseline: np.ndarray, params: SynthesizeParams) -> CalibratedModel:
    """Intercepts and score-map spread such that the mean true probabilities equal the configured targets."""
    targets = params.outcomes.targets
    max_ratio = 1.0 + params.outcomes.max_worsening
    rho = params.outcomes.latent_correlation.end_week8

    def mean_response(latent: str) -> Callable[[float], float]:
        return lambda a: float(expit(a + predictors[latent]).mean())

    acute = _solve(mean_response("acute"), targets.response_acute, INTERCEPT_BRACKET, "outcomes.targets.response_acute")
    end = _solve(mean_response("end"), targets.response_end, INTERCEPT_BRACKET, "outcomes.targets.response_end")
    eta_end = end + predictors["end"]

    # the remission threshold scales with the spread, so the spread is what sets the remission rate
    unit_threshold = remission_threshold(baseline, 1.0, max_ratio)
    spread = _solve(
        lambda w: float(expit(eta_end - w * unit_threshold).mean()),
        targets.remission_end,
        SPREAD_BRACKET,
        "outcomes.targets.remission_end",
    )

    end_cut = normal_from_logistic(-eta_end)
    week8 = _solve(
        lambda a: float(bivariate_normal_upper(end_cut, normal_from_logistic(-(a + predictors["week8"])), rho).mean()),
        targets.sustained_week8,
        INTERCEPT_BRACKET,
        "outcomes.targets.sustained_week8",
    )
    return CalibratedModel(intercepts={"acute": acute, "end": end, "week8": week8}, spread=spread, max_ratio=max_ratio)
