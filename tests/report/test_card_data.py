"""card_data.json against its sources: every fact read from a file equals that file's value, the computed facts
equal an independent computation, readings follow the intervals, and the card says what it lacks."""

from __future__ import annotations

import copy
import json
import re

import pandas as pd
import pytest
import yaml

from pipeline import metrics
from pipeline.errors import PipelineError
from pipeline.features import FeatureSpec
from pipeline.report.card_data import SECTIONS
from tests.report.fixtures import (
    PATIENT_IDS,
    TASK,
    UNSOURCED_KINDS,
    build,
    check_card_data,
    fabricate,
    facts,
    unsourced_kinds,
)


def _rows(table: dict) -> dict[str, dict]:
    return {row["label"]: row for row in table["rows"]}


def _edit(path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def test_every_fact_equals_the_file_it_names(project) -> None:
    card, _, _ = build(project)
    result = check_card_data(card, project)
    assert result["checked"] > 250  # the checker compared the card's facts, not nothing
    assert unsourced_kinds(result) <= UNSOURCED_KINDS


def test_the_checker_catches_a_wrong_fact(project) -> None:
    card, _, _ = build(project)
    wrong = copy.deepcopy(card)
    _rows(wrong["summary"]["table"])["AUROC, held-out test split"]["fact"]["value"] += 0.001
    with pytest.raises(AssertionError, match=r"test\.auroc"):
        check_card_data(wrong, project)


def test_the_card_follows_a_changed_metric(project) -> None:
    _edit(project / f"reports/{TASK}/evaluation/metrics.json", lambda p: p["test"].update(auroc=0.6543))
    card, markdown, _ = build(project)
    assert _rows(card["summary"]["table"])["AUROC, held-out test split"]["fact"]["value"] == 0.6543
    assert re.search(r"^\| AUROC, held-out test split \| 0\.654 \|", markdown, flags=re.MULTILINE)
    check_card_data(card, project)


def _computed(card: dict) -> dict[str, object]:
    return {
        row["label"]: row["fact"]["value"]
        for row in card["sample_size"]["table"]["rows"]
        if row["fact"]["source"].startswith("computed:")
    }


def test_riley_sample_size_is_computed_from_the_feature_count_prevalence_and_cv_auroc(project) -> None:
    card, markdown, _ = build(project)
    rows = _computed(card)
    spec = FeatureSpec.load(project / f"models/{TASK}/artifacts/feature_spec.json")
    cv = json.loads((project / f"reports/{TASK}/cv_metrics.json").read_text())
    expected = metrics.riley_sample_size(
        parameters=len(spec.feature_names),
        prevalence=cv["events_train"] / cv["n_train"],
        c_statistic=cv["candidates"]["logreg"]["cv_auroc"],
    )
    assert rows["candidate parameters P (feature columns the model receives)"] == len(spec.feature_names)
    assert rows["training prevalence φ"] == pytest.approx(cv["events_train"] / cv["n_train"], abs=1e-12)
    assert rows["minimum sample size (the largest of the three)"] == expected.n
    assert rows["criterion 1: n for an expected shrinkage of at least 0.9"] == expected.n_shrinkage
    assert rows["criterion 2: n for an optimism in Nagelkerke R² of at most 0.05"] == expected.n_r2_difference
    assert rows["criterion 3: n for the overall risk within 0.05"] == expected.n_overall_risk
    assert rows["anticipated Cox-Snell R²"] == pytest.approx(expected.r2_cs, abs=1e-12)
    assert card["sample_size"]["met"] is (cv["n_train"] >= expected.n)
    assert ("meets the minimum" if card["sample_size"]["met"] else "smaller than the minimum") in markdown


def test_a_stated_anticipated_c_replaces_the_cv_auroc(project) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["report"] = {"anticipated_c": 0.75}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    card, _, _ = build(project)
    stated = _rows(card["sample_size"]["table"])["anticipated C statistic (stated)"]["fact"]
    assert stated == {"value": 0.75, "source": "params.yaml#report.anticipated_c"}
    check_card_data(card, project)
    expected = metrics.riley_sample_size(parameters=23, prevalence=0.4, c_statistic=0.75)
    assert _computed(card)["minimum sample size (the largest of the three)"] == expected.n


def test_decision_curve_range_is_where_the_model_beats_both_defaults(project) -> None:
    card, _, _ = build(project)
    curve = pd.read_csv(project / f"reports/{TASK}/evaluation/plots/decision_curve.csv")
    better = curve["threshold"][
        curve["net_benefit_model"] > curve[["net_benefit_treat_all", "net_benefit_treat_none"]].max(axis=1)
    ]
    (row,) = card["decision"]["curve"]["rows"]
    assert row["fact"]["value"] == f"{better.min():.2f} to {better.max():.2f}"  # one run in this curve


def test_readings_follow_the_intervals(project) -> None:
    card, _, _ = build(project)
    assert card["readings"]["external"].startswith("the real cohort neither supports nor refutes the model")
    assert "cannot be distinguished from the predictors-only reference" in card["readings"]["oracle"]
    assert "the held-out AUROC interval contains the optimism-corrected AUROC" in card["readings"]["internal"]
    path = project / f"reports/{TASK}/evaluation/metrics.json"

    def worse(p: dict) -> None:
        p["external"] |= {"auroc": 0.2, "auroc_lower": 0.05, "auroc_upper": 0.45}
        p["gap_predictors"] |= {"auroc_upper": -0.001}
        p["internal_validation"]["auroc"]["corrected"] = 0.9  # outside the held-out interval

    _edit(path, worse)
    readings = build(project)[0]["readings"]
    assert "the model ranks worse than chance" in readings["external"]
    assert "less well than the predictors-only reference" in readings["oracle"]
    assert "does not contain the optimism-corrected AUROC" in readings["internal"]

    def no_predictors_reference(p: dict) -> None:  # the reading falls back to the generating probability
        del p["gap_predictors"], p["oracle_predictors"]
        p["gap"] |= {"auroc_upper": -0.001}

    _edit(path, no_predictors_reference)
    assert "less well than the generating probability" in build(project)[0]["readings"]["oracle"]


def test_the_card_leads_with_internal_validation_and_names_the_selection_rule(project) -> None:
    card, markdown, _ = build(project)
    labels = [row["label"] for row in card["summary"]["table"]["rows"] if row["label"].startswith("AUROC")]
    assert labels[:2] == ["AUROC, optimism-corrected (bootstrap, all training patients)", "AUROC, held-out test split"]
    assert "within 1 paired standard error(s) of the lowest" in card["model"]["selection_rule"]
    assert "Selection: the declared rule and the margins" in markdown
    assert card["sample_size"]["tree"] is False  # the champion is logreg here


def test_a_tree_champion_gets_the_effective_parameters_warning(project) -> None:
    _edit(project / "models/acute/artifacts/model_info.json", lambda p: p.update(candidate="xgboost"))
    _edit(project / "reports/acute/cv_metrics.json", lambda p: p.update(champion="xgboost"))
    _edit(project / f"reports/{TASK}/evaluation/evaluation.json", lambda p: p["champion"].update(candidate="xgboost"))
    card, markdown, _ = build(project)
    assert card["sample_size"]["tree"] is True
    assert "The champion is a tree ensemble" in markdown.split("## 9.")[1].split("## 10.")[0]


def test_the_card_says_when_the_test_split_would_have_picked_another_candidate(project) -> None:
    path = project / f"reports/{TASK}/evaluation/metrics.json"
    _edit(
        path,
        lambda p: (
            p["test"]["candidates"]["logreg"].update(auroc=0.60),
            p["test"]["candidates"]["xgboost"].update(auroc=0.70),
        ),
    )
    card, markdown, _ = build(project)
    assert card["performance"]["best_test_candidate"] == "xgboost"
    assert "The candidate with the highest test AUROC is xgboost" in markdown
    _edit(path, lambda p: p["test"]["candidates"]["logreg"].update(auroc=0.75))
    assert "The champion also has the highest test AUROC of the candidates." in build(project)[1]


def test_required_sections_checklist_and_statements(project) -> None:
    card, markdown, _ = build(project)
    for _, title in SECTIONS:
        assert f". {title}\n" in markdown
    for statement in (
        "Research use only. Not a medical device.",
        "synthetic",
        "doi:10.18112/openneuro.ds005917.v1.0.1",
        "CC0",
        "Item numbering follows the BMJ 2024 checklist as summarised in the project's literature notes",
        "names the model by its hashes instead",
    ):
        assert statement in markdown, statement
    items = [row["item"] for row in card["checklist"]]
    assert (items[:2], items[-1]) == (["1", "2"], "27")
    keys = {key for key, _ in SECTIONS}
    for row in card["checklist"]:  # every item points at a section of the card or says why it does not apply
        assert row["section"] in keys or "not applicable" in row["note"] or row["item"] == "1", row


def test_no_patient_identifier_in_the_card(project) -> None:
    card, markdown, _ = build(project)
    for text in (markdown, json.dumps(card)):
        for patient in PATIENT_IDS:
            assert patient not in text
        assert not re.search(r"syn-\d{6}|sub-[A-Z]{3}\d{3}", text)


def test_unavailable_external_validation_and_explanations_are_said_not_hidden(
    project_root, contract, no_mlflow
) -> None:
    fabricate(project_root, contract, external=False, explain=False)
    card, markdown, _ = build(project_root)
    assert card["external"] == {
        "available": False,
        "reason": "ds005917 does not record the target",
        "other_cohorts": None,
    }
    assert card["shap"] is None
    assert "Not available for this task: ds005917 does not record the target" in markdown
    assert "no external validation of any kind" in markdown
    assert "Not available: the explain stage's outputs were not found." in markdown
    check_card_data(card, project_root)


def test_outputs_from_another_training_run_stop_the_stage(project) -> None:
    _edit(
        project / f"reports/{TASK}/evaluation/evaluation.json",
        lambda p: p["champion"].update(estimator_sha256="c" * 64),
    )
    with pytest.raises(PipelineError, match="another model"):
        build(project)


def test_every_fact_is_json_and_carries_a_source(project) -> None:
    card, _, _ = build(project)
    json.dumps(card, allow_nan=False)  # no NaN: a missing value is null
    assert all(isinstance(f["source"], str) and f["source"] for f in facts(card))


def _own_cohort(project, cohort: str) -> None:
    """Outputs of a model developed on ``cohort`` (no synthetic truth): no oracle, the synthetic cohort external."""
    cv = project / f"reports/{TASK}/cv_metrics.json"
    sample = {
        "anticipated_c": 0.8,
        "n": 900,
        "events": 360,
        "parameters": 23,
        "events_per_parameter": 15.65,
        "minimum_n": 600,
        "minimum_events": 240.0,
        "passed": True,
    }
    _edit(cv, lambda p: p.update(protocol={"development_cohorts": [cohort], "cv_folds": 4, "sample_size": sample}))
    external = {"n": 1200, "events": 480, "mean_predicted": 0.41}
    for key, value in (
        ("observed_rate", 0.4),
        ("auroc", 0.68),
        ("calibration_in_the_large", 0.01),
        ("calibration_slope", 0.9),
    ):
        external |= {key: value, f"{key}_lower": value - 0.05, f"{key}_upper": value + 0.05}

    def metrics_without_truth(p: dict) -> None:
        for key in ("oracle", "oracle_predictors", "gap", "gap_predictors", "labels"):
            p.pop(key)
        p["external_cohorts"] = {"synthetic": external}

    _edit(project / f"reports/{TASK}/evaluation/metrics.json", metrics_without_truth)
    _edit(
        project / f"reports/{TASK}/evaluation/evaluation.json",
        lambda p: (p.pop("oracle_predictors"), p.update(oracle={"available": False, "reason": "no truth"})),
    )


def test_a_model_of_an_own_cohort_is_named_by_it_and_validated_on_the_synthetic_one(project) -> None:
    _own_cohort(project, "clinic_copy")
    card, markdown, _ = build(project)
    check_card_data(card, project)
    assert card["development"] == {
        "cohorts": ["clinic_copy"],
        "name": "clinic_copy",
        "synthetic": False,
        "held_out": True,
        "underpowered": False,
        "external_cohorts": ["synthetic"],
    }
    assert "clinic_copy development data)" in markdown.split("\n")[0]
    assert "All development and test patients are **synthetic**" not in markdown
    assert "Developed and tested on synthetic patients" not in markdown
    assert "underpowered" not in markdown.lower()
    assert "external patients (synthetic)" in markdown
    assert "### Other cohorts" in markdown
    assert "4-fold (not the declared" in markdown
    assert "### The gate before fitting" in markdown
    assert "no comparison with the oracle: clinic_copy has no synthetic truth" in card["readings"]["oracle"]


def test_a_small_underpowered_cohort_has_no_test_split_and_says_so(project) -> None:
    _own_cohort(project, "ds005917")
    _edit(
        project / f"reports/{TASK}/cv_metrics.json",
        lambda p: p["protocol"].update(
            underpowered=True,
            sample_size=p["protocol"]["sample_size"] | {"n": 27, "events": 6, "minimum_n": 500, "passed": False},
        ),
    )
    _edit(project / f"data/processed/{TASK}/split.json", lambda p: p.update(test={"n": 0, "events": 0}))
    _edit(project / f"reports/{TASK}/explain/explanation.json", lambda p: p.update(rows={"split": "train"}))
    card, markdown, _ = build(project)
    check_card_data(card, project)
    assert markdown.split("\n")[0].endswith("(task acute; ds005917 development data; underpowered)")
    assert "> **Underpowered.** Developed on 27 patients with 6 responders where the Riley minimum is 500" in markdown
    assert card["performance"] == {"internal": card["performance"]["internal"], "held_out": False}
    assert card["decision"] is None
    assert card["subgroups"] is None
    assert "Here the real cohort is the development cohort" in markdown
    assert "development patients (no test split) explained" in markdown
    assert "| AUROC, held-out test split" not in markdown
