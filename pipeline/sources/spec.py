"""Declarative description of a tabular cohort export (configs/sources/<name>.yaml, kind: tabular_export).

The YAML maps raw columns onto canonical ones and lists the codes each canonical level accepts, so adding a
clinic's export is mostly writing one of these files. :func:`harmonise_rules` turns it into the
source-independent rules the shared harmonisation applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.params import format_errors

ScaleName = Literal["madrs", "hamd17", "qids_sr16"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoricalMap(_Spec):
    canonical: str
    codes: dict[str, list[str]] | None = None
    passthrough: bool = False  # free text (e.g. site names): trimmed, not coded

    @model_validator(mode="after")
    def _codes_or_passthrough(self) -> CategoricalMap:
        if self.passthrough == (self.codes is not None):
            raise ValueError(f"{self.canonical}: give either 'codes' or 'passthrough: true'")
        return self


class UnitColumn(_Spec):
    column: str
    unit_column: str
    units: dict[str, float] = Field(min_length=1)  # unit code -> factor to SI (kg, m)


class BodySize(_Spec):
    weight: UnitColumn
    height: UnitColumn


class DepressionScores(_Spec):
    scale_column: str
    scale_codes: dict[ScaleName, list[str]]
    columns: dict[str, str] = Field(min_length=1)  # raw score column -> canonical MADRS column


class TabularSourceSpec(_Spec):
    name: str
    kind: Literal["tabular_export"]
    description: str
    files: dict[str, str]
    id_column: str
    duplicate_order: list[Literal["completeness", "updated_at", "file_order"]]
    updated_at_column: str | None = None
    numeric: dict[str, str] = Field(default_factory=dict)
    categorical: dict[str, CategoricalMap] = Field(default_factory=dict)
    boolean_codes: dict[Literal["true", "false"], list[str]] | None = None
    boolean: dict[str, str] = Field(default_factory=dict)
    body_size: BodySize | None = None
    depression_scores: DepressionScores | None = None

    @model_validator(mode="after")
    def _boolean_codes_present(self) -> TabularSourceSpec:
        if self.boolean and not self.boolean_codes:
            raise ValueError("'boolean' columns need 'boolean_codes'")
        return self

    def raw_to_canonical(self) -> dict[str, str]:
        """Every raw column the spec renames, with its canonical name."""
        mapping = {self.id_column: "patient_id", **self.numeric, **self.boolean}
        mapping.update({raw: m.canonical for raw, m in self.categorical.items()})
        if self.depression_scores:
            mapping.update(self.depression_scores.columns)
        return mapping

    def helper_columns(self) -> dict[str, str]:
        """Raw columns kept under fixed helper names for harmonisation (units, scale, update time)."""
        helpers: dict[str, str] = {}
        if self.body_size:
            helpers.update(
                {
                    self.body_size.weight.column: "weight_raw",
                    self.body_size.weight.unit_column: "weight_unit",
                    self.body_size.height.column: "height_raw",
                    self.body_size.height.unit_column: "height_unit",
                }
            )
        if self.depression_scores:
            helpers[self.depression_scores.scale_column] = "score_scale"
        if self.updated_at_column:
            helpers[self.updated_at_column] = "updated_at"
        return helpers


def load_yaml_spec(path: Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("source description not found", file=path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path) from None
    if not isinstance(raw, dict):
        raise ConfigError("a source description must be a mapping", file=path)
    return raw


def load_tabular_spec(path: Path) -> TabularSourceSpec:
    try:
        return TabularSourceSpec.model_validate(load_yaml_spec(path))
    except ValidationError as exc:
        raise ConfigError(format_errors(exc), file=path) from None
