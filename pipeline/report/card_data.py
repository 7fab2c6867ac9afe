"""The pure core: gathered inputs in, ``card_data.json`` out.

``card_data`` is everything the templates show and nothing they compute: every number is a ``{value, source}``
fact (see :mod:`pipeline.report.tables`), every reading a phrase worded from an interval, plus the static data
(citations, the TRIPOD+AI checklist, candidate names) from the YAML files beside this module. The Markdown card
is this data through the templates; the HTML card is that Markdown rendered, so the two cannot differ.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.contract import TIMING_ORDER
from pipeline.report import analysis, facts_explain, facts_results, facts_setup, readings
from pipeline.report.format import codes, md_code, slug
from pipeline.report.inputs import EXTERNAL_COHORT, CardInputs
from pipeline.report.tables import plain
from pipeline.tasks import risk_band_label

HERE = Path(__file__).parent
SECTIONS: tuple[tuple[str, str], ...] = (
    ("identity", "Model identity and version"),
    ("summary", "Summary"),
    ("intended_use", "Intended use and users"),
    ("out_of_scope", "Out-of-scope use"),
    ("data", "Data sources"),
    ("flow", "Participants: eligibility and flow"),
    ("outcome", "Outcome: definition and timing"),
    ("predictors", "Predictors and their timing"),
    ("sample_size", "Sample size (Riley criteria)"),
    ("missing", "Missing data"),
    ("model", "Model specification and tuning"),
    ("performance", "Internal validation, discrimination and calibration against the references"),
    ("decision", "Decision curve and thresholds"),
    ("subgroups", "Subgroups"),
    ("external", "External validation and negative control"),
    ("shap", "Explanations (SHAP): summary and fidelity"),
    ("limitations", "Limitations"),
    ("open_science", "Usability, ethics and open science"),
    ("checklist", "TRIPOD+AI checklist"),
    ("provenance", "Provenance"),
)


@cache
def static_data(name: str) -> Any:
    """One of the YAML files beside this module: ``references``, ``checklist``, ``candidates``."""
    return yaml.safe_load((HERE / f"{name}.yaml").read_text(encoding="utf-8"))


def sections() -> list[dict[str, str]]:
    out = []
    for number, (key, title) in enumerate(SECTIONS, start=1):
        heading = f"{number}. {title}"
        out.append({"key": key, "number": str(number), "title": title, "heading": heading, "anchor": slug(heading)})
    return out


def build_card_data(inputs: CardInputs) -> dict[str, Any]:
    """Every fact, reading and static datum of the card, as JSON-ready data."""
    families = static_data("candidates")
    names_of = {name: family["name"] for name, family in families.items()}
    champion, spec, target = inputs.champion, inputs.task_spec, inputs.target
    check = analysis.sample_size_check(inputs)
    external = bool(inputs.external_report().get("available"))
    outcome, wording = spec.outcome, static_data("outcomes")
    subject = (
        "response to ketamine"
        if outcome.wording == "probability of response"
        else f"the {outcome.wording} with ketamine"
    )
    new_columns = {spec.target, *inputs.feature_spec.input_columns} & set(wording["new_columns"])
    return {
        "task": inputs.task,
        "title": (
            f"Model card: {inputs.registered_name}, a machine-learning model of {subject} in "
            f"treatment-resistant depression (task {inputs.task}; {inputs.development_name} development data"
            + ("; underpowered)" if inputs.underpowered else ")")
        ),
        "sections": sections(),
        "registered_name": inputs.registered_name,
        "champion": {
            "key": champion,
            "name": names_of.get(champion, champion),
            "missing": families.get(champion, {}).get(
                "missing", "handles missing values as pipeline/train.py documents"
            ),
        },
        "task_spec": {
            "description": spec.description,
            "prediction_time": spec.prediction_time,
            "target": spec.target,
            "exclude_predictors": list(spec.exclude_predictors),
            "predictors": list(spec.predictors) if spec.predictors is not None else None,
        },
        "vocab": {
            **outcome.model_dump(),
            "decision": wording["decisions"][outcome.kind],
            "rule": wording["outcome_rules"].get(target.name, wording["outcome_rules"]["response"]),
            "older_adults": wording["older_adults"].get(spec.target, wording["older_adults_default"]),
            "risk_band_high": risk_band_label(outcome, "high"),
        },
        "population": None
        if spec.population is None
        else {"description": spec.population.description, "column": spec.population.column},
        "new_columns": codes(sorted(new_columns)) if new_columns else None,
        "target": {"name": target.name, "description": target.description.rstrip("."), "timing": str(target.timing)},
        "timing_order": codes(TIMING_ORDER),
        "routes": codes(inputs.contract.column("route").levels or ()),
        "development": {
            "cohorts": list(inputs.development),
            "name": inputs.development_name,
            "synthetic": inputs.synthetic_development,
            "held_out": inputs.held_out,
            "underpowered": inputs.underpowered,
            "external_cohorts": sorted(inputs.metrics.get("external_cohorts") or {}),
        },
        "external_cohort": EXTERNAL_COHORT,
        "external_available": external,
        "figures": inputs.figures,
        "readings": readings.all_readings(inputs),
        "identity": facts_setup.identity(inputs),
        "summary": facts_setup.summary(inputs),
        "data": facts_setup.data(inputs),
        "flow": facts_setup.flow(inputs),
        "outcome": facts_setup.outcome(inputs),
        "predictors": facts_setup.predictors(inputs),
        "sample_size": facts_setup.sample_size(inputs),
        "missing": facts_setup.missing(inputs),
        "model": facts_results.model(inputs, names_of),
        "performance": facts_results.performance(inputs, names_of),
        "decision": facts_results.decision(inputs),
        "subgroups": facts_results.subgroups(inputs),
        "external": facts_results.external(inputs),
        "shap": facts_explain.shap(inputs),
        "poor_correlation": analysis.POOR_CORRELATION,
        "limitations": {
            "below_riley": check.met is False and not inputs.underpowered,
            "gate_refused": "; ".join(refused) if (refused := analysis.gate_reasons(inputs)) else None,
        },
        "references": static_data("references"),
        "checklist": static_data("checklist"),
        "provenance": plain(
            ["stage", "output", "md5 (dvc.lock)"], [[md_code(s), md_code(p), md_code(h)] for s, p, h in inputs.lock]
        ),
    }
