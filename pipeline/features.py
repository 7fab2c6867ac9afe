"""Feature building shared by training, evaluation, explanation and scoring.

Canonical cohort rows become an all-float64 matrix: numbers as they are, yes/no flags as 0/1, categories
one-hot over the contract's fixed levels (so every file gets the same columns), missing as NaN (the models
impute or handle it natively). The :class:`FeatureSpec` is saved inside the model, so scoring rebuilds
exactly the training features without reading params.yaml.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipeline.contract import ColumnSpec
from pipeline.errors import ConfigError, PipelineError

LEVEL_SEPARATOR = "="  # one-hot feature names read as "route=oral"
RANGE_SEPARATOR = ","  # outside_training_range reads "bmi,crp_mg_l"


class FeatureColumn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # canonical column
    kind: Literal["numeric", "binary", "categorical"]
    levels: tuple[str, ...] = ()
    unit: str | None = None

    @property
    def feature_names(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}{LEVEL_SEPARATOR}{level}" for level in self.levels]
        return [self.name]


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    target: str
    columns: tuple[FeatureColumn, ...]

    @classmethod
    def from_columns(cls, task: str, target: str, columns: list[ColumnSpec]) -> FeatureSpec:
        kinds = {"float": "numeric", "int": "numeric", "bool": "binary", "category": "categorical"}
        feature_columns = []
        for col in columns:
            if col.dtype not in kinds:
                raise ConfigError(f"column '{col.name}' of type {col.dtype} cannot be a feature")
            feature_columns.append(
                FeatureColumn(name=col.name, kind=kinds[col.dtype], levels=col.levels or (), unit=col.unit)
            )
        return cls(task=task, target=target, columns=tuple(feature_columns))

    @property
    def input_columns(self) -> list[str]:
        """Canonical columns the features need."""
        return [c.name for c in self.columns]

    @property
    def feature_names(self) -> list[str]:
        return [name for c in self.columns for name in c.feature_names]

    def feature_to_column(self) -> dict[str, str]:
        """Feature name -> canonical column (one-hot levels map back to their category)."""
        return {name: c.name for c in self.columns for name in c.feature_names}

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def build_features(cohort: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Canonical rows -> float64 feature matrix with ``spec.feature_names`` columns, in order."""
    missing = [c for c in spec.input_columns if c not in cohort.columns]
    if missing:
        raise PipelineError(
            f"the model needs column(s) the input lacks: {', '.join(missing)}",
            column=missing[0],
            hint="add them to the input (they may be empty), or score with a model for another task",
        )
    blocks: dict[str, np.ndarray] = {}
    for col in spec.columns:
        values = cohort[col.name]
        if col.kind == "numeric":
            blocks[col.name] = pd.to_numeric(values, errors="raise").to_numpy(dtype="float64", na_value=np.nan)
        elif col.kind == "binary":
            blocks[col.name] = values.astype("boolean").astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
        else:
            text = values.astype("string")
            known = text.isna().to_numpy()
            for level in col.levels:
                hot = (text == level).to_numpy(dtype="float64", na_value=np.nan)
                hot[known] = np.nan  # a missing category is missing in every one-hot column
                blocks[f"{col.name}{LEVEL_SEPARATOR}{level}"] = hot
    return pd.DataFrame(blocks, index=cohort.index, columns=spec.feature_names)


def build_target(cohort: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The task's target as 0/1 integers; rows must already be filtered to a known target."""
    target = cohort[spec.target]
    if target.isna().any():
        raise PipelineError(f"target '{spec.target}' has missing values; filter to known outcomes first")
    return target.astype(bool).to_numpy(dtype="int64")


# --------------------------------------------------------------------------------------------------------------
# applicability: the least data a score needs, and the training ranges
# --------------------------------------------------------------------------------------------------------------


class ScoringRule(BaseModel):
    """The least data a row needs for a score (``tasks.<task>.scoring`` in params.yaml, stored in the model).

    A row is rejected (``insufficient_data``) when a required predictor is missing, or when more than
    ``floor(max_missing_fraction * n)`` of the model's n predictors are missing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    required_predictors: tuple[str, ...] = Field(default=(), description="Predictors without which no score.")
    max_missing_fraction: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Largest share of the model's predictors that may be missing."
    )

    def max_missing(self, n_predictors: int) -> int:
        return math.floor(self.max_missing_fraction * n_predictors + 1e-9)  # 0.29 * 100 is 28.999...


# Models saved before the rule was stored get this one: at most half of the predictors missing.
FALLBACK_SCORING_RULE = ScoringRule()


@dataclass(frozen=True)
class Insufficient:
    """Rows below a :class:`ScoringRule`: a mask over the rows, and for the rejected ones (in order) a message
    naming the missing predictors (never a value) and the first missing required predictor (or None)."""

    mask: np.ndarray
    messages: np.ndarray
    columns: np.ndarray


def insufficient_data(cohort: pd.DataFrame, columns: list[str], rule: ScoringRule) -> Insufficient:
    """Which canonical rows have too little data for a score under ``rule`` (``columns``: the model's predictors)."""
    missing = cohort[columns].isna().to_numpy()
    n_missing = missing.sum(axis=1)
    limit = rule.max_missing(len(columns))
    required = [columns.index(c) for c in rule.required_predictors if c in columns]
    mask = (n_missing > limit) | missing[:, required].any(axis=1)
    # one message per pattern of missing predictors (few distinct patterns, however many rows)
    patterns, inverse = np.unique(missing[mask], axis=0, return_inverse=True)
    names = np.array(columns, dtype=object)
    messages, firsts = [], []
    for pattern in patterns:
        absent_required = [columns[i] for i in required if pattern[i]]
        parts = []
        if absent_required:
            parts.append(f"required predictor(s) missing: {', '.join(absent_required)}")
        parts.append(
            f"{int(pattern.sum())} of {len(columns)} predictors missing (max {limit}): {', '.join(names[pattern])}"
        )
        messages.append("not enough data for a score: " + "; ".join(parts) + "; fill them in and score the row again")
        firsts.append(absent_required[0] if absent_required else None)
    inverse = np.asarray(inverse).reshape(-1)
    return Insufficient(
        mask=mask,
        messages=np.array(messages, dtype=object)[inverse] if len(inverse) else np.empty(0, dtype=object),
        columns=np.array(firsts, dtype=object)[inverse] if len(inverse) else np.empty(0, dtype=object),
    )


def training_ranges(features: pd.DataFrame, spec: FeatureSpec) -> dict[str, tuple[float, float]]:
    """[min, max] of each numeric predictor in the training features (columns never observed are left out)."""
    ranges = {}
    for col in spec.columns:
        values = features[col.name].to_numpy(dtype="float64") if col.kind == "numeric" else np.empty(0)
        if col.kind == "numeric" and not np.isnan(values).all():
            ranges[col.name] = (float(np.nanmin(values)), float(np.nanmax(values)))
    return ranges


def outside_training_range(features: pd.DataFrame, ranges: dict[str, tuple[float, float]] | None) -> pd.Series:
    """Per row, the comma-separated numeric predictors whose value lies outside the training [min, max] ("" when
    none; missing for every row when the model stores no ranges)."""
    if ranges is None:
        return pd.Series(pd.NA, index=features.index, dtype="string")
    text = np.full(len(features), "", dtype=object)
    for name, (low, high) in ranges.items():
        values = features[name].to_numpy(dtype="float64")
        hit = (values < low) | (values > high)  # NaN compares False: a missing value is not out of range
        if hit.any():  # usually rare: only the flagged rows are touched
            text[hit] = [f"{t}{RANGE_SEPARATOR}{name}" if t else name for t in text[hit]]
    return pd.Series(text, index=features.index, dtype="string")
