"""The canonical cohort contract: one YAML file, loaded and checked here, used everywhere.

``load_contract()`` returns a :class:`CohortContract`; ``contract.pandera_schema()`` validates a cohort frame
strictly at a stage boundary; ``contract.empty_frame()`` gives the typed, empty canonical frame adapters fill.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import pandas as pd
import pandera.pandas as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.paths import ProjectPaths
from pipeline.scales import load_scale_conversions

Dtype = Literal["string", "category", "float", "int", "bool"]
Role = Literal["identifier", "metadata", "baseline_predictor", "early_predictor", "outcome", "provenance"]
Timing = Literal["baseline", "first_dose", "acute", "end_of_induction", "week8"]

TIMING_ORDER: tuple[Timing, ...] = ("baseline", "first_dose", "acute", "end_of_induction", "week8")
PREDICTOR_ROLES: frozenset[str] = frozenset({"baseline_predictor", "early_predictor"})
SCORE_UNIT = "MADRS points"  # the unit that marks a column as a depression score (see ColumnSpec.is_score)

# pandas dtypes of the canonical frame: nullable everywhere, so missing stays missing until the model.
PANDAS_DTYPE: dict[str, str] = {
    "string": "string",
    "category": "string",
    "float": "float64",
    "int": "Int64",
    "bool": "boolean",
}


class ColumnSpec(BaseModel):
    """One canonical column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    dtype: Dtype
    role: Role
    description: str = Field(min_length=5)
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    levels: tuple[str, ...] | None = None
    # levels listed elsewhere, merged in by load_contract: "sources" = one per configs/sources/<name>.yaml,
    # "scales" = the scales of configs/scale_conversions.yaml (so adding either needs no edit here)
    levels_from: Literal["sources", "scales"] | None = None
    aliases: dict[str, tuple[str, ...]] | None = None
    timing: Timing | None = None
    nullable: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ColumnSpec:
        if self.dtype == "category" and not self.levels:
            raise ValueError(f"column {self.name}: a category needs 'levels'")
        if self.levels_from is not None and self.dtype != "category":
            raise ValueError(f"column {self.name}: only category columns take 'levels_from'")
        if self.levels is not None and self.dtype != "category":
            raise ValueError(f"column {self.name}: only category columns take 'levels'")
        if self.levels is not None and len(set(self.levels)) != len(self.levels):
            raise ValueError(f"column {self.name}: duplicate levels")
        if self.aliases and not set(self.aliases) <= set(self.levels or ()):
            raise ValueError(f"column {self.name}: aliases must be keyed by its levels")
        numeric = self.dtype in ("float", "int")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"column {self.name}: min/max only apply to numeric columns")
        if numeric and (self.min is None or self.max is None):
            raise ValueError(f"column {self.name}: numeric columns need both min and max")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"column {self.name}: min {self.min} must be below max {self.max}")
        if self.role in PREDICTOR_ROLES | {"outcome"} and self.timing is None:
            raise ValueError(f"column {self.name}: predictors and outcomes need a 'timing'")
        if self.role == "baseline_predictor" and self.timing != "baseline":
            raise ValueError(f"column {self.name}: a baseline predictor must have timing 'baseline'")
        if self.role == "early_predictor" and self.timing != "first_dose":
            raise ValueError(f"column {self.name}: an early predictor must have timing 'first_dose'")
        # first_dose: events of the first session itself (a blood-pressure event); tasks predict them at baseline
        if self.role == "outcome" and self.timing == "baseline":
            raise ValueError(f"column {self.name}: an outcome cannot be known at '{self.timing}'")
        return self

    @property
    def is_score(self) -> bool:
        """A depression score in MADRS points: recorded on some scale, range-checked on it, converted onto MADRS."""
        return self.unit == SCORE_UNIT

    @property
    def pandas_dtype(self) -> str:
        return PANDAS_DTYPE[self.dtype]

    def accepted_codes(self) -> dict[str, list[str]]:
        """Each level with the spellings canonical inputs may use for it (the level itself and its aliases)."""
        aliases = self.aliases or {}
        return {level: [level, *aliases.get(level, ())] for level in self.levels or ()}


class CohortContract(BaseModel):
    """The whole contract, with lookups by name and role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    timings: tuple[Timing, ...]
    roles: tuple[Role, ...]
    columns: tuple[ColumnSpec, ...]

    @model_validator(mode="after")
    def _unique(self) -> CohortContract:
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate column names: {duplicates}")
        if tuple(self.timings) != TIMING_ORDER:
            raise ValueError(f"timings must be exactly {list(TIMING_ORDER)} in clinical order")
        if "patient_id" not in names or "cohort" not in names:
            raise ValueError("the contract needs 'patient_id' and 'cohort' columns")
        return self

    @cached_property
    def by_name(self) -> dict[str, ColumnSpec]:
        return {c.name: c for c in self.columns}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise ConfigError(f"'{name}' is not a canonical column", hint="see configs/cohort_schema.yaml") from None

    def with_role(self, *roles: str) -> list[ColumnSpec]:
        return [c for c in self.columns if c.role in roles]

    def predictors_up_to(self, timing: Timing) -> list[ColumnSpec]:
        """Predictor columns measured at or before ``timing``: the leakage rule in one place."""
        cutoff = TIMING_ORDER.index(timing)
        return [
            c
            for c in self.columns
            if c.role in PREDICTOR_ROLES and c.timing is not None and TIMING_ORDER.index(c.timing) <= cutoff
        ]

    def empty_frame(self, n_rows: int = 0) -> pd.DataFrame:
        """A canonical frame of ``n_rows`` all-missing rows with the contract's dtypes."""
        return pd.DataFrame({c.name: pd.Series([None] * n_rows, dtype=c.pandas_dtype) for c in self.columns})

    def coerce(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Order columns as in the contract and cast to its dtypes (values are not range-checked here)."""
        missing = [n for n in self.names if n not in frame.columns]
        if missing:
            raise ConfigError(f"canonical frame lacks columns {missing}")
        return frame[self.names].astype({c.name: c.pandas_dtype for c in self.columns})

    def pandera_schema(self, *, unique_ids: bool = True) -> pa.DataFrameSchema:
        """A strict schema: exact columns in order, dtypes, ranges, levels, nullability, unique ids per cohort."""
        columns = {}
        for c in self.columns:
            checks = []
            if c.min is not None and c.max is not None:
                checks.append(pa.Check.in_range(c.min, c.max))
            if c.levels:
                checks.append(pa.Check.isin(list(c.levels)))
            columns[c.name] = pa.Column(c.pandas_dtype, checks=checks, nullable=c.nullable)
        return pa.DataFrameSchema(
            columns,
            strict=True,
            ordered=True,
            coerce=True,
            unique=["cohort", "patient_id"] if unique_ids else None,
            name="canonical_cohort",
        )


# canonical.yaml is the scorer's default input layout, not a cohort (its rows are scoring input)
SCORING_LAYOUT_NAME = "canonical"


def cohort_source_names(folder: Path) -> list[str]:
    """The cohorts configured in a configs/sources folder (one per <name>.yaml; the scoring layout is not one)."""
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != SCORING_LAYOUT_NAME)


def load_contract(path: Path | None = None) -> CohortContract:
    """Read and check ``configs/cohort_schema.yaml``; a broken file is a ConfigError naming it."""
    if path is None:
        path = ProjectPaths.discover().cohort_schema
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("cohort contract not found", file=path, hint="restore configs/cohort_schema.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path) from None
    try:
        return CohortContract.model_validate(_with_derived_levels(raw, Path(path)))
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc), file=path) from None


def _with_derived_levels(raw: object, path: Path) -> object:
    """The contract with ``levels_from`` resolved: source names and scale names come from their own configs
    (beside the contract: ``sources/`` and ``scale_conversions.yaml``), listed levels are added after them."""
    if not isinstance(raw, dict) or not isinstance(raw.get("columns"), list):
        return raw  # pydantic reports the shape
    columns = []
    for column in raw["columns"]:
        origin = column.get("levels_from") if isinstance(column, dict) else None
        if origin == "sources":
            folder = path.parent / "sources"
            if not folder.is_dir():
                raise ConfigError(
                    f"column {column.get('name')}: levels_from sources, but {folder} is not a folder", file=path
                )
            derived = cohort_source_names(folder)
        elif origin == "scales":
            derived = load_scale_conversions(path.parent / "scale_conversions.yaml").names
        else:
            columns.append(column)
            continue
        listed = [level for level in column.get("levels") or () if level not in derived]
        columns.append({**column, "levels": [*derived, *listed]})
    return {**raw, "columns": columns}


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)
