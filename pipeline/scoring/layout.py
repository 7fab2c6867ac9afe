"""Input layouts: how the columns of a file given to the scorer map onto the contract's.

The default layout is ``configs/sources/canonical.yaml`` (the contract's own names, units and levels); ``--format
NAME`` reads any other tabular source in ``configs/sources/``, so a clinic's nightly export is scored in the
layout its cohort was cleaned from.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from pipeline.contract import CohortContract
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.paths import ProjectPaths
from pipeline.sources.check import load_tabular_spec
from pipeline.sources.spec import TabularSourceSpec, format_spec_errors, load_yaml_spec, structural_problems

CANONICAL_FORMAT = "canonical"
# the columns a scoring input may carry besides the contract's predictors
EXTRA_CANONICAL = ("patient_id", "site")


def canonical_problems(spec: TabularSourceSpec, contract: CohortContract) -> list[str]:
    """The canonical layout against the contract: every baseline and early predictor under its own name, with the
    contract's levels, and nothing else. ``key: message`` per problem."""
    predictors = {c.name: c for c in contract.with_role("baseline_predictor", "early_predictor")}
    mapped = spec.raw_to_canonical()
    problems = [
        f"{raw}: renamed to {canonical}; the canonical layout keeps the contract's names"
        for raw, canonical in mapped.items()
        if raw != canonical
    ]
    problems += [
        f"{name}: missing; every predictor of configs/cohort_schema.yaml needs a line here"
        for name in predictors
        if name not in mapped.values()
    ]
    problems += [
        f"{name}: not a predictor of configs/cohort_schema.yaml"
        for name in mapped.values()
        if name not in predictors and name not in EXTRA_CANONICAL
    ]
    for raw, categorical in spec.categorical.items():
        column = predictors.get(categorical.canonical)
        levels = set(column.levels or ()) if column is not None else set()
        if column is not None and categorical.codes is not None and set(categorical.codes) != levels:
            problems.append(
                f"categorical.{raw}.codes: levels {sorted(categorical.codes)}, the contract has {sorted(levels)}"
            )
    return problems


def load_canonical_format(path: Path, contract: CohortContract) -> TabularSourceSpec:
    """Read ``configs/sources/canonical.yaml`` and check it against the contract (:func:`canonical_problems`).

    Not through :func:`load_tabular_spec`'s cross-checks: those send depression scores through
    ``depression_scores`` with a scale, whereas canonical input is in MADRS points already and its scores are
    range-checked as the contract's columns (one message per bad value, as since the scorer was written).
    """
    try:
        spec = TabularSourceSpec.model_validate(load_yaml_spec(path))
    except ValidationError as exc:
        raise ConfigError(format_spec_errors(exc, TabularSourceSpec), file=path) from None
    problems = structural_problems(spec) + canonical_problems(spec, contract)
    if spec.name != CANONICAL_FORMAT:
        problems.insert(0, f"name: '{spec.name}', the canonical layout is named '{CANONICAL_FORMAT}'")
    if problems:
        raise ConfigError("; ".join(problems), file=path, hint="make it list the contract's predictors as they are")
    return spec


def input_format(name: str, configs: Path, paths: ProjectPaths | None, contract: CohortContract) -> TabularSourceSpec:
    """The layout called ``name``: the canonical one from ``configs``, any other from the project's sources."""
    if name == CANONICAL_FORMAT:
        return load_canonical_format(configs / "sources" / f"{CANONICAL_FORMAT}.yaml", contract)
    if paths is None:
        raise PipelineError(f"input format '{name}' needs the project's configs/", hint="run inside the project")
    spec_file = paths.sources_dir / f"{name}.yaml"
    if not spec_file.is_file():
        others = sorted(p.stem for p in paths.sources_dir.glob("*.yaml") if p.stem != CANONICAL_FORMAT)
        known = [CANONICAL_FORMAT, *others]
        raise PipelineError(
            f"unknown input format '{name}'", exit_code=ExitCode.USAGE, hint=f"use one of: {', '.join(known)}"
        )
    return load_tabular_spec(spec_file)


def required_columns(spec: TabularSourceSpec, needed: list[str]) -> list[str]:
    """Raw columns the input must have so that every needed canonical column can be filled."""
    canonical_to_raw: dict[str, str] = {}
    for raw, canonical in spec.raw_to_canonical().items():
        canonical_to_raw.setdefault(canonical, raw)
    required = [spec.id_column]
    for column in needed:
        if column in canonical_to_raw:
            required.append(canonical_to_raw[column])
        elif not (column == "bmi" and spec.body_size):
            required.append(column)  # reported as missing, under its canonical name
    scores = spec.depression_scores
    if scores and any(c in scores.columns.values() for c in needed):
        required.append(scores.scale_column)
    return list(dict.fromkeys(required))
