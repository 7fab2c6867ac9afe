"""Facts of the explanations section: the explain stage's method, additivity checks, global importance and the
fidelity of SHAP to the generator's planted truth."""

from __future__ import annotations

from typing import Any

from pipeline.report import analysis
from pipeline.report.format import codes
from pipeline.report.inputs import CardInputs
from pipeline.report.tables import Keyed, csv_grid, json_grid

FIDELITY_ROWS = (
    ("features compared (planted effect or noise)", "n_features", 0),
    ("of which with a planted effect", "n_planted", 0),
    ("of which noise (planted 0)", "n_noise", 0),
    (
        "patient-level correlation of SHAP with the true contribution: median over planted features",
        "patient_correlation_median",
        2,
    ),
    ("the same: the smallest over planted features", "patient_correlation_min", 2),
    (
        "Spearman rank agreement of mean \\|SHAP\\| with mean \\|true contribution\\|, planted features only",
        "rank_spearman_true",
        2,
    ),
    ("share of the model's total mean \\|SHAP\\| on features with no planted effect", "noise_share", 3),
    ("sign checks run", "sign_checked", 0),
    ("sign checks agreeing with the planted direction", "sign_agree", 0),
    ("share agreeing", "sign_agreement", 2),
    ("noise separation (1 = every noise feature below every planted one)", "noise_separation", 2),
    ("best model rank of a noise feature", "noise_best_rank", 0),
    ("noise features above the weakest planted feature", "noise_above_a_planted", 0),
    ("model / planted summed mean \\|SHAP\\| (planted features)", "importance_scale_ratio", 2),
)


def shap(inputs: CardInputs) -> dict[str, Any] | None:
    explain = inputs.explain
    if explain is None:
        return None
    report = explain.explanation.data
    # the explain stage's own words for its method, scale, calibrator and aggregation
    parts = (
        report.get("method"),
        report.get("scale"),
        explain.explanation.get("calibration.description"),
        report.get("aggregation"),
    )
    split = str(explain.explanation.get("rows.split") or "test")
    who = "test patients" if split == "test" else "development patients (no test split)"
    checks = Keyed("check")
    checks.number(f"{who} explained", explain.fidelity, "n_explained", 0)
    checks.number("largest additivity error (log-odds)", explain.fidelity, "additivity.max_abs_error", 6)
    checks.number("additivity tolerance (log-odds)", explain.explanation, "additivity.tolerance", 4)
    importance = csv_grid(
        explain.importance,
        [
            ("rank", "rank", 0),
            ("feature", "predictor", None),
            ("mean_abs_shap", "mean |SHAP|", 4),
            ("share_of_total", "share of total", 3),
            ("mean_shap", "mean SHAP", 4),
            ("fidelity_role", "planted role", None),
            ("planted_mean_abs_shap", "planted mean |SHAP| (whole cohort)", 4),
            ("planted_rank", "planted rank", 0),
            ("true_mean_abs_contribution", "true mean |contribution| (these patients)", 4),
        ],
    )
    out: dict[str, Any] = {
        "who": who,
        "method": [str(part).rstrip(".") for part in parts if part],
        "checks": checks.data(),
        "importance": importance,
        "figures": explain.figures,
        "fidelity": None,
    }
    if explain.fidelity.get("fidelity") is None:
        out["fidelity_reason"] = explain.explanation.get("fidelity.reason") or "no planted truth for this outcome"
        return out
    fidelity = Keyed("check")
    for label, key, digits in FIDELITY_ROWS:
        if explain.fidelity.get(f"fidelity.{key}") is not None:
            fidelity.number(label, explain.fidelity, f"fidelity.{key}", digits)
    correlations = explain.fidelity.get("fidelity.patient_correlation") or {}
    patients = None
    if correlations:
        patients = {
            "grid": json_grid(
                explain.fidelity,
                "planted feature",
                [(name, "") for name in correlations],
                "fidelity.{col}.{row}",
                [("patient_correlation", "correlation of SHAP with the true contribution, across test patients", 2)],
            ),
            "poor": codes(analysis.poor_correlations(correlations)),
        }
    noise = analysis.noise_above_planted(explain.importance.data)
    signs = None
    if explain.signs is not None and explain.signs.data:
        signs = csv_grid(
            explain.signs,
            [
                ("feature", "predictor", None),
                ("level", "level", None),
                ("planted_terms", "planted terms", None),
                ("expected_sign", "expected sign", 0),
                ("observed", "observed dependence", 3),
                ("n_rows", "rows", 0),
                ("agrees", "agrees", None),
                ("skipped", "not checked because", None),
            ],
        )
    out["fidelity"] = {
        "reference": explain.explanation.get("fidelity.reference") or "not recorded",
        "reference_note": str(explain.explanation.get("fidelity.reference_note") or "").rstrip("."),
        "table": fidelity.data(),
        "patients": patients,
        "noise_above": None if noise is None else codes(noise),
        "signs": signs,
    }
    return out
