"""A source config checked against the cohort contract and the scale registry, before any data is read.

Every canonical name a config writes must be a contract column that a source may fill, in the section that suits
its type; levels, timings and scale names must exist; constants must pass the same parsing, code and range checks
as any value. Each problem is one ``key: message`` line naming the key in the file, with the closest valid name
where there is one (a typo otherwise leaves a column silently missing for every row).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from pipeline.contract import TIMING_ORDER, CohortContract, ColumnSpec, load_contract
from pipeline.errors import ConfigError
from pipeline.harmonise import DERIVED_COLUMNS, constant_problems
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.bids_spec import BidsSourceSpec
from pipeline.sources.spec import SPEC_HINT, TabularSourceSpec, parse_tabular_spec

# which section of a tabular config maps each kind of column
_SECTION_FOR = {
    "float": "numeric",
    "int": "numeric",
    "bool": "boolean",
    "category": "categorical (with codes)",
    "string": "categorical (with passthrough: true)",
}


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{found[0]}'?)" if found else ""


def _column(key: str, name: str, contract: CohortContract, source: str, problems: list[str]) -> ColumnSpec | None:
    """The contract column ``name`` if a source may fill it; otherwise a problem is recorded and None returned."""
    if name not in contract.by_name:
        problems.append(
            f"{key}: '{name}' is not a column of the cohort contract (configs/cohort_schema.yaml)"
            f"{closest(name, contract.names)}"
        )
        return None
    if name == "patient_id":
        problems.append(f"{key}: patient_id is filled from id_column")
        return None
    if name == "cohort":
        problems.append(f"{key}: cohort is the source's name ('{source}'), set by the clean stage")
        return None
    if name in DERIVED_COLUMNS:
        problems.append(f"{key}: {name} is derived from {DERIVED_COLUMNS[name]}, never read from a source")
        return None
    return contract.by_name[name]


def contract_problems(spec: TabularSourceSpec, contract: CohortContract, scales: ScaleConversions) -> list[str]:
    """Every problem of a tabular config against the contract and the scale registry, as ``key: message``."""
    problems: list[str] = []
    filled: dict[str, str] = {}
    for key, name in spec.targets():
        column = _column(key, name, contract, spec.name, problems)
        if column is None:
            continue
        if name in filled:
            problems.append(f"{key}: {name} is also filled by {filled[name]}")
        filled.setdefault(name, key)
        section = key.split(".")[0]
        problems += _section_problems(key, section, column, spec)
        problems += _timing_problems(key, column, spec)
    problems += _level_problems(spec, contract)
    problems += _scale_problems(spec, scales)
    if spec.visits is not None:
        for value, timing in spec.visits.timings.items():
            if timing not in TIMING_ORDER:
                problems.append(_not_a_timing(f"visits.timings.{value}", timing))
    fixed = {name: value for name, value in spec.constants.items() if _fillable(name, contract)}
    problems += [f"constants.{column}: {message}" for column, message in constant_problems(fixed, contract, spec.name)]
    return problems


def _fillable(name: str, contract: CohortContract) -> bool:
    return name in contract.by_name and name not in ("patient_id", "cohort") and name not in DERIVED_COLUMNS


def _section_problems(key: str, section: str, column: ColumnSpec, spec: TabularSourceSpec) -> list[str]:
    """The column's type must suit the section that maps it (a depression score only under depression_scores)."""
    name, dtype = column.name, column.dtype
    if section == "depression_scores":
        wrong = None if column.is_score else f"is not a depression score; map it under {_SECTION_FOR[dtype]}"
    elif column.is_score:
        wrong = (
            "is a depression score; a score cannot be the same for every patient"
            if section == "constants"
            else "is a depression score (MADRS points): map it under depression_scores.columns (with the scale it "
            "is recorded on: scale or scale_column)"
        )
    elif section == "visits":
        wrong = None if dtype in ("float", "int") else f"is a {dtype} column; visits.measures takes numbers"
    elif section == "categorical":
        return _categorical_problems(key, column, spec)
    elif section in ("numeric", "boolean"):
        fits = dtype in ("float", "int") if section == "numeric" else dtype == "bool"
        wrong = None if fits else f"is a {dtype} column: map it under {_SECTION_FOR[dtype]}"
    else:
        wrong = None
    return [] if wrong is None else [f"{key}: {name} {wrong}"]


def _categorical_problems(key: str, column: ColumnSpec, spec: TabularSourceSpec) -> list[str]:
    raw = key.split(".")[1]
    mapping = spec.categorical[raw]
    if column.dtype == "category" and mapping.passthrough:
        return [f"categorical.{raw}: {column.name} has levels: list the codes of each level under codes:"]
    if column.dtype == "string" and not mapping.passthrough:
        return [f"categorical.{raw}: {column.name} is free text: use passthrough: true instead of codes"]
    if column.dtype not in ("category", "string"):
        return [f"{key}: {column.name} is a {column.dtype} column: map it under {_SECTION_FOR[column.dtype]}"]
    return []


def _not_a_timing(key: str, timing: str) -> str:
    return (
        f"{key}: '{timing}' is not a timing of the contract ({', '.join(TIMING_ORDER)}){closest(timing, TIMING_ORDER)}"
    )


def _timing_problems(key: str, column: ColumnSpec, spec: TabularSourceSpec) -> list[str]:
    if spec.visits is None or key.startswith("constants."):
        return []
    parts = key.split(".")
    per_visit = (parts[0] == "visits") or (parts[0] == "depression_scores" and len(parts) == 4)
    if per_visit:
        timing = parts[-1]
        if timing not in TIMING_ORDER:
            return [_not_a_timing(key, timing)]
        if column.timing != timing:
            return [f"{key}: {column.name} is measured at '{column.timing}', not at '{timing}'"]
        return []
    if column.timing not in (None, "baseline"):
        return [
            f"{key}: {column.name} is measured at '{column.timing}'; in a long export it is read from the row of "
            f"that visit: map it per timing under visits.measures (scores under depression_scores.columns)"
        ]
    return []


def _level_problems(spec: TabularSourceSpec, contract: CohortContract) -> list[str]:
    problems = []
    for raw, mapping in spec.categorical.items():
        column = contract.by_name.get(mapping.canonical)
        if column is None or not column.levels or mapping.codes is None:
            continue
        for level in mapping.codes:
            if level not in column.levels:
                problems.append(
                    f"categorical.{raw}.codes.{level}: '{level}' is not a level of {column.name} "
                    f"({', '.join(column.levels)}){closest(level, column.levels)}"
                )
    return problems


def _scale_problems(spec: TabularSourceSpec, scales: ScaleConversions) -> list[str]:
    scores = spec.depression_scores
    if scores is None:
        return []
    named = [("depression_scores.scale", scores.scale)] if scores.scale else []
    named += [(f"depression_scores.scale_codes.{name}", name) for name in scores.scale_codes]
    return [
        f"{key}: '{name}' is not a scale of configs/scale_conversions.yaml ({', '.join(scales.names)})"
        f"{closest(name, scales.names)}; a new scale is added there, with its range, response and remission "
        "rules and their sources"
        for key, name in named
        if name not in scales.scales
    ]


def bids_problems(spec: BidsSourceSpec, contract: CohortContract) -> list[str]:
    """The canonical names and constants of a BIDS source file against the contract."""
    problems: list[str] = []
    adapter = spec.adapter
    pairs = [(f"adapter.participants.numeric.{raw}", c) for raw, c in adapter.participants.numeric.items()]
    pairs += [(f"adapter.participants.text.{raw}", c) for raw, c in adapter.participants.text.items()]
    for table in adapter.phenotype:
        for raw, sessions in table.measures.items():
            pairs += [(f"adapter.phenotype.{table.path}.measures.{raw}.{s}", c) for s, c in sessions.items()]
    for key, name in pairs:
        column = _column(key, name, contract, spec.name, problems)
        if column is not None and ".measures." in key and not column.is_score:
            problems.append(f"{key}: {name} is not a depression score (phenotype measures are MADRS totals)")
    for raw, mapping in spec.categorical.items():
        _column(f"categorical.{raw}.canonical", mapping.canonical, contract, spec.name, problems)
    constants = dict(adapter.constants)
    if constants.get("cohort", spec.name) != spec.name:
        problems.append(f"adapter.constants.cohort: '{constants['cohort']}' must be the source's name '{spec.name}'")
    for name in constants:
        if name not in ("cohort", "madrs_source_scale"):  # the BIDS adapter fixes these two itself
            _column(f"adapter.constants.{name}", name, contract, spec.name, problems)
    checked = {k: v for k, v in constants.items() if k in contract.by_name and k != "patient_id"}
    problems += [f"adapter.constants.{c}: {m}" for c, m in constant_problems(checked, contract, spec.name)]
    return problems


def load_tabular_spec(
    path: Path, *, contract: CohortContract | None = None, scales: ScaleConversions | None = None
) -> TabularSourceSpec:
    """Read and check a ``kind: tabular_export`` file completely, before any data is read.

    ``contract`` and ``scales`` default to the configs beside the file (``<configs>/sources/<name>.yaml`` ->
    ``<configs>/cohort_schema.yaml``, ``scale_conversions.yaml``); a file elsewhere without them gets the shape and
    structural checks only. All problems are raised together, one ``key: message`` line each.
    """
    path = Path(path)
    spec, problems = parse_tabular_spec(path)
    contract, scales = _configs_beside(path, contract, scales)
    if contract is not None and scales is not None:
        problems += contract_problems(spec, contract, scales)
    if problems:
        raise ConfigError("; ".join(problems), file=path, hint=SPEC_HINT)
    return spec


def _configs_beside(
    path: Path, contract: CohortContract | None, scales: ScaleConversions | None
) -> tuple[CohortContract | None, ScaleConversions | None]:
    configs = path.parent.parent
    if path.parent.name != "sources" or not (configs / "cohort_schema.yaml").is_file():
        return contract, scales
    if contract is None:
        contract = load_contract(configs / "cohort_schema.yaml")
    if scales is None:
        scales = load_scale_conversions(configs / "scale_conversions.yaml")
    return contract, scales
