"""The headline numbers (pipeline/headline.py) and their place as the only DVC metrics in dvc.yaml."""

from __future__ import annotations

import math

import yaml

from pipeline.headline import EVALUATION_KEYS, EXPLAIN_KEYS, evaluation_headline, explain_headline
from pipeline.params import read_params_file
from tests.conftest import REPO_ROOT

METRICS = {
    "test": {"auroc": 0.712345678, "calibration_slope": 1.05, "auroc_lower": 0.68},
    "internal_validation": {"auroc": {"apparent": 0.72, "corrected": 0.70}},
    "gap": {"auroc": -0.011},
    "external": {"auroc": 0.41, "n": 27},
}


def test_evaluation_headline_picks_the_declared_numbers_under_the_task() -> None:
    assert evaluation_headline("acute", METRICS) == {
        "acute": {"auc": 0.7123, "slope": 1.05, "auc_opt": 0.7, "gap": -0.011, "ext_auc": 0.41}
    }


def test_a_missing_or_non_finite_number_is_left_out_not_written_as_null() -> None:
    metrics = {"test": {"auroc": math.nan, "calibration_slope": True}, "gap": {"auroc": None}}
    assert evaluation_headline("course", metrics) == {"course": {}}


def test_explain_headline_reads_the_median_patient_correlation() -> None:
    fidelity = {"fidelity": {"patient_correlation_median": 0.96264, "noise_share": 0.2}, "n_explained": 9}
    assert explain_headline("acute", fidelity) == {"acute": {"shap_r": 0.9626}}
    assert explain_headline("acute", {"n_explained": 9}) == {"acute": {}}  # no planted truth: nothing to report


def test_key_names_stay_short_and_distinct() -> None:
    keys = [*EVALUATION_KEYS, *EXPLAIN_KEYS]
    assert len(set(keys)) == len(keys)
    assert all(len(key) <= 8 for key in keys)  # `dvc exp show` prints one column per key and task


def test_dvc_yaml_declares_exactly_the_headline_files_as_metrics_and_the_figures_as_plots() -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    tasks = read_params_file(REPO_ROOT / "params.yaml")["tasks"]
    stages = ("evaluation", "explain")
    assert sorted(dvc["metrics"]) == sorted(f"reports/{t}/{s}/headline.json" for t in tasks for s in stages)
    assert sorted(dvc["plots"]) == sorted(f"reports/{t}/{s}/figures" for t in tasks for s in stages)
    # no stage declares metrics or plots of its own: everything else is a plain out
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        assert not {"metrics", "plots"} & set(body), name
