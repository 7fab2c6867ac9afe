"""Typed, frozen params: each stage owns a pydantic model of its ``params.yaml`` section.

Typos and out-of-range values fail before any file is written, with the dotted name of the param.
:data:`SECTIONS` names the model of every section in one place (:func:`section_model` imports it by name, so this
bottom module imports no stage), and :func:`validate_params` checks a whole params.yaml at once.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError


class Frozen(BaseModel):
    """Base for every params model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(Frozen):
    """The ``base`` section shared by all stages."""

    seed: int = Field(ge=0, le=2**32 - 1, description="Root seed; each stage derives its own stream from it.")


ParamsT = TypeVar("ParamsT", bound=BaseModel)


def read_params_file(path: Path) -> dict[str, Any]:
    """Parse params.yaml into a dict, with a clear error for a missing or broken file."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("params file not found", file=path, hint="run from the project root") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path) from None
    if not isinstance(raw, dict):
        raise ConfigError("params file must be a mapping of sections", file=path)
    return raw


def parse_section(model: type[ParamsT], raw: dict[str, Any], section: str, file: Path | str) -> ParamsT:
    """Validate ``raw[section]`` against ``model``; errors name ``section.key`` and the bad value."""
    if section not in raw:
        raise ConfigError(f"missing section '{section}'", file=file, hint=f"add a '{section}:' section")
    try:
        return model.model_validate(raw[section])
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, prefix=section), file=file) from None


def load_section(model: type[ParamsT], section: str, params_file: Path) -> ParamsT:
    return parse_section(model, read_params_file(params_file), section, params_file)


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per invalid param: ``section.key: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{loc}: {err['msg']}{shown}")
    return "; ".join(lines)


# section of params.yaml -> "module:Model". Imported by name: the models live beside the code that reads them (and
# several import scikit-learn), while this module stays at the bottom of the import graph.
SECTIONS: dict[str, str] = {
    "base": "pipeline.params:BaseParams",
    "tasks": "pipeline.tasks:TasksParams",
    "synthesize": "pipeline.synthesize.params:SynthesizeParams",
    "clean": "pipeline.clean:CleanParams",
    "split": "pipeline.split:SplitParams",
    "train": "pipeline.modelling.params:TrainParams",
    "evaluate": "pipeline.evaluate.types:EvaluateParams",
    "explain": "pipeline.explain.types:ExplainParams",
    "report": "pipeline.report:ReportParams",
}


def section_model(section: str) -> type[BaseModel]:
    """The params model of ``section`` (a ConfigError for a section no stage reads)."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown params section '{section}'", hint=f"sections: {', '.join(SECTIONS)}")
    module, _, name = SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def validate_params(params_file: Path) -> dict[str, BaseModel]:
    """Every section of ``params_file`` parsed by its model; unknown or missing sections are ConfigErrors."""
    raw = read_params_file(params_file)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}", file=params_file, hint=f"sections: {', '.join(SECTIONS)}")
    return {section: parse_section(section_model(section), raw, section, params_file) for section in SECTIONS}
