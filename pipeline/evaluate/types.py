"""Shared types, constants and params of the evaluate stage (the bottom floor its modules import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from pipeline import metrics
from pipeline.params import Frozen

PARAMS_USED = ("base.seed", "tasks.{task}", "evaluate")
AGE_BAND = "age_band"  # derived subgroup column: age cut at evaluate.subgroups.age_bands
CHAMPION = "champion"
ORACLE = "oracle"
ORACLE_PREDICTORS = "oracle_predictors"
OUTPUT_FOLDER = "evaluation"  # reports/<task>/evaluation/, the stage's one DVC out

# Intervals computed for the champion only (see model_performance); candidates get AUROC and AUPRC intervals.
CHAMPION_ONLY_INTERVALS = frozenset(
    f"{metric}_{bound}"
    for metric in ("brier", "scaled_brier", "calibration_in_the_large", "calibration_slope")
    for bound in ("lower", "upper")
)

# How each candidate family (pipeline/train.py make_estimator) treats a missing feature at prediction time.
TREE_CANDIDATES = {"xgboost": "XGBoost", "hist_gb": "histogram gradient boosting"}
IMPUTING_CANDIDATES = {"logreg": "logistic regression", "logreg_spline": "spline logistic regression"}

# Events below which an external validation is called a sanity check: the usual minimum for validation studies
# (Vergouwe et al. J Clin Epidemiol 2005; Collins, Ogundimu & Altman, Stat Med 2016; docs/literature.md §7b).
EXTERNAL_VALIDATION_EVENTS = 100

# metrics.subgroup_table's columns (the empty table of a model without a test split keeps them)
SUBGROUP_COLUMNS = (
    "group", "level", "n", "events", "event_rate", "mean_predicted", "auroc", "o_minus_e", "o_e_ratio",
    "event_rate_ratio", "auroc_ratio", "suppressed", "suppression_reason",
)  # fmt: skip

NO_TEST_SPLIT = "no held-out test split (small-cohort protocol: every patient trained; see the internal validation)"


class DecisionCurveParams(Frozen):
    start: float = Field(gt=0.0, lt=1.0, description="Lowest threshold probability on the decision curve.")
    stop: float = Field(gt=0.0, lt=1.0, description="Highest threshold probability (inclusive).")
    step: float = Field(gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> DecisionCurveParams:
        if not self.start < self.stop:
            raise ValueError("decision_curve: start must be below stop")
        return self

    def grid(self) -> np.ndarray:
        count = round((self.stop - self.start) / self.step) + 1
        return np.round(self.start + self.step * np.arange(count), 6)


class SubgroupParams(Frozen):
    columns: tuple[str, ...] = Field(min_length=1, description="Canonical columns, or 'age_band'.")
    age_bands: tuple[int, ...] = Field(min_length=1, description="Lower edges of the age bands, in years.")
    min_cell: int = Field(default=metrics.DEFAULT_MIN_CELL, ge=1, description="Small-cell suppression threshold.")

    @model_validator(mode="after")
    def _valid(self) -> SubgroupParams:
        if list(self.age_bands) != sorted(set(self.age_bands)):
            raise ValueError("subgroups.age_bands must be strictly increasing")
        if "patient_id" in self.columns:  # its levels would be written out: identifiers never leave data/
            raise ValueError("subgroups.columns cannot include the patient identifier")
        return self


class ExternalOutcomes(Frozen):
    """What the external cohort records beside a task's target (all optional)."""

    continuous: str | None = Field(default=None, description="Percent MADRS change; ranked against p.")
    negative_control: str | None = Field(default=None, description="Binary outcome the model should not predict.")
    negative_control_madrs: str | None = Field(
        default=None, description="MADRS after the control condition; its percent change from baseline is ranked."
    )


class ExternalParams(Frozen):
    cohort: str = Field(min_length=1, description="Value of the 'cohort' column that marks the external patients.")
    outcomes: dict[str, ExternalOutcomes] = Field(default_factory=dict, description="Per task target.")
    min_events_for_interval: int = Field(ge=1, description="Fewer events or non-events: no bootstrap interval.")


class EvaluateParams(Frozen):
    bootstrap_repetitions: int = Field(ge=100, le=100_000)
    confidence_level: float = Field(gt=0.5, lt=1.0)
    calibration_bins: int = Field(ge=2, le=50, description="Equal-count bins of the calibration curve.")
    ece_bins: int = Field(ge=2, le=50, description="Equal-width bins of the expected calibration error.")
    thresholds: tuple[float, ...] = Field(min_length=1, description="Threshold table probabilities.")
    decision_curve: DecisionCurveParams
    subgroups: SubgroupParams
    oracle: dict[str, str] = Field(description="Task -> truth.parquet column: the generating probability.")
    oracle_predictors: dict[str, str] = Field(
        default_factory=dict, description="Task -> truth.parquet column: the probability given its predictors only."
    )
    external: ExternalParams

    @model_validator(mode="after")
    def _thresholds(self) -> EvaluateParams:
        if any(not 0.0 < t < 1.0 for t in self.thresholds) or list(self.thresholds) != sorted(set(self.thresholds)):
            raise ValueError("thresholds must be strictly increasing probabilities in (0, 1)")
        return self


@dataclass(frozen=True)
class Candidate:
    """One candidate's final fit, as saved by the train stage (models/candidates/<task>/)."""

    estimator: Any
    sha256: str
    calibration: str


@dataclass(frozen=True)
class Oracle:
    """The true probabilities of the test patients, or why they are unavailable."""

    column: str | None
    p: np.ndarray | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.p is not None


@dataclass
class Evaluation:
    """Everything the stage writes, before anything is written."""

    task: str
    metrics: dict[str, Any]  # nested numbers only -> metrics.json (DVC metrics, MLflow metrics)
    report: dict[str, Any]  # structure and text -> evaluation.json
    thresholds: pd.DataFrame
    subgroups: pd.DataFrame
    calibration_curves: pd.DataFrame  # every model, long format
    curves: dict[str, dict[str, pd.DataFrame]]  # kind -> model -> points, for plot data and figures
    decision_curves: dict[str, pd.DataFrame]  # champion (with treat-all/none), oracle
    champion_p: np.ndarray
    y: np.ndarray
