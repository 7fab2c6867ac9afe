"""Shared types, constants and params of the explain stage (the bottom floor its modules import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.features import FeatureSpec
from pipeline.params import Frozen
from pipeline.synthesize.planted import PlantedTruth

PARAMS_USED = ("base.seed", "tasks.{task}", "explain")
OUTPUT_FOLDER = "explain"  # reports/<task>/explain/, the stage's identifier-free DVC out
PER_PATIENT_FOLDER = Path("data") / "explanations"  # data/explanations/<task>/, the out with patient ids
PER_PATIENT_FILE = "shap.parquet"
SYNTHETIC_COHORT = "synthetic"
SHAP_PREFIX = "shap_"  # per-patient value columns: shap_<canonical feature>
LOG_ODDS = "SHAP value (log-odds)"  # every figure carries this phrase in a title or an axis label

# XGBoost sums float32 leaf values (about 1e-7 relative error per tree), the other paths are float64: 1e-4
# log-odds is far below anything a reader could see and far above rounding for thousands of trees
ADDITIVITY_TOLERANCE = 1e-4
WATERFALL_MAX_DISPLAY = 10  # the rest are summed into one bar, as shap does
DEPENDENCE_BINS = 10  # equal-count bins of the binned-mean line on numeric dependence plots

# the role of each feature in the fidelity checks (sign_checks.csv, the fidelity figure)
ROLE_EFFECT = "planted effect"
ROLE_NOISE = "noise (planted 0)"
ROLE_EXCLUDED = "excluded (explain.fidelity_exclude)"
ROLE_NOT_COVERED = "not in the planted truth"


class ExplainParams(Frozen):
    figure_rows: int = Field(
        ge=50, le=200_000, description="Seeded sample of test rows drawn in the beeswarm and dependence plots."
    )
    example_patients: int = Field(
        ge=0, le=20, description="Waterfall plots: one seeded patient per equal-count band of predicted probability."
    )
    dependence_top_k: int = Field(
        ge=0, le=50, description="Dependence plots for the features with largest mean |SHAP|."
    )
    sign_min_rows: int = Field(
        ge=2, description="Fewest rows with a value (or at a level, and at its reference) for a sign check."
    )
    fidelity_exclude: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Task -> canonical features whose planted effect is not their truth there."
    )


@dataclass(frozen=True)
class PlantedReference:
    """The planted truth to check a task's explanations against, or why there is none."""

    truth: PlantedTruth | None
    reason: str | None = None
    # per test row (positional), each planted feature's true contribution to the log-odds; None: not available
    true_values: pd.DataFrame | None = None


@dataclass(frozen=True)
class Fidelity:
    metrics: dict[str, float]  # numbers only -> fidelity.json 'fidelity'
    roles: pd.DataFrame  # per canonical feature: role, planted importance, ranks among compared features
    signs: pd.DataFrame  # one row per planted predictor (feature, or level of a category)
    report: dict[str, Any]


@dataclass
class Explanation:
    """Everything the stage writes, before anything is written."""

    task: str
    candidate: str
    spec: FeatureSpec
    values: pd.DataFrame  # every test row x canonical columns (positional index = test row)
    base_value: np.ndarray
    features: pd.DataFrame  # the feature matrix the values explain (positional index = test row)
    probability: np.ndarray  # the reported (calibrated) probability
    importance: pd.DataFrame  # global table -> importance.csv
    fidelity: Fidelity | None
    truth: PlantedTruth | None
    sample_rows: np.ndarray  # test rows drawn in the beeswarm and dependence plots
    example_rows: np.ndarray  # test rows with a waterfall plot
    dependence_features: list[str]
    metrics: dict[str, Any]  # -> fidelity.json (numbers only)
    report: dict[str, Any]  # -> explanation.json
    per_patient: pd.DataFrame  # -> data/explanations/<task>/shap.parquet (with patient_id)
    seed: int
