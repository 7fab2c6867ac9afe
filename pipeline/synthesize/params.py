"""The ``synthesize`` section of params.yaml as a typed, frozen model.

Every figure lives in params.yaml and its literature citation in configs/params_citations.yaml; this module only
states what a valid value is. Cross-field rules (mixes that sum to 1, a positive-definite correlation matrix,
reachable targets) are checked here too, so a bad value fails with ``synthesize.<param>`` before anything is generated.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from pipeline.params import Frozen

Route = Literal["iv_racemic", "intranasal_esketamine", "oral", "im_sc"]
Psychotherapy = Literal["none", "supportive", "structured_kap"]
ROUTES: tuple[str, ...] = get_args(Route)
PSYCHOTHERAPIES: tuple[str, ...] = get_args(Psychotherapy)

# Baseline traits that share the Gaussian copula, named as their canonical columns (``sex`` means female).
Trait = Literal[
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
    "madrs_baseline",
    "current_suicidal_ideation",
]
TRAITS: tuple[str, ...] = get_args(Trait)

Probability = Annotated[float, Field(ge=0, le=1)]
OpenProbability = Annotated[float, Field(gt=0, lt=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
LogOdds = Annotated[float, Field(ge=-5, le=5)]
Correlation = Annotated[float, Field(gt=-1, lt=1)]
SUM_TOLERANCE = 1e-6


def _sums_to_one(values: list[float], what: str) -> None:
    total = float(sum(values))
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{what} must sum to 1 (got {total:.6g})")


class RouteMix(Frozen):
    """Share of patients on each route at a site (routes left out have share 0)."""

    iv_racemic: Probability = 0.0
    intranasal_esketamine: Probability = 0.0
    oral: Probability = 0.0
    im_sc: Probability = 0.0

    @model_validator(mode="after")
    def _total(self) -> RouteMix:
        _sums_to_one([getattr(self, r) for r in ROUTES], "route shares")
        return self


class PsychotherapyMix(Frozen):
    """Share of patients in each psychotherapy arm at a site."""

    none: Probability = 0.0
    supportive: Probability = 0.0
    structured_kap: Probability = 0.0

    @model_validator(mode="after")
    def _total(self) -> PsychotherapyMix:
        _sums_to_one([getattr(self, p) for p in PSYCHOTHERAPIES], "psychotherapy shares")
        return self


class Site(Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="Site label as the export writes it.")
    share: float = Field(gt=0, le=1, description="Share of the cohort treated at this site.")
    age_mean: float = Field(ge=18, le=90, description="Mean age (years) before truncation.")
    intercept: LogOdds = Field(description="Site offset on the marginal log-odds of every outcome.")
    route_mix: RouteMix
    psychotherapy_mix: PsychotherapyMix
    scale: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Rating scale the site records depression scores on: a scale of configs/scale_conversions.yaml "
        "with a conversion to MADRS (the generator draws MADRS and records it on the site's scale).",
    )
    units: Literal["metric", "imperial"] = Field(description="kg/cm or lb/in for weight and height.")
    sbp_rise_mean: float | None = Field(
        default=None,
        ge=-60,
        le=120,
        description="Mean first-session SBP rise (mmHg) of this site's cohort; None: early_markers.sbp_rise_mean.",
    )


class AgeParams(Frozen):
    sd: PositiveFloat
    min: float = Field(ge=18, le=100)
    max: float = Field(ge=18, le=100)

    @model_validator(mode="after")
    def _order(self) -> AgeParams:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class BmiParams(Frozen):
    median: float = Field(gt=12, lt=80)
    log_sd: PositiveFloat
    min: float = Field(ge=12, le=80)
    max: float = Field(ge=12, le=80)

    @model_validator(mode="after")
    def _order(self) -> BmiParams:
        if not self.min < self.median < self.max:
            raise ValueError("need min < median < max")
        return self


class MadrsBaselineParams(Frozen):
    mean: float = Field(ge=0, le=60)
    sd: PositiveFloat
    # >= 20 keeps remission (MADRS <= 10) a subset of response (MADRS <= baseline / 2), as in trials (lit §8a)
    min: int = Field(ge=20, le=60)
    max: int = Field(ge=20, le=60)

    @model_validator(mode="after")
    def _order(self) -> MadrsBaselineParams:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class Prevalences(Frozen):
    """P(True) of each boolean baseline column."""

    anxious_depression: Probability
    comorbid_ptsd: Probability
    lifetime_suicide_attempt: Probability
    prior_psych_hospitalisation: Probability
    family_history_aud: Probability
    prior_ect: Probability
    current_suicidal_ideation: Probability


class BenzodiazepineParams(Frozen):
    use: Probability
    median_mg: float = Field(gt=0, le=120, description="Median diazepam-equivalent mg/day among users.")
    log_sd: PositiveFloat


class CrpParams(Frozen):
    high: OpenProbability = Field(description="P(CRP >= high_mg_l).")
    high_mg_l: float = Field(gt=0, le=300)
    log_sd: PositiveFloat


class HeightParams(Frozen):
    female: float = Field(gt=120, lt=220)
    male: float = Field(gt=120, lt=220)
    sd: PositiveFloat


class CohortParams(Frozen):
    female: Probability
    postpartum_onset_female: Probability = Field(description="P(postpartum-onset depression | female).")
    age: AgeParams
    bmi: BmiParams
    madrs_baseline: MadrsBaselineParams
    min_failed_trials: int = Field(ge=0, le=30)
    extra_failed_trials: tuple[Probability, ...] = Field(min_length=1, description="P(min + k) for k = 0, 1, ...")
    prevalence: Prevalences
    benzodiazepine: BenzodiazepineParams
    crp: CrpParams
    height_cm: HeightParams

    @model_validator(mode="after")
    def _failed_trials(self) -> CohortParams:
        _sums_to_one(list(self.extra_failed_trials), "extra_failed_trials")
        if self.min_failed_trials + len(self.extra_failed_trials) - 1 > 30:
            raise ValueError("failed trials would exceed the contract maximum of 30")
        return self


DoseMix = dict[Annotated[float, Field(gt=0, le=300)], Probability]
SessionMix = dict[Annotated[int, Field(ge=1, le=40)], Probability]


class DoseByRoute(Frozen):
    """Planned dose per session {dose: share}: mg/kg for racemic routes, mg for intranasal esketamine."""

    iv_racemic: DoseMix
    intranasal_esketamine: DoseMix
    oral: DoseMix
    im_sc: DoseMix

    @model_validator(mode="after")
    def _totals(self) -> DoseByRoute:
        for route in ROUTES:
            _sums_to_one(list(getattr(self, route).values()), f"{route} dose shares")
        return self


class SessionsByRoute(Frozen):
    """Planned number of sessions in the induction course {n: share}."""

    iv_racemic: SessionMix
    intranasal_esketamine: SessionMix
    oral: SessionMix
    im_sc: SessionMix

    @model_validator(mode="after")
    def _totals(self) -> SessionsByRoute:
        for route in ROUTES:
            _sums_to_one(list(getattr(self, route).values()), f"{route} session shares")
        return self


class TreatmentParams(Frozen):
    older_adult_age: int = Field(ge=18, le=100, description="Age from which esketamine starts at a lower dose.")
    dose: DoseByRoute
    esketamine_dose_older_adult: DoseMix
    n_sessions: SessionsByRoute

    @model_validator(mode="after")
    def _older_dose(self) -> TreatmentParams:
        _sums_to_one(list(self.esketamine_dose_older_adult.values()), "esketamine_dose_older_adult shares")
        return self


class PsychotherapyEffects(Frozen):
    supportive: LogOdds
    structured_kap: LogOdds


class PredictorEffects(Frozen):
    """Patient-level log-odds ratios (lit §8b); every one is multiplied by ``effect_scale``."""

    age_per_10y: LogOdds
    bmi_per_5: LogOdds
    n_failed_trials: LogOdds
    lifetime_suicide_attempt: LogOdds
    prior_psych_hospitalisation: LogOdds
    family_history_aud: LogOdds
    prior_ect: LogOdds
    benzodiazepine_any: LogOdds
    benzodiazepine_high: LogOdds
    benzodiazepine_high_mg: float = Field(gt=0, le=120)
    crp_high: LogOdds
    esketamine_older_adult: LogOdds
    psychotherapy_week8: PsychotherapyEffects


class RouteEffects(Frozen):
    """Marginal log-odds of a route relative to IV racemic ketamine (the reference)."""

    intranasal_esketamine: LogOdds
    oral: LogOdds
    im_sc: LogOdds


class Targets(Frozen):
    response_acute: OpenProbability
    response_end: OpenProbability
    remission_end: OpenProbability
    sustained_week8: OpenProbability

    @model_validator(mode="after")
    def _nested(self) -> Targets:
        # remission and sustained response are subsets of response at the end of induction
        if self.remission_end >= self.response_end:
            raise ValueError("remission_end must be below response_end")
        if self.sustained_week8 >= self.response_end:
            raise ValueError("sustained_week8 must be below response_end")
        return self


class LatentCorrelations(Frozen):
    """Gaussian-copula chain: 24 h - acute - end - week 8, and CADSS - end (racemic routes only)."""

    h24_acute: Annotated[float, Field(ge=0, lt=1)]
    acute_end: Annotated[float, Field(ge=0, lt=1)]
    # the exact bivariate-normal algorithm used for sustained response is for |rho| < 0.925
    end_week8: Annotated[float, Field(ge=0, le=0.9)]
    cadss_end_racemic: Annotated[float, Field(ge=-0.9, le=0.9)]


class OutcomeParams(Frozen):
    targets: Targets
    route_effects_acute: RouteEffects
    route_effects_end: RouteEffects
    sessions_per_doubling: LogOdds
    max_worsening: float = Field(ge=0, le=1, description="Largest rise of a score, as a fraction of baseline.")
    latent_correlation: LatentCorrelations


class CadssMeans(Frozen):
    iv_racemic: Annotated[float, Field(ge=0, le=92)]
    intranasal_esketamine: Annotated[float, Field(ge=0, le=92)]
    oral: Annotated[float, Field(ge=0, le=92)]
    im_sc: Annotated[float, Field(ge=0, le=92)]


class EarlyMarkerParams(Frozen):
    cadss_mean: CadssMeans
    cadss_negbin_shape: PositiveFloat
    cadss_max: int = Field(ge=1, le=92)
    sbp_rise_mean: float = Field(ge=-60, le=120)
    sbp_rise_sd: PositiveFloat
    sbp_rise_per_year: float = Field(ge=-5, le=5)
    sbp_reference_age: float = Field(ge=18, le=100)


class ExportParams(Frozen):
    missing_at_random: Probability
    followup_missing_responder: Probability
    followup_missing_nonresponder: Probability
    bmi_not_recorded: Probability
    code_variant: Probability
    unknown_code: Probability
    impossible_value: Probability
    duplicate: Probability
    duplicate_max_days: int = Field(ge=1, le=3650)
    score_noise_sd: float = Field(ge=0, le=10)
    first_update: dt.date
    last_update: dt.date

    @model_validator(mode="after")
    def _dates(self) -> ExportParams:
        if self.first_update >= self.last_update:
            raise ValueError("first_update must be before last_update")
        return self


class Gad7Baseline(Frozen):
    mean: float = Field(ge=0, le=21)
    sd: PositiveFloat
    min: int = Field(ge=0, le=21)
    max: int = Field(ge=0, le=21)

    @model_validator(mode="after")
    def _order(self) -> Gad7Baseline:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class AnxietyParams(Frozen):
    """Baseline GAD-7 and its change to the end of induction, tied to the depression trajectory (lit §11).

    Fractional GAD-7 change = depression_slope x (MADRS_end / MADRS_baseline - 1, unrounded) + offset
    + anxious_depression_direct x anxious_depression + Normal(0, noise_sd); the offset is calibrated so that
    the anxiety response rate among patients with baseline GAD-7 >= calibration_min_baseline is response_target.
    """

    gad7_baseline: Gad7Baseline
    anxious_depression_correlation: Correlation = Field(description="Latent corr(GAD-7 baseline, anxious dep.).")
    calibration_min_baseline: int = Field(ge=1, le=21, description="GAD-7 >= this: the population of the target.")
    response_target: OpenProbability
    depression_slope: float = Field(ge=0, le=2)
    anxious_depression_direct: float = Field(ge=-1, le=1)
    noise_sd: float = Field(gt=0, le=1)


class BaselineBp(Frozen):
    """Baseline (pre-dose) blood pressure: Normal(mean + per_year (age - reference) + hypertension, sd), truncated."""

    mean: float = Field(ge=40, le=200)
    per_year: float = Field(ge=-5, le=5)
    hypertension: float = Field(ge=-50, le=80)
    sd: PositiveFloat
    min: float = Field(ge=30, le=250)
    max: float = Field(ge=30, le=250)

    @model_validator(mode="after")
    def _order(self) -> BaselineBp:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class RouteRise(Frozen):
    """First-session SBP rise of a route relative to IV racemic ketamine (mmHg)."""

    intranasal_esketamine: float = Field(ge=-60, le=60)
    oral: float = Field(ge=-60, le=60)
    im_sc: float = Field(ge=-60, le=60)


class BloodPressureParams(Frozen):
    """Baseline blood pressure, hypertension history and the first session's rise (lit §12).

    SBP rise ~ Normal(site mean + per-year age term + hypertension + dose + route + dissociation, sbp_rise_sd);
    DBP rise = dbp_rise_ratio x SBP rise + Normal(0, dbp_rise_noise_sd). The hypertensive event's thresholds
    are the cleaner's (pipeline/outcomes.py BP_EVENT_*), so truth and cleaned data agree.
    """

    hypertension: Probability
    hypertension_age_correlation: Correlation
    reference_age: float = Field(ge=18, le=100)
    sbp_baseline: BaselineBp
    dbp_baseline: BaselineBp
    dbp_sbp_correlation: Correlation
    rise_hypertension: float = Field(ge=-30, le=60)
    rise_per_quarter_mg_kg: float = Field(ge=-30, le=60, description="mmHg per +0.25 mg/kg above the reference.")
    racemic_reference_mg_kg: float = Field(gt=0, le=5)
    rise_per_28_mg_esketamine: float = Field(ge=-30, le=60, description="mmHg per +28 mg above the reference.")
    esketamine_reference_mg: float = Field(gt=0, le=300)
    rise_route: RouteRise
    rise_dissociation: float = Field(ge=-30, le=60, description="mmHg added when CADSS > dissociation_cadss.")
    dissociation_cadss: float = Field(ge=0, le=92)
    dbp_rise_ratio: float = Field(ge=0, le=2)
    dbp_rise_noise_sd: PositiveFloat


class SynthesizeParams(Frozen):
    """The whole ``synthesize`` section (params.yaml holds every value; configs/params_citations.yaml its citation)."""

    n_patients: int = Field(ge=100, le=20_000_000)
    effect_scale: float = Field(ge=0, le=5)
    oracle_auroc_range: tuple[OpenProbability, OpenProbability]
    sites: tuple[Site, ...] = Field(min_length=1)
    cohort: CohortParams
    correlations: tuple[tuple[Trait, Trait, Correlation], ...] = ()
    treatment: TreatmentParams
    effects: PredictorEffects
    outcomes: OutcomeParams
    early_markers: EarlyMarkerParams
    anxiety: AnxietyParams
    blood_pressure: BloodPressureParams
    export: ExportParams

    @model_validator(mode="after")
    def _consistent(self) -> SynthesizeParams:
        low, high = self.oracle_auroc_range
        if low >= high:
            raise ValueError("oracle_auroc_range must be [low, high] with low < high")
        _sums_to_one([s.share for s in self.sites], "site shares")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique (got {names})")
        trait_correlation_matrix(self.correlations)  # raises if not a valid correlation matrix
        bp = self.blood_pressure
        sd_dbp = (bp.dbp_rise_ratio**2 * self.early_markers.sbp_rise_sd**2 + bp.dbp_rise_noise_sd**2) ** 0.5
        if bp.dbp_rise_ratio * self.early_markers.sbp_rise_sd / sd_dbp >= 0.925:
            # the event probability is a bivariate-normal orthant, computed exactly only below this correlation
            raise ValueError("blood_pressure: corr(SBP rise, DBP rise) must stay below 0.925; raise dbp_rise_noise_sd")
        return self


def trait_correlation_matrix(pairs: tuple[tuple[str, str, float], ...]) -> np.ndarray:
    """The copula's correlation matrix over TRAITS; raises ValueError if it is not positive definite."""
    matrix = np.eye(len(TRAITS))
    seen: set[frozenset[str]] = set()
    for first, second, rho in pairs:
        key = frozenset((first, second))
        if first == second:
            raise ValueError(f"correlation of '{first}' with itself")
        if key in seen:
            raise ValueError(f"correlation between '{first}' and '{second}' given twice")
        seen.add(key)
        i, j = TRAITS.index(first), TRAITS.index(second)
        matrix[i, j] = matrix[j, i] = rho
    if np.linalg.eigvalsh(matrix).min() <= 1e-8:
        raise ValueError("correlations do not form a positive-definite matrix; weaken some of them")
    return matrix
