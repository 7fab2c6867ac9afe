"""Fidelity to the planted truth: recovered ranking, exposed scramble, hand-checked arithmetic, sign checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.explain.fidelity import fidelity_checks
from pipeline.features import FeatureSpec, build_features
from pipeline.synthesize.planted import parse_planted_truth
from tests.explain.conftest import NOISE, PLANTED_EFFECTS

# --------------------------------------------------------------------------------------------------------------
# fidelity
# --------------------------------------------------------------------------------------------------------------


def test_the_planted_importance_splits_the_interaction_between_its_features(planted) -> None:
    truth = parse_planted_truth(planted, "response_acute", file="x")
    raw = planted["outcomes"]["response_acute"]["feature_importance"]
    assert truth.importance["age"] == pytest.approx(raw["age"] + raw["route:age"] / 2)
    assert truth.importance["route"] == pytest.approx(raw["route"] + raw["route:age"] / 2)
    assert truth.interactions == {"route:age": pytest.approx(raw["route:age"])}
    assert {name for name, value in truth.importance.items() if value == 0} == set(NOISE)


def test_a_model_trained_on_planted_effects_recovers_them(result) -> None:
    numbers = result.metrics["fidelity"]
    assert numbers["n_planted"] == len(PLANTED_EFFECTS)
    assert numbers["n_noise"] == len(NOISE)
    # patient by patient, the SHAP values of a logistic model of the right form follow the true contributions
    assert set(numbers["patient_correlation"]) == set(PLANTED_EFFECTS)
    assert numbers["patient_correlation_median"] > 0.9
    assert numbers["patient_correlation_min"] > 0.5  # age: linear in the model, with a step from 65 in the truth
    assert numbers["rank_spearman_true"] > 0.85
    assert numbers["noise_share"] < 0.05
    assert numbers["noise_separation"] == 1.0
    assert numbers["noise_best_rank"] == len(PLANTED_EFFECTS) + 1
    assert numbers["noise_above_a_planted"] == 0
    assert numbers["sign_agreement"] == 1.0
    signs = result.fidelity.signs
    checked = signs[signs["skipped"] == ""]
    # age, bmi, family history, prior ECT, and route's esketamine and oral levels (im_sc: planted 0, not checked)
    assert sorted(zip(checked["feature"], checked["level"], strict=True)) == [
        ("age", ""), ("bmi", ""), ("family_history_aud", ""), ("prior_ect", ""),
        ("route", "intranasal_esketamine"), ("route", "oral"),
    ]  # fmt: skip
    assert result.fidelity.report["reference"] == "exact"


def test_a_scrambled_explanation_scores_badly(result, spec, reference) -> None:
    # give every feature another feature's SHAP values: noise features receive the strongest planted effects
    scrambled = result.values.copy()
    scrambled.columns = list(reversed(scrambled.columns))
    scrambled = scrambled[list(result.values.columns)]
    numbers = fidelity_checks(
        scrambled, result.features, spec, reference.truth, true_values=reference.true_values
    ).metrics
    faithful = result.metrics["fidelity"]
    assert numbers["patient_correlation_median"] < 0.3 < faithful["patient_correlation_median"]
    assert numbers["noise_share"] > 0.3 > faithful["noise_share"]
    assert numbers["noise_separation"] < 0.5
    assert numbers["noise_best_rank"] == 1
    assert numbers["sign_agreement"] < 1.0


def test_fidelity_arithmetic_on_hand_made_importances(contract) -> None:
    """Mean |SHAP| fixed per feature by construction, so every metric can be computed by hand."""
    names = ("age", "family_history_aud", "bmi", "anxious_depression", "dose")
    spec = FeatureSpec.from_columns("t", "response_acute", [contract.column(c) for c in names])
    planted = {"age": 0.5, "family_history_aud": 0.3, "bmi": 0.1, "anxious_depression": 0.0, "dose": 0.0}
    model = {"age": 0.4, "family_history_aud": 0.05, "bmi": 0.2, "anxious_depression": 0.1, "dose": 0.0}
    n = 40
    alternating = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    values = pd.DataFrame({name: importance * alternating for name, importance in model.items()})
    features = pd.DataFrame({name: np.arange(n, dtype=float) for name in names})
    features["family_history_aud"] = (np.arange(n) % 2).astype(float)
    effects = {
        "terms": {
            "age_per_10y": {"features": ["age"]}, "fh": {"features": ["family_history_aud"]},
            "bmi_per_5": {"features": ["bmi"]}, "anx": {"features": ["anxious_depression"]},
            "dose": {"features": ["dose"]},
        },
        "outcomes": {"response_acute": {
            "coefficients": {"age_per_10y": -0.1, "fh": 0.3, "bmi_per_5": 0.1, "anx": 0.0, "dose": 0.0},
            "feature_importance": planted, "exact": True,
        }},
    }  # fmt: skip
    truth = parse_planted_truth(effects, "response_acute", file="x")
    # true contributions: age exactly the model's (r = 1), family history the model's reversed (r = -1), bmi
    # uncorrelated with the model's; mean |true| 0.4, 0.3, 0.1, so the ranks (1, 2, 3) vs the model's (1, 3, 2)
    true_values = pd.DataFrame(
        {
            "age": 0.4 * alternating,
            "family_history_aud": -0.3 * alternating,
            "bmi": 0.1 * np.where(np.arange(n) % 4 < 2, 1.0, -1.0),
        }
    )
    numbers = fidelity_checks(values, features, spec, truth, min_rows=10, true_values=true_values).metrics
    assert numbers["patient_correlation"] == pytest.approx({"age": 1.0, "family_history_aud": -1.0, "bmi": 0.0})
    assert numbers["patient_correlation_median"] == pytest.approx(0.0)
    assert numbers["patient_correlation_min"] == pytest.approx(-1.0)
    assert numbers["rank_spearman_true"] == pytest.approx(0.5)  # ranks (1, 2, 3) vs (1, 3, 2)
    # planted (0.4, 0.05, 0.2) against noise (0.1, 0.0): 5 of 6 pairs ordered correctly
    assert numbers["noise_separation"] == pytest.approx(5 / 6)
    assert numbers["noise_best_rank"] == 3  # model order: age, bmi, anxious_depression, family_history_aud, dose
    assert numbers["noise_above_a_planted"] == 1
    assert numbers["noise_share"] == pytest.approx(0.1 / 0.75)
    assert numbers["importance_scale_ratio"] == pytest.approx(0.65 / 0.9)
    # without the true contributions the patient-level measures are absent, not invented
    without = fidelity_checks(values, features, spec, truth, min_rows=10).metrics
    assert "patient_correlation" not in without
    assert without["noise_share"] == pytest.approx(numbers["noise_share"])


def test_sign_checks_follow_the_planted_direction_and_skip_what_cannot_be_checked(contract) -> None:
    names = ("age", "bmi", "family_history_aud", "prior_ect", "route")
    spec = FeatureSpec.from_columns("t", "response_acute", [contract.column(c) for c in names])
    rng = np.random.default_rng(3)
    n = 200
    frame = contract.empty_frame(n)
    frame["age"] = rng.uniform(20, 70, n)
    frame["bmi"] = rng.normal(28, 4, n)
    frame["family_history_aud"] = rng.random(n) < 0.4
    frame["prior_ect"] = rng.random(n) < 0.3
    frame["route"] = np.where(np.arange(n) < 5, "oral", np.where(np.arange(n) % 2, "iv_racemic", "im_sc"))
    frame = contract.coerce(frame)
    features = build_features(frame, spec)
    values = pd.DataFrame(
        {
            "age": -(features["age"] - 45) / 50,  # planted negative: agrees
            "bmi": -(features["bmi"] - 28) / 20,  # planted positive (its interaction too): disagrees
            "family_history_aud": 0.0,  # planted positive, never used by the model: disagrees
            "prior_ect": 0.1,  # planted negative, but an interaction pulls the other way: skipped
            "route": np.where(frame["route"] == "im_sc", -0.3, 0.1),  # im_sc below iv_racemic: agrees
        }
    )
    effects = {
        "terms": {
            "age_per_10y": {"features": ["age"]}, "bmi_per_5": {"features": ["bmi"]},
            "family_history_aud": {"features": ["family_history_aud"]}, "prior_ect": {"features": ["prior_ect"]},
            "ect_obese": {"features": ["prior_ect", "bmi"]}, "route_im_sc": {"features": ["route"]},
            "route_oral": {"features": ["route"]}, "route_intranasal_esketamine": {"features": ["route"]},
        },
        "outcomes": {"response_acute": {
            "coefficients": {
                "age_per_10y": -0.1, "bmi_per_5": 0.2, "family_history_aud": 0.3, "prior_ect": -0.4,
                "ect_obese": 0.5, "route_im_sc": -0.2, "route_oral": -0.5, "route_intranasal_esketamine": 0.0,
            },
            "feature_importance": {
                "age": 0.1, "bmi": 0.1, "family_history_aud": 0.1, "prior_ect": 0.1, "prior_ect:bmi": 0.1,
                "route": 0.1,
            },
            "exact": True,
        }},
    }  # fmt: skip
    truth = parse_planted_truth(effects, "response_acute", file="x")
    signs = fidelity_checks(values, features, spec, truth, min_rows=20).signs.set_index(["feature", "level"])
    assert bool(signs.loc[("age", ""), "agrees"])
    assert signs.loc[("age", ""), "observed"] == pytest.approx(-1.0)
    assert not signs.loc[("bmi", ""), "agrees"]
    assert not signs.loc[("family_history_aud", ""), "agrees"]
    assert signs.loc[("family_history_aud", ""), "observed"] == 0.0
    assert "opposite direction" in signs.loc[("prior_ect", ""), "skipped"]
    assert bool(signs.loc[("route", "im_sc"), "agrees"])
    assert signs.loc[("route", "im_sc"), "observed"] == pytest.approx(-0.4)
    assert "fewer than 20 rows" in signs.loc[("route", "oral"), "skipped"]  # five oral patients
    assert ("route", "intranasal_esketamine") not in signs.index  # planted 0: no direction to check
