"""The messy clinic export: the clean truth written in the raw codes, units and scales of
configs/sources/synthetic.yaml, then damaged the way real exports are, with every defect logged.

Rendering (not logged: values keep their meaning) writes categories as any accepted code of the source YAML
(``F``, ``female``, ``2``, `` Woman ``...), weight and height in the site's units, and scores on the site's scale
(MADRS -> HAM-D17 -> QIDS-SR16 by the inverse of configs/scale_conversions.yaml, plus rating noise).

Defects come after rendering, in pipeline/synthesize/defects.py; the columns both work on are
pipeline/synthesize/columns.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.errors import ConfigError
from pipeline.scales import ScaleConversions
from pipeline.sources.spec import TabularSourceSpec
from pipeline.synthesize.columns import Column, TextColumn, level_index, to_frame
from pipeline.synthesize.params import SynthesizeParams

# The export's columns in file order; export_layout() checks that the source YAML describes exactly these.
EXPORT_COLUMNS: tuple[str, ...] = (
    "patient_ref",
    "updated_at",
    "site",
    "age_years",
    "sex",
    "weight",
    "weight_unit",
    "height",
    "height_unit",
    "bmi",
    "failed_ad_trials",
    "anxious_depression",
    "ptsd",
    "suicide_attempt_lifetime",
    "psych_hosp_prior",
    "fh_aud",
    "prior_ect",
    "bzd_mg_deq",
    "crp_mg_l",
    "si_current",
    "htn",
    "bp_sys_pre",
    "bp_dia_pre",
    "postpartum_onset",
    "gad7_baseline",
    "route",
    "dose",
    "n_sessions",
    "psychotherapy",
    "scale",
    "score_baseline",
    "score_24h",
    "score_acute",
    "score_end",
    "score_week8",
    "cadss_peak_first",
    "sbp_rise_first",
    "dbp_rise_first",
    "gad7_end",
)
UNIT_SYSTEMS = ("metric", "imperial")  # a site's units; WEIGHT_UNITS and HEIGHT_UNITS are indexed alike
WEIGHT_UNITS = ("kg", "lb")
HEIGHT_UNITS = ("cm", "in")
HEIGHT_CM_RANGE = (140.0, 210.0)


@dataclass(frozen=True)
class ExportLayout:
    """What the generator needs from the source YAML, keyed by raw column."""

    id_column: str
    updated_at_column: str
    site_column: str
    numeric: Mapping[str, str]  # raw -> canonical
    coded: Mapping[str, tuple[str, Mapping[str, tuple[str, ...]]]]  # raw -> (canonical, level -> accepted codes)
    boolean: Mapping[str, str]  # raw -> canonical
    boolean_codes: Mapping[str, tuple[str, ...]]  # "true"/"false" -> accepted codes
    weight: tuple[str, str, Mapping[str, float]]  # value column, unit column, unit -> kg
    height: tuple[str, str, Mapping[str, float]]  # value column, unit column, unit -> m
    scale_column: str
    scale_codes: Mapping[str, tuple[str, ...]]
    scores: Mapping[str, str]  # raw -> canonical MADRS column

    def raw_name(self, canonical: str) -> str:
        for raw, name in {**self.numeric, **self.scores}.items():
            if name == canonical:
                return raw
        raise KeyError(canonical)


def export_layout(spec: TabularSourceSpec) -> ExportLayout:
    """Read the export contract; a ConfigError if it describes columns or units the generator cannot write."""
    where = f"configs/sources/{spec.name}.yaml"
    if spec.body_size is None or spec.depression_scores is None or spec.updated_at_column is None:
        raise ConfigError(f"{where} must describe body_size, depression_scores and updated_at_column")
    site_columns = [raw for raw, m in spec.categorical.items() if m.passthrough and m.canonical == "site"]
    coded = {
        raw: (m.canonical, {k: tuple(v) for k, v in m.codes.items()}) for raw, m in spec.categorical.items() if m.codes
    }
    body = spec.body_size
    described = {*spec.raw_to_canonical(), *spec.helper_columns()}
    only_yaml, only_generator = sorted(described - set(EXPORT_COLUMNS)), sorted(set(EXPORT_COLUMNS) - described)
    if only_yaml or only_generator or len(site_columns) != 1:
        raise ConfigError(
            f"{where} and the synthetic generator disagree on the export columns: only in the YAML {only_yaml}, "
            f"only in the generator {only_generator} (and exactly one passthrough site column is needed)",
            hint="update pipeline/synthesize/export.py together with the source YAML",
        )
    needed_units = {"weight": set(WEIGHT_UNITS), "height": set(HEIGHT_UNITS)}
    for what, units in needed_units.items():
        missing = units - set(getattr(body, what).units)
        if missing:
            raise ConfigError(f"{where}: body_size.{what}.units lacks {sorted(missing)}, which the generator writes")
    scores = spec.depression_scores
    return ExportLayout(
        id_column=spec.id_column,
        updated_at_column=spec.updated_at_column,
        site_column=site_columns[0],
        numeric=dict(spec.numeric),
        coded=coded,
        boolean=dict(spec.boolean),
        boolean_codes={k: tuple(v) for k, v in (spec.boolean_codes or {}).items()},
        weight=(body.weight.column, body.weight.unit_column, dict(body.weight.units)),
        height=(body.height.column, body.height.unit_column, dict(body.height.units)),
        scale_column=scores.scale_column,
        scale_codes={k: tuple(v) for k, v in scores.scale_codes.items()},
        scores=dict(scores.columns),
    )


# --- rendering ------------------------------------------------------------------------------------------------


def normalised_code(code: str) -> str:
    return code.strip().casefold()  # the cleaner's comparison: case-insensitive, surrounding spaces ignored


def code_variants(codes: tuple[str, ...]) -> tuple[str, ...]:
    """Accepted spellings of one level: the first code, then every code in other cases, then a padded one."""
    spelled = [f(code) for code in codes for f in (str, str.lower, str.upper, str.title)]
    return tuple(dict.fromkeys([codes[0], *spelled, f" {codes[0]} "]))


def _encode(
    level_of_row: np.ndarray, codes: Mapping[str, tuple[str, ...]], variant_rate: float, rng: np.random.Generator
) -> TextColumn:
    """Write each level as its first code, or with probability ``variant_rate`` as another accepted spelling."""
    variants = [code_variants(level_codes) for level_codes in codes.values()]
    offsets = np.cumsum([0, *(len(v) for v in variants)])[:-1]
    sizes = np.array([len(v) for v in variants])
    is_variant = rng.random(level_of_row.size) < variant_rate
    pick = rng.random(level_of_row.size)
    size = sizes[level_of_row]
    other = 1 + np.floor(pick * (size - 1)).astype(np.int64)  # any spelling but the first
    chosen = np.where(is_variant & (size > 1), other, 0)
    return TextColumn.from_choices(offsets[level_of_row] + chosen, [v for level in variants for v in level])


def render(
    truth: pd.DataFrame,
    params: SynthesizeParams,
    layout: ExportLayout,
    scales: ScaleConversions,
    rng: np.random.Generator,
) -> dict[str, Column]:
    """One export row per truth row, every value clean but in the site's codes, units and scale."""
    n = len(truth)
    export = params.export
    date_rng, code_rng, body_rng, score_rng = rng.spawn(4)
    site_names = [s.name for s in params.sites]
    span = (export.last_update - export.first_update).days
    days = np.datetime64(export.first_update, "D") + np.arange(span + 1).astype("timedelta64[D]")
    columns: dict[str, Column] = {
        layout.id_column: TextColumn(np.arange(n, dtype=np.int32), pa.array(truth["patient_id"], type=pa.string())),
        layout.updated_at_column: TextColumn.from_choices(
            date_rng.integers(0, span + 1, size=n), np.datetime_as_string(days, unit="D")
        ),
        layout.site_column: TextColumn.from_choices(level_index(truth["site"], site_names), site_names),
    }
    for raw, canonical in layout.numeric.items():
        columns[raw] = truth[canonical].to_numpy(dtype="float64", copy=True)  # defects write into it
    for raw, (canonical, codes) in layout.coded.items():
        columns[raw] = _encode(level_index(truth[canonical], list(codes)), codes, export.code_variant, code_rng)
    boolean_levels = list(layout.boolean_codes)
    for raw, canonical in layout.boolean.items():
        level = np.where(
            truth[canonical].to_numpy(dtype=bool), boolean_levels.index("true"), boolean_levels.index("false")
        )
        columns[raw] = _encode(level, layout.boolean_codes, export.code_variant, code_rng)
    columns.update(_body_size(truth, params, layout, body_rng))
    scale_index = level_index(truth["madrs_source_scale"], list(layout.scale_codes))
    columns[layout.scale_column] = _encode(scale_index, layout.scale_codes, export.code_variant, code_rng)
    scale = np.array(list(layout.scale_codes), dtype=object)[scale_index]
    for raw, canonical in layout.scores.items():
        madrs = truth[canonical].to_numpy(dtype="float64")
        columns[raw] = _recorded_scores(madrs, scale, scales, export.score_noise_sd, score_rng)
    return {name: columns[name] for name in EXPORT_COLUMNS}


def _body_size(
    truth: pd.DataFrame, params: SynthesizeParams, layout: ExportLayout, rng: np.random.Generator
) -> dict[str, Column]:
    """Weight and height in the site's units, consistent with the true BMI (derived BMI within 0.1 of it)."""
    heights = params.cohort.height_cm
    female = (truth["sex"] == "F").to_numpy()
    mean = np.where(female, heights.female, heights.male)
    height_m = np.clip(mean + heights.sd * rng.standard_normal(len(truth)), *HEIGHT_CM_RANGE) / 100.0
    weight_kg = truth["bmi"].to_numpy(dtype="float64") * height_m**2
    site_system = [UNIT_SYSTEMS.index(s.units) for s in params.sites]
    system = np.array(site_system)[level_index(truth["site"], [s.name for s in params.sites])]
    weight_col, weight_unit_col, to_kg = layout.weight
    height_col, height_unit_col, to_m = layout.height
    return {
        weight_col: np.round(weight_kg / np.array([to_kg[u] for u in WEIGHT_UNITS])[system], 1),
        weight_unit_col: TextColumn.from_choices(system, WEIGHT_UNITS),
        height_col: np.round(height_m / np.array([to_m[u] for u in HEIGHT_UNITS])[system], 1),
        height_unit_col: TextColumn.from_choices(system, HEIGHT_UNITS),
    }


def _recorded_scores(
    madrs: np.ndarray, scale: np.ndarray, scales: ScaleConversions, noise_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Scores as the site records them: MADRS as is; other scales by inverse linking plus rating noise."""
    noise = rng.standard_normal(madrs.size) * noise_sd
    recorded = madrs.copy()
    for name, (low, high) in scales.ranges.items():
        rows = scale == name
        if name == scales.target or not rows.any():
            continue
        converted = scales.madrs_to(madrs[rows], name) + noise[rows]
        recorded[rows] = np.clip(np.floor(converted + 0.5), low, high)
    return recorded


def render_clean_export(
    truth: pd.DataFrame,
    params: SynthesizeParams,
    spec: TabularSourceSpec,
    scales: ScaleConversions,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The export before any defect: one row per truth row, in truth order (the reference the log refers to)."""
    return to_frame(render(truth, params, export_layout(spec), scales, rng))
