"""The ``synthesize`` stage: a literature-grounded synthetic TRD ketamine cohort with known ground truth.

Outputs (data/raw/synthetic/):

- ``export.parquet``: a messy clinic export in the raw columns, codes and units of configs/sources/synthetic.yaml;
- ``truth.parquet``: one clean row per patient with every canonical column (configs/cohort_schema.yaml) and the
  true probabilities ``p_response_acute``, ``p_response_end``, ``p_remission_end``, ``p_sustained_week8``,
  ``p_anxiety_response_end``, ``p_bp_event_first`` (given baseline and site) and ``p_response_end_early`` (given
  baseline, site and the early markers), and the same with the site marginalised (``p_<outcome>_predictors`` for
  response acute, end and early, sustained response, anxiety response and the BP event: the site is no task's
  predictor);
- ``corruptions.parquet``: one row per damaged export cell (export_row, patient_id, kind, column, clean_value,
  export_value);
- ``planted_effects.json``: the planted coefficients (marginal log-odds), their encodings, the mean |SHAP| of the
  true model per feature, realised rates and the oracle AUROC per outcome;
- ``true_contributions.parquet``: every patient's exact SHAP value per planted feature in the true log-odds of
  ``response_acute`` and ``response_end`` (columns ``<outcome>.<feature>``), what the explain stage's fidelity
  checks compare the model's SHAP values with.

Generative model (figures in params.yaml, ``synthesize:``; their citations in configs/params_citations.yaml;
docs/literature.md §8):

1. **Sites** have their own case-mix: mean age, route mix, psychotherapy mix, the rating scale and body-size units
   they record, and a log-odds offset shared by every outcome (:mod:`.cohort`).
2. **Baseline traits** (age, sex, BMI, failed trials, history flags, benzodiazepine dose, CRP, baseline MADRS,
   current suicidal ideation) share a Gaussian copula: configured marginals, latent correlations from lit §8a.
   **Treatment** follows the site's mix; dose and number of sessions follow the route (and age for esketamine).
3. **Outcomes** (:mod:`.outcomes`). For latent ``k`` in {acute, end, week8},
   ``eta_k(x) = intercept_k + site offset + sum_t beta_kt * term_t(x)`` with planted marginal log-odds ``beta``
   (patient-level effects x ``effect_scale``; route effects per outcome; course length on end and week 8;
   psychotherapy on week 8 only). The latent improvement is ``z_k = eta_k + L_k`` with ``L_k`` standard logistic,
   so ``P(z_k > 0 | x) = sigmoid(eta_k)`` exactly; the logistic noise is the unmeasured heterogeneity that caps
   the oracle AUROC. The ``L_k = logit(Phi(N_k))`` are tied by a Gaussian-copula chain of standard normals
   ``N_24h - N_acute - N_end - N_week8`` (and the CADSS latent to ``N_end`` for racemic ketamine), so marginals
   stay exactly logistic while time points correlate.
4. **Scores**: MADRS = ``round(baseline * r(z))`` with ``r`` decreasing, ``r(0) = 1/2``, ``r(-inf) = 1 +
   max_worsening``; responders are capped at ``floor(baseline/2)`` and non-responders kept above it, so response
   (MADRS <= baseline/2) is exactly ``z > 0``. Remission (MADRS_end <= 10) is ``z_end > max(0, r^-1(10.5 /
   baseline))``, again exact. Intercepts and the spread of ``r`` are calibrated (Brent's method on the mean true
   probability) so the marginal acute response, end response, remission and sustained rates hit their targets.
5. **Early markers**: MADRS at 24 h from ``z_24h`` (sharing the acute linear predictor); CADSS peak from a
   negative binomial per route by the CDF of its latent; the SBP and DBP rises (step 6) have no link to response.
6. **Issue 18** (:mod:`.clinical`, lit §11-§14): hypertension history, baseline SBP/DBP, baseline GAD-7 and a
   postpartum-onset flag (women; planted null) at baseline; the first session's SBP rise from the site's cohort
   mean, age, hypertension, dose, route and dissociation, the DBP rise from it, and the hypertensive event read on
   the recorded values (exact orthant probability); GAD-7 at the end of induction from the depression change
   (partly mediated) with its own noise, calibrated so anxiety response in GAD-7 >= 10 hits its target (exact up
   to Gauss-Hermite quadrature). Misuse is not modelled: no incidence was found to ground it (lit §15).
7. **Probabilities**: ``p_response_*`` and ``p_remission_end`` are logistic in closed form; ``p_sustained_week8``
   is a bivariate-normal orthant (Drezner-Wesolowsky); ``p_response_end_early`` conditions on the recorded 24 h
   MADRS and CADSS, each an interval of its latent normal (exact bivariate differences, quadrature over CADSS).
8. **Export** (:mod:`.export`): codes, units and scales per site, then logged defects (missing at random, missing
   not at random, BMI not recorded, impossible values, unknown codes, less complete duplicates), shuffled.

Randomness: one ``SeedSequence`` derived from ``base.seed`` and the stage name, split into independent streams
(truth, export; and within them baseline, latents, markers, rendering, each defect), so the same params give the
same bytes, and changing an export rate leaves the truth unchanged.
"""

from __future__ import annotations

import difflib
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ConfigError
from pipeline.io import write_json, write_parquet
from pipeline.params import BaseParams, parse_section, read_params_file
from pipeline.paths import ProjectPaths
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.spec import TabularSourceSpec, read_tabular_spec
from pipeline.synthesize.defects import apply_defects, corrupt
from pipeline.synthesize.effects import OUTCOMES, auroc, oracle_aurocs, planted_effects, true_contributions
from pipeline.synthesize.export import export_layout, render_clean_export
from pipeline.synthesize.outcomes import bivariate_normal_upper, model_terms, planted_coefficients, term_values
from pipeline.synthesize.params import SynthesizeParams
from pipeline.synthesize.truth import PROBABILITY_COLUMNS, SimulatedTruth, simulate_truth

__all__ = [
    "PARAMS_USED",
    "PROBABILITY_COLUMNS",
    "SimulatedTruth",
    "SynthesizeParams",
    "SyntheticCohort",
    "apply_defects",
    "auroc",
    "bivariate_normal_upper",
    "conform_truth",
    "corrupt",
    "main",
    "model_terms",
    "oracle_aurocs",
    "planted_coefficients",
    "planted_effects",
    "render_clean_export",
    "simulate_truth",
    "stage_rngs",
    "synthesize",
    "term_values",
    "true_contributions",
]

logger = logging.getLogger(__name__)
SECTION = "synthesize"
PARAMS_USED = ("base.seed", SECTION)  # what dvc.yaml must declare for this stage (tests/test_dvc_yaml.py)
SOURCE = "synthetic"
OUTPUT_FILES = (
    "export.parquet",
    "truth.parquet",
    "corruptions.parquet",
    "planted_effects.json",
    "true_contributions.parquet",
)


@dataclass(frozen=True)
class SyntheticCohort:
    truth: pd.DataFrame
    export: pd.DataFrame
    corruptions: pd.DataFrame
    planted_effects: dict[str, Any]
    true_contributions: pd.DataFrame


def stage_rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the truth and the export, derived from ``base.seed`` and this stage's name."""
    root = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(SECTION.encode()),))
    truth_seq, export_seq = root.spawn(2)
    return np.random.default_rng(truth_seq), np.random.default_rng(export_seq)


def conform_truth(frame: pd.DataFrame, contract: CohortContract) -> pd.DataFrame:
    """Cast the canonical columns to the contract's dtypes and validate them; probabilities follow unchanged."""
    canonical = contract.pandera_schema().validate(contract.coerce(frame))
    extra = [c for c in frame.columns if c not in contract.names]
    return pd.concat([canonical, frame[extra]], axis=1)


def site_scale_problems(params: SynthesizeParams, scales: ScaleConversions) -> list[str]:
    """``key: message`` lines for site scales the generator cannot record: unknown to the scale registry, or
    without a conversion from MADRS. Adding a scale is a registry edit (with its citation), no code."""
    problems = []
    for index, site in enumerate(params.sites):
        key = f"synthesize.sites[{index}].scale"
        if site.scale not in scales.names:
            close = difflib.get_close_matches(site.scale, scales.names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (scales: {', '.join(scales.names)})"
            problems.append(f"{key}: '{site.scale}' is not in configs/scale_conversions.yaml{hint}")
        elif not scales.convertible(site.scale):
            problems.append(
                f"{key}: '{site.scale}' has no conversion to MADRS in configs/scale_conversions.yaml, so the "
                "generator cannot record MADRS on it (use a scale with a published conversion)"
            )
    return problems


def synthesize(
    params: SynthesizeParams,
    seed: int,
    *,
    contract: CohortContract,
    spec: TabularSourceSpec,
    scales: ScaleConversions,
) -> SyntheticCohort:
    """The whole stage without file input/output: truth, export, corruption log and planted effects."""
    problems = site_scale_problems(params, scales)
    if problems:
        raise ConfigError("; ".join(problems), hint="fix the site's scale in params.yaml")
    truth_rng, export_rng = stage_rngs(seed)
    simulated = simulate_truth(params, truth_rng)
    # keep only the conformed frame: at a million patients every extra copy of the truth costs ~300 MB
    simulated = SimulatedTruth(frame=conform_truth(simulated.frame, contract), model=simulated.model)
    export, corruptions = corrupt(simulated.frame, params, spec, scales, export_rng)
    return SyntheticCohort(
        truth=simulated.frame,
        export=export,
        corruptions=corruptions,
        planted_effects=planted_effects(simulated, params),
        true_contributions=true_contributions(simulated.frame, params),
    )


def main() -> None:
    """Read params and configs, validate all of them, generate, then write the four outputs atomically."""
    started = time.perf_counter()
    paths = ProjectPaths.discover()
    raw = read_params_file(paths.params_file)
    seed = parse_section(BaseParams, raw, "base", paths.params_file).seed
    params = parse_section(SynthesizeParams, raw, SECTION, paths.params_file)
    contract = load_contract(paths.cohort_schema)
    spec = read_tabular_spec(paths.sources_dir / f"{SOURCE}.yaml")
    export_layout(spec)  # the export contract must match what the generator writes, before any work
    scales = load_scale_conversions(paths.configs / "scale_conversions.yaml")

    cohort = synthesize(params, seed, contract=contract, spec=spec, scales=scales)

    out = paths.synthetic_dir
    write_parquet(cohort.export, out / "export.parquet")
    write_parquet(cohort.truth, out / "truth.parquet")
    write_parquet(cohort.corruptions, out / "corruptions.parquet")
    write_json(cohort.planted_effects, out / "planted_effects.json")
    write_parquet(cohort.true_contributions, out / "true_contributions.parquet")

    low, high = params.oracle_auroc_range
    for outcome in OUTCOMES:  # the response outcomes, which lit §3's range is about
        entry = cohort.planted_effects["outcomes"][outcome]
        if not low <= entry["oracle_auroc"] <= high:
            logger.warning(
                "oracle AUROC of %s is %.3f, outside synthesize.oracle_auroc_range [%g, %g]",
                outcome,
                entry["oracle_auroc"],
                low,
                high,
            )
    kinds = cohort.corruptions["kind"].value_counts().sort_index()
    logger.info(
        "synthesized %d patients into %d export rows (%s) in %.1f s -> %s",
        len(cohort.truth),
        len(cohort.export),
        ", ".join(f"{kind} {count}" for kind, count in kinds.items()),
        time.perf_counter() - started,
        out,
    )
