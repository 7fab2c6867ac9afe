"""Declarative description of a tabular cohort export (configs/sources/<name>.yaml, kind: tabular_export).

The YAML maps raw columns onto canonical ones and lists the codes each canonical level accepts, so adding a
clinic's export is writing one of these files. Two layouts: one row per patient (the default), or one row per
patient and visit (``visits:``), which the adapter pivots to one row per patient by the contract's timings.
:func:`pipeline.sources.check.load_tabular_spec` checks the file completely before any data is read: the shape
here (pydantic, unknown keys refused with a suggestion), then the cross-field rules (:func:`structural_problems`)
and, when the project's configs are beside it, every canonical name, level, timing, scale and constant against the
contract and the scale registry (pipeline/sources/check.py). Every mistake is a ConfigError (exit 6) naming the
file and the key.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

DuplicateKey = Literal["completeness", "updated_at", "file_order"]
FILE_KEYS: tuple[str, ...] = ("export",)  # the files a tabular_export reads
BASELINE = "baseline"


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
    """Depression totals and the scale they are on: the whole source (``scale``) or per row (``scale_column``
    with ``scale_codes``). Scale names are those of configs/scale_conversions.yaml."""

    scale: str | None = None
    scale_column: str | None = None
    scale_codes: dict[str, list[str]] = Field(default_factory=dict)  # scale -> the codes the source writes
    # raw score column -> canonical score column; in a long export, raw column -> {timing: canonical column}
    columns: dict[str, str | dict[str, str]] = Field(default_factory=dict)

    def targets(self) -> list[str]:
        out: list[str] = []
        for target in self.columns.values():
            out += [target] if isinstance(target, str) else list(target.values())
        return out


class Visits(_Spec):
    """A long export: ``column`` names each row's visit; ``timings`` maps visit values onto the contract's timings
    (configs/cohort_schema.yaml ``timings``). Other visit values are counted, not used."""

    column: str
    timings: dict[str, str] = Field(min_length=1)
    # raw columns measured at several visits (other than depression scores): raw -> {timing: canonical column}
    measures: dict[str, dict[str, str]] = Field(default_factory=dict)

    @field_validator("timings", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # YAML reads `0: baseline` with an integer key; visit values are compared as text
        if isinstance(value, dict):
            return {str(key): timing for key, timing in value.items()}
        return value


Constant = StrictBool | StrictInt | StrictFloat | StrictStr


class TabularSourceSpec(_Spec):
    name: str
    kind: Literal["tabular_export"]
    description: str
    files: dict[str, str]  # export: path relative to the project root (or absolute)
    id_column: str
    # how the winner among one patient's records is chosen; default: completeness, updated_at (when there is an
    # updated_at_column), file_order
    duplicate_order: list[DuplicateKey] | None = Field(default=None, min_length=1)
    updated_at_column: str | None = None
    numeric: dict[str, str] = Field(default_factory=dict)
    categorical: dict[str, CategoricalMap] = Field(default_factory=dict)
    boolean_codes: dict[Literal["true", "false"], list[str]] | None = None
    boolean: dict[str, str] = Field(default_factory=dict)
    body_size: BodySize | None = None
    depression_scores: DepressionScores | None = None
    # canonical column -> the value every row of this source has (route of a single-route trial, dose, ...),
    # written as a canonical value (level, number, true/false) and checked like any value
    constants: dict[str, Constant] = Field(default_factory=dict)
    visits: Visits | None = None  # set for a long export (one row per patient and visit)
    # the source's own missing-value markers, on top of the shared ones (pipeline/missing.py), e.g. "-99"
    missing_values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _boolean_codes_present(self) -> TabularSourceSpec:
        if self.boolean and not self.boolean_codes:
            raise ValueError("'boolean' columns need 'boolean_codes'")
        return self

    @property
    def is_long(self) -> bool:
        return self.visits is not None

    def effective_duplicate_order(self) -> list[str]:
        if self.duplicate_order is not None:
            return list(self.duplicate_order)
        return ["completeness", *(["updated_at"] if self.updated_at_column else []), "file_order"]

    def raw_to_canonical(self) -> dict[str, str]:
        """Every raw column the spec renames (in a long export: those read from the baseline row), with its
        canonical name."""
        mapping = {self.id_column: "patient_id", **self.numeric, **self.boolean}
        mapping.update({raw: m.canonical for raw, m in self.categorical.items()})
        if self.depression_scores:
            mapping.update({raw: c for raw, c in self.depression_scores.columns.items() if isinstance(c, str)})
        return mapping

    def visit_measures(self) -> dict[str, dict[str, str]]:
        """Long export: raw column -> {timing: canonical column}, depression scores included."""
        measures = {raw: dict(by_timing) for raw, by_timing in (self.visits.measures if self.visits else {}).items()}
        if self.depression_scores:
            for raw, target in self.depression_scores.columns.items():
                if isinstance(target, dict):
                    measures[raw] = dict(target)
        return measures

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
        if self.depression_scores and self.depression_scores.scale_column:
            helpers[self.depression_scores.scale_column] = "score_scale"
        if self.updated_at_column:
            helpers[self.updated_at_column] = "updated_at"
        return helpers

    def targets(self) -> list[tuple[str, str]]:
        """(key in the file, canonical column) for every canonical column the source fills."""
        pairs = [(f"numeric.{raw}", c) for raw, c in self.numeric.items()]
        pairs += [(f"categorical.{raw}.canonical", m.canonical) for raw, m in self.categorical.items()]
        pairs += [(f"boolean.{raw}", c) for raw, c in self.boolean.items()]
        if self.depression_scores:
            for raw, target in self.depression_scores.columns.items():
                if isinstance(target, str):
                    pairs.append((f"depression_scores.columns.{raw}", target))
                else:
                    pairs += [(f"depression_scores.columns.{raw}.{t}", c) for t, c in target.items()]
        if self.visits:
            for raw, by_timing in self.visits.measures.items():
                pairs += [(f"visits.measures.{raw}.{t}", c) for t, c in by_timing.items()]
        pairs += [(f"constants.{name}", name) for name in self.constants]
        return pairs


def structural_problems(spec: TabularSourceSpec) -> list[str]:
    """Rules between keys of one file that need no contract: ``key: message`` per problem."""
    problems = [
        f"files.{key}: unknown file key (did you mean 'export'?); a tabular_export reads one file: "
        "files: {export: <path of the CSV or Parquet file>}"
        for key in spec.files
        if key not in FILE_KEYS
    ]
    problems += _duplicate_order_problems(spec)
    problems += _score_problems(spec)
    problems += _raw_column_problems(spec)
    problems += _layout_problems(spec)
    return problems


def _duplicate_order_problems(spec: TabularSourceSpec) -> list[str]:
    order = spec.duplicate_order or []
    problems = []
    if len(set(order)) != len(order):
        problems.append(f"duplicate_order: {order} repeats a key")
    if "updated_at" in order and not spec.updated_at_column:
        problems.append("duplicate_order: 'updated_at' needs updated_at_column (the raw column with the update time)")
    if "file_order" in order and order[-1] != "file_order":
        problems.append("duplicate_order: 'file_order' must come last (it leaves no tie for a later key)")
    return problems


def _score_problems(spec: TabularSourceSpec) -> list[str]:
    scores = spec.depression_scores
    if scores is None:
        return []
    if (scores.scale is None) == (scores.scale_column is None):
        return [
            "depression_scores: give either 'scale' (the whole source is on one scale) or 'scale_column' "
            "with 'scale_codes' (the scale is named on each row)"
        ]
    if scores.scale_column is not None and not scores.scale_codes:
        return ["depression_scores.scale_codes: needed with scale_column (scale -> the codes written)"]
    if scores.scale is not None and scores.scale_codes:
        return ["depression_scores.scale_codes: only used with scale_column; remove it"]
    return []


def _raw_column_problems(spec: TabularSourceSpec) -> list[str]:
    """A raw column is mapped in one place only (the id and visit columns included)."""
    problems = []
    raw_seen: dict[str, str] = {spec.id_column: "id_column"}
    sections = {
        "numeric": spec.numeric,
        "categorical": spec.categorical,
        "boolean": spec.boolean,
        "depression_scores.columns": spec.depression_scores.columns if spec.depression_scores else {},
        "visits.measures": spec.visits.measures if spec.visits else {},
        "visits.column": [spec.visits.column] if spec.visits else [],
    }
    for section, raws in sections.items():
        for raw in raws:
            key = section if section == "visits.column" else f"{section}.{raw}"
            if raw in raw_seen:
                problems.append(f"{key}: raw column '{raw}' is also mapped under {raw_seen[raw]}")
            raw_seen.setdefault(raw, section)
    return problems


def _layout_problems(spec: TabularSourceSpec) -> list[str]:
    """A per-timing mapping needs a long export; a long export needs a baseline, one scale, per-timing scores."""
    scores = spec.depression_scores
    columns = scores.columns if scores else {}
    if spec.visits is None:
        return [
            f"depression_scores.columns.{raw}: a per-timing mapping needs a long export (visits:); "
            "map the raw column to one canonical column"
            for raw, target in columns.items()
            if not isinstance(target, str)
        ]
    visits = spec.visits
    problems = []
    if BASELINE not in visits.timings.values():
        problems.append(
            f"visits.timings: no visit value is mapped to 'baseline'; every patient's baseline row is needed "
            f"(e.g. '0': baseline); mapped: {dict(visits.timings)}"
        )
    if spec.duplicate_order is not None:
        problems.append(
            "duplicate_order: not used in a long export: repeated rows of one patient and visit are compared "
            "(identical copies are duplicates, differing ones conflict); remove it"
        )
    if scores is not None and scores.scale_column is not None:
        problems.append(
            "depression_scores.scale_column: a long export needs one scale for the whole source: "
            "depression_scores.scale"
        )
    problems += [
        f"depression_scores.columns.{raw}: in a long export map the score per timing, "
        f"e.g. {raw}: {{baseline: madrs_baseline, end_of_induction: madrs_end}}"
        for raw, target in columns.items()
        if isinstance(target, str)
    ]
    mapped = set(visits.timings.values())
    for raw, by_timing in spec.visit_measures().items():
        problems += [
            f"{_measure_key(spec, raw)}.{timing}: no visit value is mapped to '{timing}' in visits.timings"
            for timing in by_timing
            if timing not in mapped
        ]
    return problems


def _measure_key(spec: TabularSourceSpec, raw: str) -> str:
    in_scores = spec.depression_scores is not None and raw in spec.depression_scores.columns
    return f"depression_scores.columns.{raw}" if in_scores else f"visits.measures.{raw}"


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


def parse_tabular_spec(path: Path) -> tuple[TabularSourceSpec, list[str]]:
    """A ``kind: tabular_export`` file's shape (a ConfigError when it does not parse) and its structural problems
    (``key: message`` lines; the caller adds the contract's and raises them together)."""
    path = Path(path)
    try:
        spec = TabularSourceSpec.model_validate(load_yaml_spec(path))
    except ValidationError as exc:
        raise ConfigError(format_spec_errors(exc, TabularSourceSpec), file=path, hint=SPEC_HINT) from None
    problems = []
    if spec.name != path.stem:
        problems.append(
            f"name: '{spec.name}' differs from the file name '{path.stem}' (the name is the cohort level "
            f"and what clean.sources lists): rename one so they match"
        )
    return spec, problems + structural_problems(spec)


def read_tabular_spec(path: Path) -> TabularSourceSpec:
    """The shape and structural checks only, without the contract: for the generator, which writes the export this
    config describes (the clean stage checks the same file against the contract with
    :func:`pipeline.sources.check.load_tabular_spec` before it reads a row)."""
    spec, problems = parse_tabular_spec(path)
    if problems:
        raise ConfigError("; ".join(problems), file=path, hint=SPEC_HINT)
    return spec


SPEC_HINT = "correct the key in the source config (README 'Adding a cohort' lists every key)"


def format_spec_errors(exc: ValidationError, model: type[BaseModel]) -> str:
    """One ``key: message`` per problem; an unknown key names the keys allowed there and the closest one."""
    lines: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["loc"][:1] == ("constants",) and len(err["loc"]) == 3:  # one line, not one per accepted type
            line = f"constants.{err['loc'][1]}: needs a level, a number, true/false or text (got {err.get('input')!r})"
            lines += [] if line in lines else [line]
            continue
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, err["loc"][:-1])
            key = str(err["loc"][-1])
            known = list(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(key, known, n=1)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{loc}: unknown key{guess}; allowed here: {', '.join(known)}")
            continue
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{loc}: {err['msg']}{shown}" if loc else f"{err['msg']}{shown}")
    return "; ".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (dict keys skipped), or None."""
    current: Any = model
    parts = list(loc)
    while parts:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        current, keyed = _unwrap(field.annotation)
        if keyed and parts:
            parts.pop(0)  # the dict key
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found[0] is not None:
                return found
        return None, False
    if origin is dict:
        inner, _ = _unwrap(typing.get_args(annotation)[1])
        return inner, True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False
