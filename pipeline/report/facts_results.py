"""Facts of the card's second half (TRIPOD+AI results): model, performance, decision curve, subgroups, external
validation. Each builder returns the data its section template renders."""

from __future__ import annotations

import inspect
from decimal import Decimal
from typing import Any

from pipeline import metrics
from pipeline.modelling.selection import selection_rule_text
from pipeline.report import analysis
from pipeline.report.facts_setup import VALIDATED_ROWS
from pipeline.report.format import codes, finite, level_header
from pipeline.report.inputs import EXTERNAL_COHORT, CardInputs
from pipeline.report.tables import Keyed, csv_grid, json_grid, other

# the train stage's CV AUROC interval uses metrics.bootstrap_ci at its default level (cv_metrics.json does not say)
CV_INTERVAL_LEVEL: float = inspect.signature(metrics.bootstrap_ci).parameters["level"].default


def _candidates(names: list[str], names_of: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, names_of.get(name, name)) for name in names]


def model(inputs: CardInputs, names_of: dict[str, str]) -> dict[str, Any]:
    train, cv, champion = inputs.train, inputs.cv, inputs.champion
    candidates = sorted(cv.get("candidates") or {})
    grid = json_grid(
        cv,
        "candidate",
        _candidates(candidates, names_of),
        "candidates.{row}.{col}",
        [
            ("cv_auroc", "CV AUROC", 3),
            ("cv_auroc[ci]", f"CV AUROC {level_header(CV_INTERVAL_LEVEL)}", 3),
            ("cv_log_loss", "CV log loss", 4),
            ("cv_brier", "CV Brier", 4),
            ("cv_calibration_slope", "CV calibration slope", 2),
            ("cv_calibration_in_the_large", "CV calibration-in-the-large", 2),
            ("calibration", "calibration chosen", None),
        ],
    )
    selection = cv.get("selection.candidates") or {}
    order = sorted(selection, key=lambda name: selection[name].get("simplicity_rank", 0))
    selection_grid = json_grid(
        cv,
        "candidate",
        _candidates(order, names_of),
        "selection.candidates.{row}.{col}",
        [
            ("simplicity_rank", "simplicity rank", 0),
            ("mean_loss", "mean CV loss", 4),
            ("margin", "margin over the lowest", 4),
            ("margin_se", "paired SE", 4),
            ("margin_in_se", "margin in SE", 2),
            ("eligible", "within the rule", None),
        ],
    )
    hyper = Keyed("candidate: hyperparameter")
    for candidate in candidates:
        for name, value in sorted((cv.get(f"candidates.{candidate}.best_params") or {}).items()):
            key, label = f"candidates.{candidate}.best_params.{name}", f"`{candidate}`: `{name}`"
            if finite(value):
                # as many decimals as the value has (grid values are short decimals: 0.03, 1.0, 250)
                exponent = Decimal(str(value)).normalize().as_tuple().exponent
                hyper.number(label, cv, key, min(6, max(0, -int(exponent))))
            else:
                hyper.string(label, cv, key)
    bands = Keyed("risk band: upper bound of the predicted probability")
    for i, band in enumerate(inputs.model_info.get("risk_bands") or []):
        bands.number(f"`{band.get('name')}`", inputs.model_info, f"risk_bands.{i}.upper", 2)
    gate = Keyed("gate")
    params = inputs.params_file
    gate.number("required lower bound of the CV AUROC interval", params, "train.gate.min_cv_auroc_lower", 2)
    gate.number("allowed CV calibration slope, from", params, "train.gate.calibration_slope.0", 2)
    gate.number("allowed CV calibration slope, to", params, "train.gate.calibration_slope.1", 2)
    gate.number("champion: lower bound of its CV AUROC interval", cv, f"candidates.{champion}.cv_auroc_lower", 3)
    gate.number("champion: CV calibration slope", cv, f"candidates.{champion}.cv_calibration_slope", 2)
    search = "; ".join(
        f"`{name}`: {candidate.search_iterations} settings drawn from "
        + ", ".join(f"`{k}` {v}" for k, v in candidate.grid.items())
        for name, candidate in train.candidates.items()
    )
    return {
        "cv_folds": train.cv_folds,
        "cv_folds_used": cv.get("protocol.cv_folds"),
        "pooled": len(inputs.development) > 1,
        "holdout_sites": codes(inputs.split.holdout_sites) if inputs.split.holdout_sites else None,
        "calibration_methods": ", ".join(train.calibration_methods),
        "selection_rule": selection_rule_text(train.selection),
        "search": search,
        "cv_grid": grid,
        "selection_grid": selection_grid,
        "hyperparameters": hyper.data(),
        "gate_verdict": analysis.gate_verdict(inputs),
        "gate": gate.data(),
        "bands": bands.data(),
    }


def internal_validation(inputs: CardInputs) -> dict[str, Any] | None:
    """The optimism-corrected performance, first: it uses every development patient."""
    m = inputs.metrics
    if m.get("internal_validation") is None:
        return None
    level = inputs.cv.get("internal_validation.confidence_level")
    rows = [(key, label) for key, label, _ in VALIDATED_ROWS if m.get(f"internal_validation.{key}") is not None]
    grid = json_grid(
        m,
        "measure",
        rows,
        "internal_validation.{row}.{col}",
        [
            ("apparent", "apparent (shipped model, its training data)", 3),
            ("optimism", "optimism (mean over bootstrap refits)", 3),
            ("corrected", "optimism-corrected", 3),
            ("corrected[ci]", f"its {level_header(float(level)) if finite(level) else 'interval'}", 3),
        ],
    )
    counts = Keyed("bootstrap")
    counts.number("repetitions drawn", m, "internal_validation.repetitions", 0)
    counts.number("repetitions used (both classes; the fit converged)", m, "internal_validation.repetitions_used", 0)
    counts.number("training patients", m, "internal_validation.n", 0)
    interval = inputs.evaluation.get("intervals.internal_validation") or "not recorded"
    return {
        "grid": grid,
        "counts": counts.data(),
        "interval": interval,
        "cited": f"{inputs.cv.path}#internal_validation",
    }


def performance(inputs: CardInputs, names_of: dict[str, str]) -> dict[str, Any]:
    if not inputs.held_out:  # small-cohort protocol: the internal validation is all there is
        return {"internal": internal_validation(inputs), "held_out": False}
    m, level = inputs.metrics, level_header(inputs.level)
    champion = Keyed("measure (test split)", level)
    champion.number("AUROC", m, "test.auroc", 3, interval=True)
    champion.number("AUPRC (average precision)", m, "test.auprc", 3, interval=True)
    champion.number(f"prevalence (observed {inputs.task_spec.outcome.rate})", m, "test.prevalence", 3)
    champion.number("mean predicted probability", m, "test.mean_predicted", 3)
    champion.number("observed − expected (risk scale)", m, "test.observed_minus_expected", 3)
    champion.number(
        "calibration-in-the-large (log-odds, slope fixed at 1)", m, "test.calibration_in_the_large", 2, interval=True
    )
    champion.number("calibration slope", m, "test.calibration_slope", 2, interval=True)
    champion.number("expected calibration error", m, "test.ece", 3)
    champion.number("Brier score", m, "test.brier", 3, interval=True)
    champion.number("scaled Brier score", m, "test.scaled_brier", 3, interval=True)
    out: dict[str, Any] = {
        "held_out": True,
        "internal": internal_validation(inputs),
        "intervals": inputs.evaluation.get("intervals") or {},
        "intervals_cited": f"{inputs.evaluation.path}#intervals",
        "champion": champion.data(),
        "references": None,
    }
    if m.get("oracle") is not None or m.get("oracle_predictors") is not None:
        oracle = Keyed("measure (same test patients, same labels)", level)
        for prefix, name in (("oracle", "generating probability"), ("oracle_predictors", "predictors-only")):
            if m.get(prefix) is not None:
                oracle.number(f"{name}: AUROC", m, f"{prefix}.auroc", 3, interval=True)
                oracle.number(f"{name}: AUPRC", m, f"{prefix}.auprc", 3, interval=True)
                oracle.number(f"{name}: Brier score", m, f"{prefix}.brier", 3, interval=True)
                oracle.number(f"{name}: calibration slope", m, f"{prefix}.calibration_slope", 2, interval=True)
        for prefix, name in (("gap", "generating probability"), ("gap_predictors", "predictors-only")):
            if m.get(prefix) is not None:
                oracle.number(f"AUROC difference, champion − {name} (paired)", m, f"{prefix}.auroc", 3, interval=True)
                oracle.number(
                    f"share of resamples with the champion above the {name}", m, f"{prefix}.auroc_share_positive", 3
                )
                oracle.number(f"Brier difference, champion − {name} (paired)", m, f"{prefix}.brier", 4, interval=True)
        if m.get("labels") is not None:
            oracle.number("test patients whose analysed label was compared with the generator's", m, "labels.n", 0)
            oracle.number("share whose analysed label equals the generator's outcome", m, "labels.agree", 3)
        out["references"] = {
            "table": oracle.data(),
            "oracle_column": str(inputs.evaluation.get("oracle.column")),
            "predictors_column": str(inputs.evaluation.get("oracle_predictors.column")),
            "leakage": inputs.evaluation.get("oracle.leakage_check") or {},
        }
    columns: list[tuple[str, str, int | None]] = [
        ("auroc", "AUROC", 3),
        ("auroc[ci]", f"AUROC {level}", 3),
        ("auprc", "AUPRC", 3),
        ("brier", "Brier", 3),
        ("calibration_slope", "calibration slope", 2),
    ]
    if m.get("oracle") is not None:
        columns += [("oracle_gap_auroc", "AUROC − generating", 3), ("oracle_gap_auroc[ci]", "its interval", 3)]
    if m.get("oracle_predictors") is not None:
        columns += [
            ("predictors_gap_auroc", "AUROC − predictors-only", 3),
            ("predictors_gap_auroc[ci]", "its interval", 3),
        ]
    candidates = sorted(m.get("test.candidates") or {})
    out["candidates"] = json_grid(
        m, "candidate", _candidates(candidates, names_of), "test.candidates.{row}.{col}", columns
    )
    best = analysis.best_test_candidate(inputs)
    out["best_test_candidate"], out["best_test_name"] = best, names_of.get(best or "", best)
    return out


def decision(inputs: CardInputs) -> dict[str, Any] | None:
    if not inputs.held_out:  # thresholds read on the patients that trained the model would flatter it
        return None
    thresholds = csv_grid(
        inputs.thresholds,
        [
            ("threshold", "threshold", 2),
            ("flagged", "share flagged", 3),
            ("tp", "TP", 0),
            ("fp", "FP", 0),
            ("tn", "TN", 0),
            ("fn", "FN", 0),
            ("sensitivity", "sensitivity", 3),
            ("specificity", "specificity", 3),
            ("ppv", "PPV", 3),
            ("npv", "NPV", 3),
            ("nne", f"flagged per one of the {inputs.task_spec.outcome.events} (1/PPV)", 2),
            ("net_benefit", "net benefit", 3),
        ],
    )
    curve = Keyed("decision curve")
    curve.computed(
        "thresholds where the model's net benefit exceeds both treat-all and treat-none",
        analysis.fmt_ranges(analysis.net_benefit_ranges(inputs.decision_curve.data)),
        2,
        f"net_benefit_model > max(net_benefit_treat_all, net_benefit_treat_none) in {inputs.decision_curve.path}",
    )
    return {"thresholds": thresholds, "curve": curve.data()}


def subgroups(inputs: CardInputs) -> dict[str, Any] | None:
    if not inputs.held_out:
        return None
    vocab = inputs.task_spec.outcome
    table = Keyed("suppression")
    table.number(
        f"cells with fewer patients, {vocab.events} or {vocab.non_events} than this are suppressed",
        inputs.evaluation,
        "subgroups.min_cell",
        0,
    )
    table.number("suppressed rows", inputs.evaluation, "subgroups.suppressed_rows", 0)
    grid = csv_grid(
        inputs.subgroups,
        [
            ("group", "group", None),
            ("level", "level", None),
            ("n", "patients", 0),
            ("events", vocab.events, 0),
            ("event_rate", vocab.rate, 3),
            ("mean_predicted", "mean predicted", 3),
            ("auroc", "AUROC", 3),
            ("o_minus_e", "observed − expected", 3),
            ("o_e_ratio", "O/E", 2),
            ("suppression_reason", "suppressed", None),
        ],
    )
    return {"suppression": table.data(), "grid": grid}


def external(inputs: CardInputs) -> dict[str, Any]:
    report = inputs.external_report()
    if not report.get("available"):
        reason = str(report.get("reason", "the evaluate stage did not run it"))
        return {"available": False, "reason": reason, "other_cohorts": other_cohorts(inputs)}
    m, level = inputs.metrics, level_header(inputs.level)
    table = Keyed(f"measure ({EXTERNAL_COHORT}, ketamine, day 2)", level)
    table.number("patients", m, "external.n", 0)
    table.number("responders", m, "external.events", 0)
    table.number("observed response rate", m, "external.observed_rate", 3, interval=True)
    table.number("mean predicted probability", m, "external.mean_predicted", 3)
    table.number("AUROC (interval: DeLong, logit scale)", m, "external.auroc", 3, interval=True)
    if m.get("external.auroc_bootstrap_lower") is not None:
        table.number(
            "AUROC (interval: stratified percentile bootstrap)",
            m,
            "external.auroc",
            3,
            bounds=("external.auroc_bootstrap_lower", "external.auroc_bootstrap_upper"),
        )
        table.number("AUROC after leaving out one patient: lowest", m, "external.auroc_loo_min", 3)
        table.number("AUROC after leaving out one patient: highest", m, "external.auroc_loo_max", 3)
    table.number(
        "Spearman ρ, predicted probability vs percent MADRS change",
        m,
        "external.spearman_rho",
        2,
        bounds=("external.spearman_lower", "external.spearman_upper"),
    )
    table.number("calibration-in-the-large (log-odds)", m, "external.calibration_in_the_large", 2, interval=True)
    table.number("calibration slope", m, "external.calibration_slope", 2, interval=True)
    table.number("input columns missing for every patient", m, "external.features_entirely_missing", 0)
    table.number("input columns of the model", m, "external.features_total", 0)
    out: dict[str, Any] = {
        "available": True,
        "table": table.data(),
        "control": None,
        "other_cohorts": other_cohorts(inputs),
    }
    if m.get("external.negative_control") is not None:
        control = Keyed("negative control (saline, day 2)", level)
        control.number("patients", m, "external.negative_control.n", 0)
        control.number("responders", m, "external.negative_control.events", 0)
        control.number("AUROC", m, "external.negative_control.auroc", 2, interval=True)
        control.number(
            "Spearman ρ with percent MADRS change after saline",
            m,
            "external.negative_control.spearman_rho",
            2,
            bounds=("external.negative_control.spearman_lower", "external.negative_control.spearman_upper"),
        )
        note = (report.get("negative_control") or {}).get("auroc_interval_note")
        out["control"] = {"table": control.data(), "note": note}
    out["missing"] = ", ".join(report.get("features_entirely_missing") or [])
    out["missing_handling"] = (report.get("missing_value_handling") or {}).get("description") or ""
    out["limitations"] = other(
        str(report.get("limitations", "")), f"{inputs.evaluation.path}#external_validation.limitations"
    )
    return out


def other_cohorts(inputs: CardInputs) -> dict[str, Any] | None:
    """External validation on every other configured cohort with the task's outcome (the model transported)."""
    m = inputs.metrics
    names = sorted(m.get("external_cohorts") or {})
    if not names:
        return None
    table = Keyed("cohort: measure", level_header(inputs.level))
    for name in names:
        key = f"external_cohorts.{name}"
        table.number(f"{name}: patients", m, f"{key}.n", 0)
        table.number(f"{name}: responders", m, f"{key}.events", 0)
        table.number(f"{name}: observed response rate", m, f"{key}.observed_rate", 3, interval=True)
        table.number(f"{name}: mean predicted probability", m, f"{key}.mean_predicted", 3)
        table.number(f"{name}: AUROC (interval: DeLong, logit scale)", m, f"{key}.auroc", 3, interval=True)
        table.number(
            f"{name}: calibration-in-the-large (log-odds)", m, f"{key}.calibration_in_the_large", 2, interval=True
        )
        table.number(f"{name}: calibration slope", m, f"{key}.calibration_slope", 2, interval=True)
    return {"names": names, "table": table.data(), "cited": f"{inputs.evaluation.path}#external_cohorts"}
