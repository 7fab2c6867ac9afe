"""Facts of the card's first half (TRIPOD+AI methods): identity, summary, use, data, flow, outcome, predictors,
sample size, missing data. Each builder returns the data its section template renders; no prose here beyond
row labels."""

from __future__ import annotations

from typing import Any

from pipeline.contract import PREDICTOR_ROLES, TIMING_ORDER
from pipeline.report import analysis
from pipeline.report.format import codes, level_header, md_code, md_escape
from pipeline.report.inputs import CHAMPION_ALIAS, EXTERNAL_COHORT, SYNTHETIC, CardInputs
from pipeline.report.tables import Keyed, json_grid, plain

# the optimism-corrected measures, in the order the card shows them: key, label, decimals
VALIDATED_ROWS = (
    ("auroc", "AUROC", 3),
    ("calibration_slope", "calibration slope", 2),
    ("calibration_in_the_large", "calibration-in-the-large (log-odds)", 2),
    ("brier", "Brier score", 3),
)
SOURCE_FIELDS = (
    ("title", "title"),
    ("version", "version"),
    ("DOI", "doi"),
    ("licence", "licence"),
    ("trial registration", "registration"),
    ("homepage", "homepage"),
    ("citation", "citation"),
)


def identity(inputs: CardInputs) -> dict[str, Any]:
    """What the model is, by content. Not the registry's version number, alias or run: those belong to one MLflow
    store (each clone or team server numbers its own), and the card is a DVC output that must be the same bytes
    on every machine; `trd report` logs them and attaches the card to that version's run."""
    info = inputs.model_info
    table = Keyed("item")
    table.string("registered model name", info, "registered_model_name")
    table.other(
        "registry entry",
        f"the version tagged estimator_sha256 with the hash below; the {CHAMPION_ALIAS} alias moves to it only "
        "when it passes the gate on its cross-validated metrics",
        "MLflow registry (pipeline/tracking.py)",
    )
    for label, key in (
        ("champion candidate", "candidate"),
        ("calibration", "calibration"),
        ("estimator SHA-256", "estimator_sha256"),
        ("training split SHA-256", "training_data_sha256"),
        ("package version", "package_version"),
    ):
        table.string(label, info, key)
    return {"table": table.data()}


def summary(inputs: CardInputs) -> dict[str, Any]:
    m, cv, held_out = inputs.metrics, inputs.cv, inputs.held_out
    table = Keyed("measure", level_header(inputs.level))
    table.number("training patients (development data)", cv, "n_train", 0)
    table.number(f"training {inputs.task_spec.outcome.events}", cv, "events_train", 0)
    if cv.get("protocol.sample_size.minimum_n") is not None:
        table.number("Riley minimum sample size (declared C, before fitting)", cv, "protocol.sample_size.minimum_n", 0)
    internal = m.get("internal_validation") is not None
    for key, label, digits in VALIDATED_ROWS:
        if internal:
            table.number(
                f"{label}, optimism-corrected (bootstrap, all training patients)",
                m,
                f"internal_validation.{key}.corrected",
                digits,
                interval=True,
            )
        if held_out:
            table.number(f"{label}, held-out test split", m, f"test.{key}", digits, interval=True)
    if held_out:
        table.number("test patients", m, "test.n", 0)
        table.number(f"test {inputs.task_spec.outcome.events}", m, "test.events", 0)
    if m.get("oracle") is not None:
        table.number(
            "AUROC of the generating probability (ceiling; knows the site), same test patients",
            m,
            "oracle.auroc",
            3,
            interval=True,
        )
    if m.get("oracle_predictors") is not None:
        table.number(
            "AUROC of the predictors-only probability (best these predictors allow), same test patients",
            m,
            "oracle_predictors.auroc",
            3,
            interval=True,
        )
        table.number(
            "AUROC difference, champion − predictors-only (paired)", m, "gap_predictors.auroc", 3, interval=True
        )
    if m.get("oracle") is not None:
        table.number("AUROC difference, champion − generating probability (paired)", m, "gap.auroc", 3, interval=True)
    if m.get("external") is not None:
        table.number(f"external patients ({EXTERNAL_COHORT})", m, "external.n", 0)
        table.number("external responders", m, "external.events", 0)
        table.number("AUROC, external", m, "external.auroc", 3, interval=True)
    for name in sorted(m.get("external_cohorts") or {}):
        table.number(f"external patients ({name})", m, f"external_cohorts.{name}.n", 0)
        table.number(f"AUROC, external ({name})", m, f"external_cohorts.{name}.auroc", 3, interval=True)
    underpowered = None
    if inputs.underpowered:
        size = "protocol.sample_size"
        underpowered = {
            "n": cv.get(f"{size}.n"),
            "events": cv.get(f"{size}.events"),
            "minimum_n": cv.get(f"{size}.minimum_n"),
        }
    return {"table": table.data(), "underpowered": underpowered}


def data(inputs: CardInputs) -> dict[str, Any]:
    out: dict[str, Any] = {"generator": None, "external_source": None, "development_sources": []}
    for name in inputs.development:  # the development cohort(s) other than the synthetic one, in their own words
        if name == SYNTHETIC:
            continue
        source = inputs.sources.get(name)
        described = str(source.get("description") or source.get("title") or "no description") if source else None
        out["development_sources"].append({"name": name, "description": described and described.rstrip(".")})
    if inputs.planted is not None:
        target, planted = inputs.task_spec.target, inputs.planted
        table = Keyed("generator quantity")
        table.number("patients generated", planted, "n_patients", 0)
        table.number("effect scale (multiplies every planted patient-level effect)", planted, "effect_scale", 2)
        table.number(f"target rate of `{target}`", planted, f"outcomes.{target}.target_rate", 3)
        table.number(f"realised rate of `{target}`", planted, f"outcomes.{target}.realised_rate", 3)
        table.number(
            f"oracle AUROC of `{target}` over every generated patient", planted, f"outcomes.{target}.oracle_auroc", 3
        )
        out["generator"] = table.data()
    source = inputs.sources.get(EXTERNAL_COHORT)
    if source is not None:
        table = Keyed("field")
        for label, key in SOURCE_FIELDS:
            table.string(label, source, key)
        out["external_source"] = {
            "doi": source.get("doi"),
            "registration": source.get("registration"),
            "development": EXTERNAL_COHORT in inputs.development,
            "table": table.data(),
        }
    return out


def source_order(inputs: CardInputs) -> list[str]:
    """The cleaning report's sources, the development cohort(s) first."""
    names = sorted(inputs.cleaning.get("sources") or {})
    return sorted(names, key=lambda name: name not in inputs.development)


def flow(inputs: CardInputs) -> dict[str, Any]:
    cleaning, split, target, m = inputs.cleaning, inputs.split_counts, inputs.task_spec.target, inputs.metrics
    table = Keyed("step")
    for cohort in source_order(inputs):
        prefix = f"sources.{cohort}"
        table.number(f"{cohort}: rows in", cleaning, f"{prefix}.rows_in", 0)
        for reason in sorted(cleaning.get(f"{prefix}.quarantined_by_reason") or {}):
            table.number(f"{cohort}: quarantined, `{reason}`", cleaning, f"{prefix}.quarantined_by_reason.{reason}", 0)
        table.number(f"{cohort}: patients kept after cleaning", cleaning, f"{prefix}.rows_kept", 0)
        capped = f"{prefix}.values_converted.converted_capped_to_madrs_range"
        if cleaning.get(capped) is not None:
            table.number(f"{cohort}: converted scores capped at the MADRS maximum", cleaning, capped, 0)
        if cleaning.get(f"{prefix}.outcomes.{target}") is not None:
            table.number(f"{cohort}: with a known `{target}`", cleaning, f"{prefix}.outcomes.{target}.known", 0)
            table.number(
                f"{cohort}: of whom {inputs.task_spec.outcome.events}",
                cleaning,
                f"{prefix}.outcomes.{target}.positive",
                0,
            )
        if cohort == inputs.development[-1]:  # after the last development cohort: the split of the pooled rows
            table.number("training split: patients", split, "train.n", 0)
            table.number(f"training split: {inputs.task_spec.outcome.events}", split, "train.events", 0)
            if inputs.held_out:
                table.number("test split: patients", split, "test.n", 0)
                table.number(f"test split: {inputs.task_spec.outcome.events}", split, "test.events", 0)
        if cohort == EXTERNAL_COHORT and m.get("external.negative_control") is not None:
            table.number(
                f"{cohort}: with a known saline (negative-control) outcome", m, "external.negative_control.n", 0
            )
            table.number(f"{cohort}: of whom saline responders", m, "external.negative_control.events", 0)
    source = inputs.sources.get(EXTERNAL_COHORT)
    eligibility = (source.get("adapter.eligibility") if source else None) or {}
    levels = eligibility.get("levels", {})
    include = eligibility.get("include", [])
    return {
        "table": table.data(),
        "holdout_sites": codes(inputs.split.holdout_sites) if inputs.split.holdout_sites else None,
        "eligible": [levels.get(k, k) for k in include] if eligibility else None,
        "ineligible": [v for k, v in levels.items() if k not in include],
    }


def outcome(inputs: CardInputs) -> dict[str, Any]:
    report = inputs.external_report()
    return {
        "external": bool(report.get("available")),
        "negative_control": (report.get("negative_control") or {}).get("outcome"),
    }


def predictors(inputs: CardInputs) -> dict[str, Any]:
    spec, report = inputs.task_spec, inputs.external_report()
    external = bool(report.get("available"))
    missing_external = set(report.get("features_entirely_missing") or [])
    header = ["predictor", "type", "unit or levels", "timing", "description"]
    if external:
        header.append(f"in {EXTERNAL_COHORT}")
    rows = []
    for column in inputs.feature_spec.columns:
        contract = inputs.contract.column(column.name)
        if column.levels:
            detail = ", ".join(column.levels)
        else:
            detail = column.unit or ("yes/no" if column.kind == "binary" else "")
        cells = [
            md_code(column.name),
            *map(md_escape, (column.kind, detail, str(contract.timing), contract.description)),
        ]
        if external:
            cells.append("missing for every patient" if column.name in missing_external else "recorded")
        rows.append(cells)
    cutoff = TIMING_ORDER.index(spec.prediction_time)
    later = [
        c.name
        for c in inputs.contract.columns
        if c.role in PREDICTOR_ROLES and c.timing is not None and TIMING_ORDER.index(c.timing) > cutoff
    ]
    return {
        "table": plain(header, rows),
        "later": codes(later) if later else None,
        "excluded": codes(spec.exclude_predictors) if spec.exclude_predictors else None,
        "prespecified": codes(spec.predictors) if spec.predictors is not None else None,
    }


def sample_size(inputs: CardInputs) -> dict[str, Any]:
    check = analysis.sample_size_check(inputs)
    table = Keyed("quantity")
    table.computed(
        "candidate parameters P (feature columns the model receives)",
        check.parameters,
        0,
        f"number of feature columns in {inputs.feature_spec_path}",
    )
    table.number("training patients n", inputs.cv, "n_train", 0)
    table.number(f"training {inputs.task_spec.outcome.events}", inputs.cv, "events_train", 0)
    table.computed("training prevalence φ", check.prevalence, 3, "events_train / n_train")
    if check.c_from_params:
        table.number("anticipated C statistic (stated)", inputs.params_file, "report.anticipated_c", 3)
    else:
        key = f"candidates.{inputs.champion}.cv_auroc"
        table.number("anticipated C statistic (the champion's CV AUROC)", inputs.cv, key, 3)
    riley, how = check.riley, "pipeline.sample_size.riley_sample_size(P, φ, C)"
    if riley is not None:
        table.computed("anticipated Cox-Snell R²", riley.r2_cs, 3, how)
        table.computed("criterion 1: n for an expected shrinkage of at least 0.9", riley.n_shrinkage, 0, how)
        table.computed("criterion 2: n for an optimism in Nagelkerke R² of at most 0.05", riley.n_r2_difference, 0, how)
        table.computed("criterion 3: n for the overall risk within 0.05", riley.n_overall_risk, 0, how)
        table.computed("minimum sample size (the largest of the three)", riley.n, 0, how)
        table.computed(f"{inputs.task_spec.outcome.events} expected at the minimum size", riley.events, 1, how)
        table.computed("events per candidate parameter at the minimum size", riley.epp, 1, how)
        observed_epp = check.events_train / check.parameters
        table.computed("events per candidate parameter in the training split", observed_epp, 1, "events_train / P")
    return {
        "table": table.data(),
        "gate": gate(inputs),
        "met": check.met,
        "reason": check.reason,
        "c_from_params": check.c_from_params,
        "tree": inputs.champion in analysis.TREE_FAMILIES,
    }


def gate(inputs: CardInputs) -> dict[str, Any] | None:
    """The prospective check the train stage made before any fitting (cv_metrics.json protocol.sample_size)."""
    cv, key = inputs.cv, "protocol.sample_size"
    if cv.get(key) is None:
        return None
    table = Keyed("quantity")
    table.number(
        "anticipated C statistic, declared before fitting (`train.sample_size.anticipated_c`)",
        cv,
        f"{key}.anticipated_c",
        2,
    )
    table.number("development patients", cv, f"{key}.n", 0)
    table.number("development responders", cv, f"{key}.events", 0)
    table.number("candidate parameters", cv, f"{key}.parameters", 0)
    table.number("events per candidate parameter in the development data", cv, f"{key}.events_per_parameter", 2)
    if cv.get(f"{key}.minimum_n") is not None:
        table.number("minimum sample size at the declared C", cv, f"{key}.minimum_n", 0)
        table.number("responders expected at that size", cv, f"{key}.minimum_events", 1)
    return {"table": table.data(), "passed": bool(cv.get(f"{key}.passed"))}


def missing(inputs: CardInputs) -> dict[str, Any]:
    columns = [(name, f"missing in {name}", 0) for name in source_order(inputs)]
    rows = [(name, "") for name in [*inputs.feature_spec.input_columns, inputs.task_spec.target]]
    return {
        "table": json_grid(inputs.cleaning, "column", rows, "sources.{col}.missing_by_column.{row}", columns),
        "external": (inputs.external_report().get("missing_value_handling") or {}).get("description"),
    }
