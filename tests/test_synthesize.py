"""The synthetic cohort generator: planted truth, exact probabilities, the messy export and its log, the stage shell.

Statistical tolerances are derived from the sample size (binomial standard errors, Fisher information, chi-square
quantiles), never loose constants; every test runs on a fixed seed, so it is deterministic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import expit, ndtr, ndtri
from scipy.stats import chi2, multivariate_normal, norm, truncnorm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pipeline.contract import CohortContract
from pipeline.errors import ConfigError
from pipeline.params import parse_section, read_params_file
from pipeline.paths import ROOT_ENV
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.check import load_tabular_spec
from pipeline.sources.spec import TabularSourceSpec
from pipeline.synthesize import (
    PROBABILITY_COLUMNS,
    SimulatedTruth,
    SynthesizeParams,
    SyntheticCohort,
    apply_defects,
    auroc,
    bivariate_normal_upper,
    corrupt,
    main,
    planted_coefficients,
    planted_effects,
    render_clean_export,
    simulate_truth,
    site_scale_problems,
    stage_rngs,
    synthesize,
    term_values,
    true_contributions,
)
from pipeline.synthesize.defects import IMPOSSIBLE_RANGES
from pipeline.synthesize.export import EXPORT_COLUMNS, export_layout
from pipeline.synthesize.outcomes import madrs_from_latent, probability_given_markers, remission_threshold
from pipeline.synthesize.params import PSYCHOTHERAPIES, ROUTES
from pipeline.synthesize.truth import CANONICAL_COLUMNS
from tests.conftest import REPO_ROOT

SEED = 20261127
LARGE_N = 40_000  # enough for the regression and calibration checks, still well under a second to generate
Z_TOLERANCE = 4.0  # binomial/normal tolerances in standard errors
OUTPUT_FILES = (
    "export.parquet",
    "truth.parquet",
    "corruptions.parquet",
    "planted_effects.json",
    "true_contributions.parquet",
)


# --- fixtures and helpers -------------------------------------------------------------------------------------


def repo_section() -> dict[str, Any]:
    return read_params_file(REPO_ROOT / "params.yaml")["synthesize"]


def params_with(**changes: Any) -> SynthesizeParams:
    """The repository's synthesize params with dotted-path changes, e.g. ``params_with(**{"export.duplicate": 0})``."""
    raw = repo_section()
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return SynthesizeParams.model_validate(raw)


def binomial_tolerance(p: float, n: int) -> float:
    return Z_TOLERANCE * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def params() -> SynthesizeParams:
    return parse_section(SynthesizeParams, read_params_file(REPO_ROOT / "params.yaml"), "synthesize", "params.yaml")


@pytest.fixture(scope="module")
def spec() -> TabularSourceSpec:
    return load_tabular_spec(REPO_ROOT / "configs" / "sources" / "synthetic.yaml")


@pytest.fixture(scope="module")
def large(params: SynthesizeParams) -> SimulatedTruth:
    """The default scenario at a size where small planted effects are measurable."""
    return simulate_truth(params.model_copy(update={"n_patients": LARGE_N}), np.random.default_rng(SEED))


@pytest.fixture(scope="module")
def cohort(params: SynthesizeParams, contract: CohortContract, spec: TabularSourceSpec, scales: ScaleConversions):
    """The default stage output, computed once (the same thing main() writes)."""
    return synthesize(params, SEED, contract=contract, spec=spec, scales=scales)


def make_root(base: Path, edit: Any = None) -> Path:
    """A throw-away project root holding the repository's configs and params (``edit`` may change the params)."""
    root = base
    root.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "configs", root / "configs")
    raw = read_params_file(REPO_ROOT / "params.yaml")
    if edit is not None:
        edit(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return root


def run_main(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(ROOT_ENV, str(root))
    main()
    return root / "data" / "raw" / "synthetic"


def small(n: int) -> Any:
    def edit(raw: dict) -> None:
        raw["synthesize"]["n_patients"] = n

    return edit


# --- the generative model ---------------------------------------------------------------------------------------


def test_truth_has_every_canonical_column_and_validates(cohort: SyntheticCohort, contract: CohortContract) -> None:
    assert list(CANONICAL_COLUMNS) == contract.names
    assert list(cohort.truth.columns) == [*contract.names, *PROBABILITY_COLUMNS]
    canonical = cohort.truth[contract.names]
    contract.pandera_schema().validate(canonical)  # raises on any violation
    assert (cohort.truth["cohort"] == "synthetic").all()
    assert cohort.truth["patient_id"].is_unique
    for column in ("madrs_placebo_acute", "response_placebo_acute"):  # exists only in the NIMH crossover
        assert cohort.truth[column].isna().all()
    probabilities = cohort.truth[list(PROBABILITY_COLUMNS)]
    assert probabilities.notna().all().all()
    assert ((probabilities > 0) & (probabilities < 1)).all().all()


def test_outcomes_agree_exactly_with_the_scores(cohort: SyntheticCohort) -> None:
    t = cohort.truth
    base = t["madrs_baseline"]
    scores = t[["madrs_baseline", "madrs_24h", "madrs_acute", "madrs_end", "madrs_week8"]]
    assert (scores == scores.round()).all().all()
    assert scores.min().min() >= 0
    assert scores.max().max() <= 60
    assert (t["response_acute"] == (t["madrs_acute"] <= 0.5 * base)).all()
    assert (t["response_end"] == (t["madrs_end"] <= 0.5 * base)).all()
    assert (t["remission_end"] == (t["madrs_end"] <= 10)).all()
    assert (t["sustained_week8"] == (t["response_end"] & (t["madrs_week8"] <= 0.5 * base))).all()
    np.testing.assert_allclose(t["madrs_pct_change_acute"], 100 * (t["madrs_acute"] - base) / base)
    assert not (t["remission_end"] & ~t["response_end"]).any()  # baseline >= 20 makes remission a response


def test_madrs_source_scale_is_the_site_scale(cohort: SyntheticCohort, params: SynthesizeParams) -> None:
    expected = cohort.truth["site"].map({s.name: s.scale for s in params.sites})
    assert (cohort.truth["madrs_source_scale"] == expected).all()


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    baseline=st.integers(20, 60),
    latent=st.floats(-25, 25),
    spread=st.floats(0.2, 5.0),
    worsening=st.floats(0.0, 1.0),
)
def test_score_map_keeps_response_and_remission_exact(
    baseline: int, latent: float, spread: float, worsening: float
) -> None:
    """Rounding never flips an outcome: response iff z > 0, remission iff z > its threshold (off the boundary)."""
    b, z = np.array([float(baseline)]), np.array([latent])
    score = madrs_from_latent(z, b, spread, 1.0 + worsening, keep_response=True)[0]
    assert (score <= baseline / 2) == (latent > 0)
    threshold = remission_threshold(b, spread, 1.0 + worsening)[0]
    assume(abs(latent - threshold) > 1e-9 * max(1.0, abs(threshold)))  # the boundary itself has probability 0
    assert (score <= 10) == (latent > threshold)


def test_marginal_rates_match_their_targets(large: SimulatedTruth, params: SynthesizeParams) -> None:
    truth = large.frame
    for outcome, target in params.outcomes.targets.model_dump().items():
        probability = truth[f"p_{outcome}"]
        assert probability.mean() == pytest.approx(target, abs=1e-9)  # calibration solves the mean exactly
        realised = truth[outcome].astype(bool).mean()
        assert abs(realised - target) <= binomial_tolerance(target, len(truth)), outcome


def test_baseline_distributions_match_params(large: SimulatedTruth, params: SynthesizeParams) -> None:
    truth, cohort, n = large.frame, params.cohort, len(large.frame)
    expected = {
        "sex_female": ((truth["sex"] == "F").mean(), cohort.female),
        "benzodiazepine_use": ((truth["benzodiazepine_mg_deq"] > 0).mean(), cohort.benzodiazepine.use),
        "crp_high": ((truth["crp_mg_l"] >= cohort.crp.high_mg_l).mean(), cohort.crp.high),
        **{flag: (truth[flag].mean(), p) for flag, p in cohort.prevalence.model_dump().items()},
    }
    for name, (realised, target) in expected.items():
        # CRP is recorded to 0.1 mg/L: values just under the threshold round onto it (at most one rounding step)
        slack = 0.01 if name == "crp_high" else 0.0
        assert abs(realised - target) <= binomial_tolerance(target, n) + slack, name
    users = truth.loc[truth["benzodiazepine_mg_deq"] > 0, "benzodiazepine_mg_deq"]
    high = (users > cohort.benzodiazepine.median_mg).mean()
    assert abs(high - 0.5) <= binomial_tolerance(0.5, len(users)) + 0.03  # half the users above the median
    # failed trials: min + categorical, checked with a chi-square goodness of fit
    probabilities = np.array(cohort.extra_failed_trials)
    counts = np.bincount(
        (truth["n_failed_trials"] - cohort.min_failed_trials).astype(int), minlength=probabilities.size
    )
    statistic = ((counts - n * probabilities) ** 2 / (n * probabilities)).sum()
    assert statistic < chi2.ppf(0.999, probabilities.size - 1)
    # baseline MADRS: a rounded truncated normal
    m = cohort.madrs_baseline
    mean = truncnorm.mean((m.min - 0.5 - m.mean) / m.sd, (m.max + 0.5 - m.mean) / m.sd, loc=m.mean, scale=m.sd)
    assert abs(truth["madrs_baseline"].mean() - mean) <= Z_TOLERANCE * m.sd / np.sqrt(n) + 0.02
    assert truth["madrs_baseline"].between(m.min, m.max).all()
    assert truth["age"].between(cohort.age.min, cohort.age.max).all()
    assert truth["bmi"].between(cohort.bmi.min, cohort.bmi.max).all()


def test_sites_have_their_own_case_mix(large: SimulatedTruth, params: SynthesizeParams) -> None:
    truth, n = large.frame, len(large.frame)
    for site in params.sites:
        at_site = truth[truth["site"] == site.name]
        assert abs(len(at_site) / n - site.share) <= binomial_tolerance(site.share, n)
        for route in ROUTES:
            share = getattr(site.route_mix, route)
            realised = (at_site["route"] == route).mean()
            assert abs(realised - share) <= binomial_tolerance(share, len(at_site)) + 1e-12, (site.name, route)
        for therapy in PSYCHOTHERAPIES:
            share = getattr(site.psychotherapy_mix, therapy)
            realised = (at_site["psychotherapy"] == therapy).mean()
            assert abs(realised - share) <= binomial_tolerance(share, len(at_site)) + 1e-12, (site.name, therapy)
    # different mean ages by site: the youngest and the oldest site differ as configured
    ages = truth.groupby("site")["age"].mean()
    youngest = min(params.sites, key=lambda s: s.age_mean)
    oldest = max(params.sites, key=lambda s: s.age_mean)
    assert ages[oldest.name] - ages[youngest.name] > 0.5 * (oldest.age_mean - youngest.age_mean)


def test_dose_and_sessions_follow_the_route(large: SimulatedTruth, params: SynthesizeParams) -> None:
    truth = large.frame
    older = truth["age"] >= params.treatment.older_adult_age
    for route in ROUTES:
        on_route = truth["route"] == route
        allowed = set(getattr(params.treatment.dose, route))
        if route == "intranasal_esketamine":
            assert set(truth.loc[on_route & older, "dose"]) <= set(params.treatment.esketamine_dose_older_adult)
            assert set(truth.loc[on_route & ~older, "dose"]) <= allowed
        else:
            assert set(truth.loc[on_route, "dose"]) <= allowed
        assert set(truth.loc[on_route, "n_sessions"]) <= set(getattr(params.treatment.n_sessions, route))


def test_baseline_traits_are_correlated_as_planned(large: SimulatedTruth) -> None:
    truth = large.frame
    pairs = [
        (truth["anxious_depression"], truth["benzodiazepine_mg_deq"] > 0),
        (truth["current_suicidal_ideation"], truth["lifetime_suicide_attempt"]),
        (truth["age"], truth["n_failed_trials"]),
        (truth["prior_psych_hospitalisation"], truth["madrs_baseline"]),
    ]
    for first, second in pairs:
        r = np.corrcoef(first.astype(float), second.astype(float))[0, 1]
        assert r * np.sqrt(len(truth)) > Z_TOLERANCE  # positive beyond chance (null SE of r is 1/sqrt(n))
    independent = np.corrcoef(truth["sex"].eq("F").astype(float), truth["prior_ect"].astype(float))[0, 1]
    assert abs(independent) * np.sqrt(len(truth)) <= Z_TOLERANCE  # no correlation planted


@pytest.mark.parametrize(
    ("score", "latent"), [("madrs_end", "end"), ("madrs_acute", "acute"), ("madrs_week8", "week8")]
)
def test_logistic_regression_recovers_the_planted_effects(
    large: SimulatedTruth, params: SynthesizeParams, score: str, latent: str
) -> None:
    """The planted coefficients are the marginal log-odds: an unpenalised logistic regression of the realised
    response (score <= baseline / 2) on the encoded terms and site recovers them (simultaneous 95 % intervals,
    joint Wald test). Week 8 is the durability latent, where psychotherapy acts."""
    truth = large.frame
    terms = term_values(truth, params)
    names = [name for name, values in terms.items() if values.std() > 0]
    sites = [s.name for s in params.sites]
    X = np.column_stack([terms[name] for name in names] + [(truth["site"] == s).to_numpy(float) for s in sites[1:]])
    y = (truth[score] <= 0.5 * truth["madrs_baseline"]).to_numpy()
    scale = X.std(axis=0)  # standardised columns condition the Newton steps; coefficients are scaled back
    fit = LogisticRegression(C=np.inf, solver="newton-cholesky", max_iter=100, tol=1e-10).fit(X / scale, y)
    coefficients = fit.coef_[0] / scale
    design = np.column_stack([np.ones(len(X)), X])
    p = fit.predict_proba(X / scale)[:, 1]
    covariance = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))  # inverse Fisher information
    se = np.sqrt(np.diag(covariance))[1 : len(names) + 1]
    estimate = coefficients[: len(names)]
    planted = np.array([planted_coefficients(params)[latent][name] for name in names])
    site_offsets = np.array([s.intercept for s in params.sites])
    planted_sites = site_offsets[1:] - site_offsets[0]

    z_simultaneous = norm.ppf(1 - 0.025 / len(names))  # Bonferroni: all intervals hold together with 95 %
    outside = {
        n: (e, b) for n, e, b, s in zip(names, estimate, planted, se, strict=True) if abs(e - b) > z_simultaneous * s
    }
    assert not outside, f"planted effects outside their simultaneous 95 % CI: {outside}"
    clear = np.abs(planted) > Z_TOLERANCE * se  # signs are only meaningful where the effect is well above noise
    assert clear.sum() >= 8
    assert (np.sign(estimate[clear]) == np.sign(planted[clear])).all()
    difference = coefficients - np.concatenate([planted, planted_sites])
    wald = difference @ np.linalg.inv(covariance[1:, 1:]) @ difference
    assert wald < chi2.ppf(0.999, difference.size)


@pytest.mark.parametrize(
    ("probability", "outcome"),
    [
        ("p_response_acute", "response_acute"),
        ("p_response_end", "response_end"),
        ("p_remission_end", "remission_end"),
        ("p_sustained_week8", "sustained_week8"),
        ("p_response_end_early", "response_end"),
        ("p_response_acute_predictors", "response_acute"),
        ("p_response_end_predictors", "response_end"),
        ("p_response_end_early_predictors", "response_end"),
    ],
)
def test_true_probabilities_are_calibrated(large: SimulatedTruth, probability: str, outcome: str) -> None:
    """Known (not fitted) probabilities: the decile Hosmer-Lemeshow statistic is chi-square with 10 df."""
    p = large.frame[probability].to_numpy()
    y = large.frame[outcome].to_numpy(dtype=bool)
    bins = np.minimum((np.argsort(np.argsort(p)) * 10) // len(p), 9)
    observed = np.bincount(bins, weights=y, minlength=10)
    expected = np.bincount(bins, weights=p, minlength=10)
    variance = np.bincount(bins, weights=p * (1 - p), minlength=10)
    assert ((observed - expected) ** 2 / variance).sum() < chi2.ppf(0.999, 10)


def test_oracle_auroc_of_the_default_scenario_is_in_the_configured_range(
    large: SimulatedTruth, params: SynthesizeParams
) -> None:
    low, high = params.oracle_auroc_range
    truth = large.frame
    for outcome in ("response_acute", "response_end", "remission_end", "sustained_week8"):
        oracle = auroc(truth[f"p_{outcome}"].to_numpy(), truth[outcome].to_numpy(dtype=bool))
        assert oracle == pytest.approx(roc_auc_score(truth[outcome].astype(bool), truth[f"p_{outcome}"]), abs=1e-12)
        assert low <= oracle <= high, (outcome, oracle)
    # early markers add information beyond baseline, as after a first dose (lit §8c: 0.69-0.74)
    early = auroc(truth["p_response_end_early"].to_numpy(), truth["response_end"].to_numpy(dtype=bool))
    baseline_only = auroc(truth["p_response_end"].to_numpy(), truth["response_end"].to_numpy(dtype=bool))
    assert early > baseline_only + 0.03


def test_psychotherapy_acts_on_durability_only(large: SimulatedTruth, params: SynthesizeParams) -> None:
    coefficients = planted_coefficients(params)
    for therapy in PSYCHOTHERAPIES[1:]:
        assert coefficients["acute"][f"psychotherapy_{therapy}"] == 0
        assert coefficients["end"][f"psychotherapy_{therapy}"] == 0
        assert coefficients["week8"][f"psychotherapy_{therapy}"] > 0
    # the projection of the true sustained log-odds carries the durability effect, shrunk by the end-response gate
    projection = planted_effects(large, params)["outcomes"]["sustained_week8"]["projection"]
    for therapy in PSYCHOTHERAPIES[1:]:
        assert 0 < projection[f"psychotherapy_{therapy}"] < coefficients["week8"][f"psychotherapy_{therapy}"]
        assert projection[f"psychotherapy_{therapy}"] > 0.5 * coefficients["week8"][f"psychotherapy_{therapy}"]


def test_bivariate_normal_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for rho in (-0.6, 0.1, 0.45, 0.75, 0.9):
        h, k = rng.normal(0, 1.5, 12), rng.normal(0, 1.5, 12)
        reference = [multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([-a, -b]) for a, b in zip(h, k, strict=True)]
        np.testing.assert_allclose(bivariate_normal_upper(h, k, rho), reference, rtol=0, atol=1e-12)
    assert bivariate_normal_upper(np.array([0.3]), np.array([-np.inf]), 0.5)[0] == pytest.approx(ndtr(-0.3))
    assert bivariate_normal_upper(np.array([0.3]), np.array([np.inf]), 0.5)[0] == pytest.approx(0.0, abs=1e-290)


def test_early_probability_matches_direct_integration() -> None:
    """The conditional probability given interval-recorded markers, against adaptive quadrature over N_end."""
    rng = np.random.default_rng(1)
    rho_a = 0.425
    for rho_b in (0.0, 0.07, 0.3):
        t = rng.normal(0, 1, 6)
        a_low = rng.normal(0, 1.2, 6)
        a_high = a_low + np.array([0.05, 0.2, 1.0, np.inf, 0.1, 0.3])
        a_low[4] = -np.inf
        u_low = np.array([0.0, 0.2, 0.5, 0.0, 0.9, 0.3])
        u_high = np.array([0.3, 0.25, 0.7, 0.31, 1.0, 0.35])
        got = probability_given_markers(t, (a_low, a_high), rho_a, (u_low, u_high), np.full(6, rho_b))
        for i in range(6):
            sd_a, sd_b = np.sqrt(1 - rho_a**2), np.sqrt(1 - rho_b**2)
            b_low, b_high = ndtri(u_low[i]), ndtri(u_high[i])

            def density(
                n: float, a: tuple = (a_low[i], a_high[i], sd_a), b: tuple = (b_low, b_high, sd_b, rho_b)
            ) -> float:
                like_a = ndtr((a[1] - rho_a * n) / a[2]) - ndtr((a[0] - rho_a * n) / a[2])
                like_b = ndtr((b[1] - b[3] * n) / b[2]) - ndtr((b[0] - b[3] * n) / b[2])
                return np.exp(-n * n / 2) * like_a * like_b

            above = integrate.quad(density, t[i], np.inf, epsabs=1e-14, limit=200)[0]
            below = integrate.quad(density, -np.inf, t[i], epsabs=1e-14, limit=200)[0]
            assert got[i] == pytest.approx(above / (above + below), abs=1e-5), (rho_b, i)


def test_response_probability_is_the_logistic_of_the_planted_predictor(
    large: SimulatedTruth, params: SynthesizeParams
) -> None:
    """p_response_end is sigmoid(intercept + site offset + planted terms): the JSON's claim, checked exactly."""
    truth = large.frame
    terms = term_values(truth, params)
    coefficients = planted_coefficients(params)["end"]
    site_offset = truth["site"].map({s.name: s.intercept for s in params.sites}).to_numpy()
    eta = large.model.intercepts["end"] + site_offset + sum(coefficients[t] * terms[t] for t in terms)
    np.testing.assert_allclose(truth["p_response_end"], expit(eta), rtol=1e-12)


@pytest.mark.parametrize("name", ["p_response_acute", "p_response_end", "p_response_end_early"])
def test_site_marginal_probability_averages_the_site_away(large: SimulatedTruth, name: str) -> None:
    """E[p given site] = E[p with the site marginalised] (the law of total expectation), within Monte Carlo error;
    the two differ patient by patient, and neither is further than the largest site offset allows."""
    truth = large.frame
    difference = truth[name].to_numpy() - truth[f"{name}_predictors"].to_numpy()
    assert abs(difference.mean()) <= Z_TOLERANCE * difference.std() / np.sqrt(difference.size)
    assert difference.std() > 0.005  # the site offsets move patients' probabilities


def test_site_marginal_probability_is_exact_where_the_predictors_fix_the_site(large: SimulatedTruth) -> None:
    """Oral ketamine with structured KAP happens at one site only (params), so nothing is left to marginalise."""
    truth = large.frame
    one_site = ((truth["route"] == "oral") & (truth["psychotherapy"] == "structured_kap")).to_numpy()
    assert truth.loc[one_site, "site"].nunique() == 1
    for name in ("p_response_acute", "p_response_end", "p_response_end_early"):
        np.testing.assert_allclose(truth.loc[one_site, f"{name}_predictors"], truth.loc[one_site, name], atol=1e-12)
        assert not np.allclose(truth.loc[~one_site, f"{name}_predictors"], truth.loc[~one_site, name], atol=1e-3)


def test_without_site_offsets_both_references_coincide(params: SynthesizeParams) -> None:
    sites = [site.model_copy(update={"intercept": 0.0}) for site in params.sites]
    flat = simulate_truth(params.model_copy(update={"n_patients": 3000, "sites": sites}), np.random.default_rng(4))
    for name in ("p_response_acute", "p_response_end", "p_response_end_early"):
        np.testing.assert_allclose(flat.frame[f"{name}_predictors"], flat.frame[name], rtol=0, atol=1e-9)


def test_true_contributions_add_up_to_the_true_log_odds(large: SimulatedTruth, params: SynthesizeParams) -> None:
    """Per patient, the features' true contributions sum to the true log-odds minus its cohort mean, site offset
    excluded; the route x age product is shared so that both features get a part of it."""
    truth = large.frame
    contributions = true_contributions(truth, params)
    offsets = truth["site"].map({s.name: s.intercept for s in params.sites}).to_numpy()
    for outcome, probability in (("response_acute", "p_response_acute"), ("response_end", "p_response_end")):
        columns = [c for c in contributions.columns if c.startswith(f"{outcome}.")]
        eta = np.log(truth[probability] / (1 - truth[probability])).to_numpy() - offsets
        np.testing.assert_allclose(contributions[columns].sum(axis=1), eta - eta.mean(), atol=1e-8)
        assert f"{outcome}.sex" not in contributions.columns  # noise features have no column (their truth is 0)
    older = ((truth["route"] == "intranasal_esketamine") & (truth["age"] >= 65)).to_numpy()
    young = ((truth["route"] == "intranasal_esketamine") & (truth["age"] < 40)).to_numpy()
    # the age contribution of older esketamine patients carries part of their -0.8 penalty
    age = contributions["response_acute.age"].to_numpy()
    assert age[older].mean() < age[young].mean() - 0.2


# --- the messy export -------------------------------------------------------------------------------------------


def _decode(values: pd.Series, codes: dict[str, tuple[str, ...]]) -> pd.Series:
    lookup = {code.strip().casefold(): level for level, level_codes in codes.items() for code in level_codes}
    return values.str.strip().str.casefold().map(lookup)


def _logged_rows(cohort: SyntheticCohort, *kinds: str) -> set[int]:
    log = cohort.corruptions
    return set(log.loc[log["kind"].isin(kinds), "export_row"])


def test_export_has_exactly_the_contract_columns(cohort: SyntheticCohort, spec: TabularSourceSpec) -> None:
    export = cohort.export
    assert list(export.columns) == list(EXPORT_COLUMNS)
    assert set(export.columns) == {*spec.raw_to_canonical(), *spec.helper_columns()}
    numeric = {*spec.numeric, *spec.depression_scores.columns, "weight", "height"}
    for column in export.columns:
        expected = "float64" if column in numeric else "str"
        assert export[column].dtype == expected, column
    dates = pd.to_datetime(export["updated_at"], format="%Y-%m-%d")
    assert dates.notna().all()


def test_every_export_row_belongs_to_a_truth_row_and_no_patient_is_lost(cohort: SyntheticCohort) -> None:
    ids = set(cohort.truth["patient_id"])
    assert set(cohort.export["patient_ref"]) == ids
    duplicates = len(_logged_rows(cohort, "duplicate_record"))
    assert len(cohort.export) == len(cohort.truth) + duplicates
    log = cohort.corruptions
    assert (cohort.export["patient_ref"].to_numpy()[log["export_row"]] == log["patient_id"].to_numpy()).all()
    assert not cohort.export["patient_ref"].is_monotonic_increasing  # rows are shuffled


def test_codes_are_accepted_variants_that_decode_to_the_truth(
    cohort: SyntheticCohort, params: SynthesizeParams, spec: TabularSourceSpec
) -> None:
    layout = export_layout(spec)
    export = cohort.export
    truth = cohort.truth.set_index("patient_id").loc[export["patient_ref"]].reset_index(drop=True)
    typo_rows = _logged_rows(cohort, "unknown_code")
    clean_rows = ~export.index.isin(list(typo_rows))
    for raw, (canonical, codes) in layout.coded.items():
        decoded = _decode(export[raw], codes)
        present = export[raw].notna() & clean_rows
        assert (decoded[present] == truth.loc[present, canonical]).all(), raw
        first_code = truth.loc[present, canonical].map({level: level_codes[0] for level, level_codes in codes.items()})
        share = (export.loc[present, raw] != first_code).mean()  # written as another accepted spelling
        rate = params.export.code_variant
        assert abs(share - rate) <= binomial_tolerance(rate, present.sum()), raw
    for raw, canonical in layout.boolean.items():
        decoded = _decode(export[raw], {"True": layout.boolean_codes["true"], "False": layout.boolean_codes["false"]})
        present = export[raw].notna()
        assert (decoded[present] == truth.loc[present, canonical].astype(str)).all(), raw
    scale = _decode(export["scale"], layout.scale_codes)
    assert (scale == truth["madrs_source_scale"]).all()


def test_typos_are_not_in_any_code_list(cohort: SyntheticCohort, spec: TabularSourceSpec) -> None:
    layout = export_layout(spec)
    log = cohort.corruptions[cohort.corruptions["kind"] == "unknown_code"]
    assert len(log) > 0
    for raw, group in log.groupby("column"):
        _, codes = layout.coded[raw]
        assert _decode(group["export_value"], codes).isna().all(), raw
        assert _decode(group["clean_value"], codes).notna().all(), raw


def test_units_and_derived_bmi(cohort: SyntheticCohort, params: SynthesizeParams, spec: TabularSourceSpec) -> None:
    export = cohort.export
    units = export["site"].map({s.name: s.units for s in params.sites})
    weight_unit = export["weight_unit"].where(export["weight"].notna())
    assert (weight_unit.dropna() == units[weight_unit.notna()].map({"metric": "kg", "imperial": "lb"})).all()
    assert (
        export["height_unit"].dropna() == units[export["height_unit"].notna()].map({"metric": "cm", "imperial": "in"})
    ).all()
    assert export["weight"].isna().equals(export["weight_unit"].isna())  # a unit never comes without its value
    body = spec.body_size
    kg = export["weight"] * export["weight_unit"].map(body.weight.units)
    metres = export["height"] * export["height_unit"].map(body.height.units)
    true_bmi = export["patient_ref"].map(cohort.truth.set_index("patient_id")["bmi"])
    derived = (kg / metres**2).dropna()
    assert (derived - true_bmi[derived.index]).abs().max() <= 0.1


def test_scores_are_recorded_on_the_site_scale(cohort: SyntheticCohort, scales: ScaleConversions) -> None:
    export = cohort.export
    truth = cohort.truth.set_index("patient_id").loc[export["patient_ref"]].reset_index(drop=True)
    impossible = export.index.isin(list(_logged_rows(cohort, "impossible_value")))
    scale = truth["madrs_source_scale"]
    pairs = {"score_baseline": "madrs_baseline", "score_end": "madrs_end", "score_week8": "madrs_week8"}
    for raw, canonical in pairs.items():
        recorded = export[raw]
        ok = recorded.notna() & ~impossible
        on_madrs = ok & (scale == "madrs")
        assert (recorded[on_madrs] == truth.loc[on_madrs, canonical]).all()
        for name, (low, high) in scales.ranges.items():
            on_scale = ok & (scale == name)
            assert recorded[on_scale].between(low, high).all()
            assert (recorded[on_scale] == recorded[on_scale].round()).all()
            if name != "madrs" and on_scale.any():  # the registry also holds scales no site records
                back = scales.to_madrs(recorded[on_scale].to_numpy(), name)
                error = back - truth.loc[on_scale, canonical].to_numpy()
                assert abs(error.mean()) < 1.0  # linking is unbiased; rating noise averages out
                assert error.std() < 6.0


def test_log_is_consistent_with_the_export(cohort: SyntheticCohort) -> None:
    export, log = cohort.export, cohort.corruptions
    assert list(log.columns) == ["export_row", "patient_id", "kind", "column", "clean_value", "export_value"]
    assert not log.duplicated(["export_row", "column"]).any()  # one defect per cell
    for column, group in log.groupby("column"):
        cells = export[column].to_numpy()[group["export_row"].to_numpy()]
        logged = group["export_value"]
        if export[column].dtype == "float64":
            np.testing.assert_array_equal(cells, logged.astype("float64").to_numpy())
        else:
            assert (pd.Series(cells, dtype="str").fillna("<NA>").to_numpy() == logged.fillna("<NA>").to_numpy()).all()


def test_export_differs_from_its_clean_rendering_exactly_in_the_logged_cells(
    params: SynthesizeParams, spec: TabularSourceSpec, scales: ScaleConversions
) -> None:
    """corrupt() = render_clean_export() + apply_defects(); every changed cell is logged, every logged cell changed."""
    noisy = params_with(
        n_patients=2000, **{"export.impossible_value": 0.05, "export.unknown_code": 0.05, "export.duplicate": 0.1}
    )
    truth = simulate_truth(noisy, np.random.default_rng(3)).frame
    render_rng, defect_rng = np.random.default_rng(4).spawn(2)
    clean = render_clean_export(truth, noisy, spec, scales, render_rng)
    export, log = apply_defects(clean, truth, noisy, spec, defect_rng)
    export_again, log_again = corrupt(truth, noisy, spec, scales, np.random.default_rng(4))
    pd.testing.assert_frame_equal(export, export_again)
    pd.testing.assert_frame_equal(log, log_again)
    assert not clean.isna().any().any()  # the rendering itself loses nothing

    reference = clean.set_index("patient_ref").loc[export["patient_ref"]].reset_index()[export.columns]
    changed = ~((export == reference) | (export.isna() & reference.isna()))
    changed_cells = {(int(r), c) for r, c in zip(*np.nonzero(changed.to_numpy()), strict=True)}
    changed_cells = {(r, export.columns[c]) for r, c in changed_cells}
    logged_cells = set(zip(log["export_row"], log["column"], strict=True))
    assert changed_cells == logged_cells
    kinds = set(log["kind"])
    assert kinds == {
        "missing_at_random",
        "missing_not_at_random",
        "bmi_not_recorded",
        "impossible_value",
        "unknown_code",
        "duplicate_record",
        "duplicate_blanked",
    }


def test_defect_rates_match_params(cohort: SyntheticCohort, params: SynthesizeParams, spec: TabularSourceSpec) -> None:
    rates, log, export = params.export, cohort.corruptions, cohort.export
    n = len(cohort.truth)
    copies = _logged_rows(cohort, "duplicate_record")
    originals = export[~export.index.isin(list(copies))]
    assert len(originals) == n
    layout = export_layout(spec)

    # missing at random: pooled over the baseline and early cells
    at_random = [*layout.numeric, *layout.coded, *layout.boolean, "weight", "height", "score_baseline", "score_24h"]
    mar = log[(log["kind"] == "missing_at_random") & log["column"].isin(at_random) & ~log["export_row"].isin(copies)]
    cells = n * len(at_random)
    assert abs(len(mar) / cells - rates.missing_at_random) <= binomial_tolerance(rates.missing_at_random, cells)

    # missing not at random: follow-up scores, by response status at that visit
    truth = cohort.truth.set_index("patient_id").loc[originals["patient_ref"]].reset_index(drop=True)
    base = truth["madrs_baseline"]
    for raw, canonical in {
        "score_acute": "madrs_acute",
        "score_end": "madrs_end",
        "score_week8": "madrs_week8",
    }.items():
        responded = (truth[canonical] <= 0.5 * base).to_numpy()
        missing = originals[raw].isna().to_numpy()
        for status, rate in ((True, rates.followup_missing_responder), (False, rates.followup_missing_nonresponder)):
            group = responded == status
            assert abs(missing[group].mean() - rate) <= binomial_tolerance(rate, group.sum()), (raw, status)

    # BMI blank although weight and height are there
    derivable = n * (1 - rates.missing_at_random) ** 3
    not_recorded = len(log[(log["kind"] == "bmi_not_recorded") & ~log["export_row"].isin(copies)])
    assert abs(not_recorded / derivable - rates.bmi_not_recorded) <= binomial_tolerance(
        rates.bmi_not_recorded, int(derivable)
    )

    # one impossible number / one unknown code per affected row; duplicated patients
    for kind, rate in (("impossible_value", rates.impossible_value), ("unknown_code", rates.unknown_code)):
        rows = log[(log["kind"] == kind) & ~log["export_row"].isin(copies)]
        assert rows["export_row"].is_unique
        assert abs(len(rows) / n - rate) <= binomial_tolerance(rate, n), kind
    assert abs(len(copies) / n - rates.duplicate) <= binomial_tolerance(rates.duplicate, n)


def test_impossible_values_are_outside_the_contract(
    cohort: SyntheticCohort, contract: CohortContract, scales: ScaleConversions, spec: TabularSourceSpec
) -> None:
    layout = export_layout(spec)
    raw_to_canonical = {**layout.numeric, **layout.scores}
    log = cohort.corruptions[cohort.corruptions["kind"] == "impossible_value"]
    assert set(log["column"]) <= {layout.raw_name(c) for c in IMPOSSIBLE_RANGES}
    for raw, group in log.groupby("column"):
        spec_col = contract.column(raw_to_canonical[raw])
        values = group["export_value"].astype(float)
        if raw in layout.scores:  # impossible on every scale, and still impossible once converted to MADRS
            assert (values > max(high for _, high in scales.ranges.values())).all()
            assert (scales.to_madrs(values.to_numpy(), "qids_sr16") > spec_col.max).all()
        else:
            assert ((values < spec_col.min) | (values > spec_col.max)).all(), raw


def test_the_clean_record_wins_the_duplicate_rule(cohort: SyntheticCohort, spec: TabularSourceSpec) -> None:
    """Most complete, then latest updated_at, then first in file: the original always wins."""
    export = cohort.export
    layout = export_layout(spec)
    copies = _logged_rows(cohort, "duplicate_record")
    mapped = [c for c in {**layout.numeric, **layout.coded, **layout.boolean, **layout.scores} if c != "bmi"]
    ranking = pd.DataFrame(
        {
            "patient": export["patient_ref"],
            "completeness": export[mapped].notna().sum(axis=1),
            "updated_at": pd.to_datetime(export["updated_at"]),
            "order": np.arange(len(export)),
        }
    )
    winners = ranking.sort_values(
        ["patient", "completeness", "updated_at", "order"], ascending=[True, False, False, True], kind="stable"
    ).drop_duplicates("patient")
    assert not set(winners.index) & copies
    duplicated = ranking[ranking["patient"].duplicated(keep=False)]
    assert (duplicated.groupby("patient")["completeness"].nunique() == 2).all()  # never a tie on completeness
    original_date = ranking[~ranking.index.isin(list(copies))].set_index("patient")["updated_at"]
    copy_rows = ranking.loc[sorted(copies)]
    later = copy_rows["updated_at"].to_numpy() > original_date.loc[copy_rows["patient"]].to_numpy()
    assert 0 < later.mean() < 1  # copies are sometimes later: the date alone would pick the wrong record


def test_the_cleaner_quarantines_exactly_the_logged_defects(
    cohort: SyntheticCohort, contract: CohortContract, spec: TabularSourceSpec, scales: ScaleConversions
) -> None:
    """Round trip through the shared harmonisation: defects are quarantined, copies lose, kept values are true."""
    from pipeline.harmonise import harmonise, rules_from_tabular_spec
    from pipeline.sources.tabular import stage_tabular

    staged = stage_tabular(cohort.export, spec, source_file="export.parquet")
    result = harmonise(staged.rows, rules_from_tabular_spec(spec), contract, scales)
    quarantine = result.quarantine
    assert len(result.cohort) + len(quarantine) == len(cohort.export)
    defect_rows = _logged_rows(cohort, "impossible_value", "unknown_code")
    not_duplicate = quarantine[quarantine["reason_code"] != "duplicate_record"]
    assert set(not_duplicate["source_row"].astype(int) - 1) == defect_rows
    assert set(
        quarantine.loc[quarantine["reason_code"] == "duplicate_record", "source_row"].astype(int) - 1
    ) <= _logged_rows(cohort, "duplicate_record")
    merged = result.cohort.merge(cohort.truth, on="patient_id", suffixes=("", "_truth"))
    for column in ("age", "n_failed_trials", "dose", "benzodiazepine_mg_deq", "sex", "route", "prior_ect"):
        kept = merged[column].notna()
        assert (merged.loc[kept, column].astype(str) == merged.loc[kept, f"{column}_truth"].astype(str)).all(), column
    on_madrs = (merged["madrs_source_scale"] == "madrs") & merged["madrs_end"].notna()
    assert (merged.loc[on_madrs, "madrs_end"] == merged.loc[on_madrs, "madrs_end_truth"]).all()


# --- the stage shell --------------------------------------------------------------------------------------------


def test_same_params_give_identical_bytes_and_another_seed_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_main(make_root(tmp_path / "a", small(1500)), monkeypatch)
    second = run_main(make_root(tmp_path / "b", small(1500)), monkeypatch)

    def other_seed(raw: dict) -> None:
        small(1500)(raw)
        raw["base"]["seed"] += 1

    third = run_main(make_root(tmp_path / "c", other_seed), monkeypatch)
    for name in OUTPUT_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
        assert (first / name).read_bytes() != (third / name).read_bytes(), name
    effects = json.loads((first / "planted_effects.json").read_text())
    assert effects["outcomes"]["response_end"]["coefficients"]["sex_female"] == 0
    assert effects["outcomes"]["response_end"]["coefficients"]["bmi_per_5"] > 0


def test_export_settings_do_not_change_the_truth(params: SynthesizeParams) -> None:
    """Independent random streams: an export rate is not a reason for a different cohort."""
    truth_rng, _ = stage_rngs(SEED)
    base = simulate_truth(params.model_copy(update={"n_patients": 500}), truth_rng).frame
    truth_rng, _ = stage_rngs(SEED)
    changed = params_with(n_patients=500, **{"export.duplicate": 0.5, "export.missing_at_random": 0.2})
    pd.testing.assert_frame_equal(base, simulate_truth(changed, truth_rng).frame)


def _set(path: str, value: Any) -> Any:
    def edit(raw: dict) -> None:
        node = raw["synthesize"]
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return edit


def _drop_section(raw: dict) -> None:
    del raw["synthesize"]


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_set("n_patients", -5), "synthesize.n_patients"),
        (_set("export.missing_at_random", 1.5), "synthesize.export.missing_at_random"),
        (_set("outcomes.targets.response_end", 0.0), "synthesize.outcomes.targets.response_end"),
        (
            _set("sites.0.route_mix", {"iv_racemic": 0.5, "nasal_spray": 0.5}),
            "synthesize.sites.0.route_mix.nasal_spray",
        ),
        (_set("sites.0.route_mix", {"iv_racemic": 0.5, "oral": 0.3}), "synthesize.sites.0.route_mix"),
        (_set("sites.0.share", 0.9), "site shares must sum to 1"),
        (_set("unknown_knob", 1), "synthesize.unknown_knob"),
        (
            _set("correlations", [["age", "bmi", 0.99], ["bmi", "crp_mg_l", 0.99], ["age", "crp_mg_l", -0.99]]),
            "positive-definite",
        ),
        (_set("outcomes.targets.remission_end", 0.001), "synthesize.outcomes.targets.remission_end"),
        (_drop_section, "missing section 'synthesize'"),
    ],
)
def test_bad_params_fail_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Any, named: str
) -> None:
    root = make_root(tmp_path / "project", edit)
    monkeypatch.setenv(ROOT_ENV, str(root))
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        main()
    assert not (root / "data").exists()


def test_an_export_contract_the_generator_cannot_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_root(tmp_path / "project", small(200))
    source = root / "configs" / "sources" / "synthetic.yaml"
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    raw["numeric"]["hdl_mg_dl"] = "hdl"  # a column the generator does not produce
    source.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setenv(ROOT_ENV, str(root))
    with pytest.raises(ConfigError, match="hdl_mg_dl"):
        main()
    assert not (root / "data").exists()


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ("hamd_17", "did you mean 'hamd17'?"),  # a typo: not in the registry
        ("phq9", "has no conversion to MADRS"),  # in the registry, but the generator cannot record MADRS on it
    ],
)
def test_a_site_scale_must_be_a_registry_scale_with_a_conversion(scale: str, message: str) -> None:
    raw = read_params_file(REPO_ROOT / "params.yaml")
    raw["synthesize"]["sites"][0]["scale"] = scale
    params = parse_section(SynthesizeParams, raw, "synthesize", "params.yaml")
    scales = load_scale_conversions(REPO_ROOT / "configs" / "scale_conversions.yaml")
    problems = site_scale_problems(params, scales)
    assert len(problems) == 1
    assert problems[0].startswith("synthesize.sites[0].scale: ")
    assert message in problems[0]


def test_every_default_site_scale_is_recordable() -> None:
    raw = read_params_file(REPO_ROOT / "params.yaml")
    params = parse_section(SynthesizeParams, raw, "synthesize", "params.yaml")
    scales = load_scale_conversions(REPO_ROOT / "configs" / "scale_conversions.yaml")
    assert site_scale_problems(params, scales) == []
