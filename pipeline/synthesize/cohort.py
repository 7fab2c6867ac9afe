"""Baseline patients and their treatment plan: sites, demographics, history, severity, route, dose, sessions.

Baseline traits share a Gaussian copula: one correlated standard-normal vector per patient, mapped onto each
trait's marginal distribution by its inverse CDF. The marginals are therefore exactly the configured ones
(prevalences, truncated normals, the failed-trial distribution), while the latent correlations give the
clinical associations (benzodiazepine use with anxious depression, suicide attempt with current ideation,
failed trials with age, ...). Hypertension, baseline blood pressure, baseline GAD-7 and postpartum onset come
from their own stream (:mod:`.clinical`), tied to the copula's age and anxious-depression latents.
Treatment (route, dose, sessions, psychotherapy) follows the site's case-mix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy.special import ndtr, ndtri

from pipeline.synthesize.clinical import simulate_clinical_baseline
from pipeline.synthesize.params import PSYCHOTHERAPIES, ROUTES, TRAITS, SynthesizeParams, trait_correlation_matrix

Columns = dict[str, np.ndarray]


def cholesky(matrix: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a small positive-definite matrix, in plain IEEE arithmetic and a fixed order.

    Not LAPACK: its kernels differ by CPU, and the copula is where every synthetic value starts."""
    a = np.asarray(matrix, dtype="float64").tolist()
    low = [[0.0] * len(a) for _ in a]
    for i in range(len(a)):
        for j in range(i + 1):
            total = a[i][j]
            for k in range(j):
                total -= low[i][k] * low[j][k]
            low[i][j] = math.sqrt(total) if i == j else total / low[j][j]
    return np.array(low, dtype="float64")


def correlate(normals: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """``normals @ chol.T`` for a lower-triangular ``chol``, as elementwise products added term by term.

    Not BLAS: a matrix product's kernel (FMA or not, its blocking) and thread count change the last bit by CPU,
    whereas each elementwise product and sum here is one IEEE-rounded operation, the same on every machine."""
    columns = np.asfortranarray(normals)
    out = np.empty_like(columns)
    for i in range(chol.shape[0]):
        total = columns[:, 0] * chol[i, 0]
        for k in range(1, i + 1):
            total += columns[:, k] * chol[i, k]
        out[:, i] = total
    return np.ascontiguousarray(out)


def _truncated_normal(latent: np.ndarray, mean: np.ndarray | float, sd: float, low: float, high: float) -> np.ndarray:
    """Map standard-normal ``latent`` onto Normal(mean, sd) truncated to [low, high] by its inverse CDF."""
    lower = ndtr((low - mean) / sd)
    upper = ndtr((high - mean) / sd)
    quantile = lower + ndtr(latent) * (upper - lower)
    return np.clip(mean + sd * ndtri(quantile), low, high)


def _upper_tail(latent: np.ndarray, prevalence: float) -> np.ndarray:
    """True for the top ``prevalence`` of a standard normal: positive latent correlations mean 'both true'."""
    return latent > ndtri(1.0 - prevalence)


def _categorical(uniform: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Index k with P(k) = probabilities[k], by inverse CDF of ``uniform`` (vectorised over rows)."""
    cdf = np.cumsum(probabilities)
    cdf[-1] = 1.0  # guard against round-off leaving a gap at the top
    return np.searchsorted(cdf, uniform, side="right")


def _categorical_by_group(uniform: np.ndarray, group: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Row-specific categorical draw: row i uses the probabilities ``table[group[i]]``."""
    cdf = np.cumsum(table, axis=1)
    cdf[:, -1] = 1.0
    return (uniform[:, None] >= cdf[group]).sum(axis=1)


def _pick(values_to_share: Mapping[float, float], uniform: np.ndarray) -> np.ndarray:
    """Draw from a {value: share} mix with one uniform per row."""
    values = np.array(sorted(values_to_share), dtype="float64")
    shares = np.array([values_to_share[v] for v in values], dtype="float64")
    return values[_categorical(uniform, shares)]


def simulate_baseline(params: SynthesizeParams, rng: np.random.Generator) -> Columns:
    """Sites, baseline predictors and treatment plan as canonical columns (numpy arrays, clean values)."""
    n = params.n_patients
    cohort = params.cohort
    sites = params.sites
    site_rng, trait_rng, treatment_rng = rng.spawn(3)
    (clinical_rng,) = rng.spawn(1)  # spawned after the others, so adding it left their streams unchanged

    site_index = _categorical(site_rng.random(n), np.array([s.share for s in sites]))
    chol = cholesky(trait_correlation_matrix(params.correlations))
    latent = correlate(trait_rng.standard_normal((n, len(TRAITS))), chol)
    z = {trait: latent[:, i] for i, trait in enumerate(TRAITS)}

    age_mean = np.array([s.age_mean for s in sites])[site_index]
    # whole years; truncation at +-0.5 keeps the rounded ages inside [min, max]
    age = np.floor(
        _truncated_normal(z["age"], age_mean, cohort.age.sd, cohort.age.min - 0.5, cohort.age.max + 0.4999) + 0.5
    )

    bmi_cfg = cohort.bmi
    log_bmi = _truncated_normal(
        z["bmi"], np.log(bmi_cfg.median), bmi_cfg.log_sd, np.log(bmi_cfg.min), np.log(bmi_cfg.max)
    )
    bmi = np.clip(np.round(np.exp(log_bmi), 1), bmi_cfg.min, bmi_cfg.max)

    madrs_cfg = cohort.madrs_baseline
    madrs = np.floor(
        _truncated_normal(
            z["madrs_baseline"], madrs_cfg.mean, madrs_cfg.sd, madrs_cfg.min - 0.5, madrs_cfg.max + 0.4999
        )
        + 0.5
    )

    extra = np.array(cohort.extra_failed_trials)
    failed_trials = cohort.min_failed_trials + _categorical(ndtr(z["n_failed_trials"]), extra).astype("float64")

    # benzodiazepines: the top `use` share of the latent are users; among them the dose rises with the latent
    bzd = cohort.benzodiazepine
    u_bzd = ndtr(z["benzodiazepine_mg_deq"])
    user = u_bzd > 1.0 - bzd.use
    within_users = np.clip((u_bzd - (1.0 - bzd.use)) / max(bzd.use, 1e-12), 1e-12, 1 - 1e-12)
    bzd_dose = np.exp(np.log(bzd.median_mg) + bzd.log_sd * ndtri(within_users))
    benzodiazepine = np.where(user, np.clip(np.round(bzd_dose * 2) / 2, 0.5, 120.0), 0.0)

    # CRP log-normal placed so that P(CRP >= high_mg_l) is the configured prevalence
    crp_cfg = cohort.crp
    log_crp = np.log(crp_cfg.high_mg_l) + crp_cfg.log_sd * (z["crp_mg_l"] - ndtri(1.0 - crp_cfg.high))
    crp = np.clip(np.round(np.exp(log_crp), 1), 0.1, 300.0)

    columns: Columns = {
        "site": np.array([s.name for s in sites], dtype=object)[site_index],
        "age": age,
        "sex": np.where(_upper_tail(z["sex"], cohort.female), "F", "M").astype(object),
        "bmi": bmi,
        "n_failed_trials": failed_trials,
        "benzodiazepine_mg_deq": benzodiazepine,
        "crp_mg_l": crp,
        "madrs_baseline": madrs,
    }
    for flag, prevalence in cohort.prevalence.model_dump().items():
        columns[flag] = _upper_tail(z[flag], prevalence)
    columns.update(
        simulate_clinical_baseline(
            params,
            age=age,
            age_latent=z["age"],
            anxious_latent=z["anxious_depression"],
            female=columns["sex"] == "F",
            rng=clinical_rng,
        )
    )
    columns.update(_simulate_treatment(params, site_index, age, treatment_rng))
    columns["_site_index"] = site_index  # internal: site offsets and route tables are looked up by index
    return columns


def _simulate_treatment(
    params: SynthesizeParams, site_index: np.ndarray, age: np.ndarray, rng: np.random.Generator
) -> Columns:
    """Route and psychotherapy from the site's mix; dose and sessions from the route's (and age's) mix."""
    n = len(site_index)
    sites = params.sites
    treatment = params.treatment
    route_table = np.array([[getattr(s.route_mix, r) for r in ROUTES] for s in sites])
    therapy_table = np.array([[getattr(s.psychotherapy_mix, p) for p in PSYCHOTHERAPIES] for s in sites])
    uniforms = rng.random((n, 4))
    route_index = _categorical_by_group(uniforms[:, 0], site_index, route_table)
    therapy_index = _categorical_by_group(uniforms[:, 1], site_index, therapy_table)

    dose = np.empty(n)
    sessions = np.empty(n)
    for k, route in enumerate(ROUTES):
        on_route = route_index == k
        dose[on_route] = _pick(getattr(treatment.dose, route), uniforms[on_route, 2])
        sessions[on_route] = _pick(getattr(treatment.n_sessions, route), uniforms[on_route, 3])
    # the esketamine label starts older adults at a lower dose (lit §4b)
    older_esketamine = (route_index == ROUTES.index("intranasal_esketamine")) & (age >= treatment.older_adult_age)
    dose[older_esketamine] = _pick(treatment.esketamine_dose_older_adult, uniforms[older_esketamine, 2])

    return {
        "_route_index": route_index,
        "route": np.array(ROUTES, dtype=object)[route_index],
        "dose": dose,
        "n_sessions": sessions,
        "psychotherapy": np.array(PSYCHOTHERAPIES, dtype=object)[therapy_index],
    }
