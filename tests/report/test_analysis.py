"""The card's own small analysis, pure: decision-curve ranges, explanation readings, the gate re-check."""

from __future__ import annotations

import json

from pipeline.report import analysis
from tests.report.fixtures import TASK, build


def _curve(model: list[float]) -> list[dict[str, float]]:
    return [
        {
            "threshold": 0.1 * (i + 1),
            "net_benefit_model": nb,
            "net_benefit_treat_all": 0.1,
            "net_benefit_treat_none": 0.0,
        }
        for i, nb in enumerate(model)
    ]


def test_net_benefit_ranges_are_runs_above_both_defaults() -> None:
    ranges = analysis.net_benefit_ranges(_curve([0.2, 0.2, 0.05, 0.3, None]))
    assert [(round(lo, 10), round(hi, 10)) for lo, hi in ranges] == [(0.1, 0.2), (0.4, 0.4)]
    assert analysis.fmt_ranges(ranges) == "0.10 to 0.20; 0.40"


def test_a_model_never_above_the_defaults_has_no_range() -> None:
    assert analysis.net_benefit_ranges(_curve([0.1, 0.0, -0.2])) == []  # equal to treat-all is not better
    assert analysis.fmt_ranges([]) == "none"


def test_poor_correlations_include_undefined_ones() -> None:
    assert analysis.poor_correlations({"a": 0.9, "b": 0.49, "c": None, "d": float("nan")}) == ["b", "c", "d"]


def test_noise_above_the_weakest_planted_feature() -> None:
    rows = [
        {"feature": "route", "fidelity_role": "planted effect", "mean_abs_shap": 0.3},
        {"feature": "age", "fidelity_role": "planted effect", "mean_abs_shap": 0.05},
        {"feature": "sex", "fidelity_role": "noise (planted 0)", "mean_abs_shap": 0.06},
        {"feature": "bmi", "fidelity_role": "noise (planted 0)", "mean_abs_shap": 0.01},
    ]
    assert analysis.noise_above_planted(rows) == ["sex"]
    assert analysis.noise_above_planted([{"feature": "x"}]) is None  # the table cannot say


def test_the_gate_is_re_checked_with_the_registry_rule(project) -> None:
    _, _, inputs = build(project)
    assert analysis.gate_verdict(inputs) == "Re-checked from the CV metrics, the champion passes."
    path = project / f"reports/{TASK}/cv_metrics.json"
    payload = json.loads(path.read_text())
    payload["candidates"]["logreg"]["cv_calibration_slope"] = 3.0
    path.write_text(json.dumps(payload))
    assert "fails (CV calibration slope 3.000 outside" in analysis.gate_verdict(build(project)[2])
    del payload["candidates"]["logreg"]["cv_auroc_lower"]
    path.write_text(json.dumps(payload))
    assert analysis.gate_verdict(build(project)[2]) == "The gate could not be re-checked from the CV metrics."
