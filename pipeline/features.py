"""Feature building shared by training, evaluation, explanation and scoring.

Canonical cohort rows become an all-float64 matrix: numbers as they are, yes/no flags as 0/1, categories
one-hot over the contract's fixed levels (so every file gets the same columns), missing as NaN (the models
impute or handle it natively). The :class:`FeatureSpec` is saved inside the model, so scoring rebuilds
exactly the training features without reading params.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pipeline.contract import ColumnSpec
from pipeline.errors import ConfigError, PipelineError

LEVEL_SEPARATOR = "="  # one-hot feature names read as "route=oral"


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
