"""Explain stage on a tiny cohort with planted effects: additivity on every row for every candidate type
(calibrated ones included, with the calibration map checked), fidelity metrics that recover a planted ranking and
expose a scrambled explanation, hand-checked metric arithmetic, the missing-truth paths, identifier-free outputs
with waterfalls named by row number, the stage end to end with MLflow, and dvc.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.text import Text
from mlflow import MlflowClient
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from threadpoolctl import threadpool_limits

from pipeline import explain
from pipeline.errors import ConfigError, PipelineError
from pipeline.explain import (
    LOG_ODDS,
    SHAP_PREFIX,
    ExplainParams,
    PlantedReference,
    check_additivity,
    example_rows,
    explain_task,
    fidelity_checks,
    figures,
    parse_planted_truth,
    planted_reference,
    read_planted_effects,
    write_per_patient,
    write_reports,
)
from pipeline.features import FeatureSpec, build_features
from pipeline.io import write_parquet
from pipeline.modelling.bundle import OUTPUT_COLUMN, Bundle, ModelInfo, RiskBand, load_bundle, save_bundle
from pipeline.modelling.calibration import CalibratedModel
from pipeline.modelling.candidates import make_estimator
from pipeline.modelling.contributions import model_margin
from pipeline.params import read_params_file
from pipeline.tasks import TasksParams
from tests.conftest import REPO_ROOT, register_training_run

matplotlib.use("Agg")

SEED = 7
LEGACY = (
    "legacy_sigmoid"  # a sigmoid CalibratedClassifierCV, as models saved before pipeline.modelling.calibration hold
)
N_TRAIN, N_TEST = 3000, 600
TASKS = TasksParams.model_validate(read_params_file(REPO_ROOT / "params.yaml")["tasks"])
ACUTE = TASKS.get("acute")
FEATURES = ("age", "sex", "bmi", "family_history_aud", "prior_ect", "anxious_depression", "route", "dose")
# term -> (canonical features, planted log-odds coefficient); 0 marks a noise feature, as in planted_effects.json
TERMS: dict[str, tuple[tuple[str, ...], float]] = {
    "age_per_10y": (("age",), -0.3),
    "sex_female": (("sex",), 0.0),
    "bmi_per_5": (("bmi",), 0.25),
    "family_history_aud": (("family_history_aud",), 0.8),
    "prior_ect": (("prior_ect",), -0.7),
    "anxious_depression": (("anxious_depression",), 0.0),
    "route_intranasal_esketamine": (("route",), -1.0),
    "route_oral": (("route",), -0.6),
    "route_im_sc": (("route",), 0.0),
    "esketamine_older_adult": (("route", "age"), -0.8),
    "dose": (("dose",), 0.0),
}
PLANTED_EFFECTS = ("age", "bmi", "family_history_aud", "prior_ect", "route")
NOISE = ("sex", "anxious_depression", "dose")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny fits: OpenMP threads only add contention (histogram gradient boosting slows ~10x on a busy machine)."""
    with threadpool_limits(limits=1):
        yield


def small_params(**overrides) -> ExplainParams:
    raw = {
        "figure_rows": 300, "example_patients": 2, "dependence_top_k": 1, "sign_min_rows": 20,
        "fidelity_exclude": {}, **overrides,
    }  # fmt: skip
    return ExplainParams.model_validate(raw)


# --------------------------------------------------------------------------------------------------------------
# fixtures: a cohort generated from known coefficients, its planted_effects.json, and fitted candidates
# --------------------------------------------------------------------------------------------------------------


def term_values(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    age = frame["age"].to_numpy(dtype=float)
    route = frame["route"].astype(str).to_numpy()
    flag = {name: frame[name].astype(bool).to_numpy(dtype=float) for name in ("family_history_aud", "prior_ect")}
    return {
        "age_per_10y": age / 10,
        "sex_female": (frame["sex"].astype(str) == "F").to_numpy(dtype=float),
        "bmi_per_5": frame["bmi"].to_numpy(dtype=float) / 5,
        **flag,
        "anxious_depression": frame["anxious_depression"].astype(bool).to_numpy(dtype=float),
        "route_intranasal_esketamine": (route == "intranasal_esketamine").astype(float),
        "route_oral": (route == "oral").astype(float),
        "route_im_sc": (route == "im_sc").astype(float),
        "esketamine_older_adult": ((route == "intranasal_esketamine") & (age >= 65)).astype(float),
        "dose": frame["dose"].to_numpy(dtype=float),
    }


def planted_effects_of(frame: pd.DataFrame) -> dict:
    """planted_effects.json for TERMS: importance = mean |coefficient * (term - mean)| per feature group."""
    terms = term_values(frame)
    contributions: dict[str, np.ndarray] = {}
    for name, (features, coefficient) in TERMS.items():
        key = ":".join(features)
        contributions[key] = contributions.get(key, 0.0) + coefficient * (terms[name] - terms[name].mean())
    return {
        "terms": {name: {"features": list(features), "encoding": "test"} for name, (features, _) in TERMS.items()},
        "outcomes": {
            "response_acute": {
                "exact": True,
                "coefficients": {name: coefficient for name, (_, coefficient) in TERMS.items()},
                "feature_importance": {key: float(np.abs(v).mean()) for key, v in contributions.items()},
            },
            "response_end_early": {"exact": True, "note": "early markers enter non-linearly, so no coefficients"},
        },
    }


def true_contributions_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Every patient's exact SHAP value per feature in the true log-odds (background: this cohort), as the
    generator's true_contributions.parquet: centred terms, the route x age product split by Shapley."""
    terms = term_values(frame)
    values: dict[str, np.ndarray] = {}
    for name, (features, coefficient) in TERMS.items():
        if coefficient == 0 or len(features) > 1:
            continue
        values[features[0]] = values.get(features[0], 0.0) + coefficient * (terms[name] - terms[name].mean())
    u = (frame["route"].astype(str) == "intranasal_esketamine").to_numpy(dtype=float)
    v = (frame["age"].to_numpy(dtype=float) >= 65).astype(float)
    beta = TERMS["esketamine_older_adult"][1]
    values["route"] += beta * 0.5 * ((u * v.mean() - (u * v).mean()) + (u * v - u.mean() * v))
    values["age"] += beta * 0.5 * ((u.mean() * v - (u * v).mean()) + (u * v - u * v.mean()))
    return pd.DataFrame(
        {"patient_id": frame["patient_id"].to_numpy(dtype=object)}
        | {f"response_acute.{name}": value for name, value in values.items()}
    )


@pytest.fixture(scope="module")
def cohort(contract) -> pd.DataFrame:
    rng = np.random.default_rng(SEED)
    n = N_TRAIN + N_TEST
    frame = contract.empty_frame(n)
    frame["patient_id"] = [f"syn-{i:06d}" for i in range(1, n + 1)]
    frame["cohort"] = "synthetic"
    frame["site"] = "north"
    frame["age"] = rng.uniform(18, 80, n).round(1)
    frame["sex"] = rng.choice(["F", "M"], n)
    frame["bmi"] = rng.normal(28, 5, n).clip(16, 55)
    frame["family_history_aud"] = rng.random(n) < 0.3
    frame["prior_ect"] = rng.random(n) < 0.25
    frame["anxious_depression"] = rng.random(n) < 0.5
    frame["route"] = rng.choice(["iv_racemic", "intranasal_esketamine", "oral"], n, p=[0.5, 0.3, 0.2])
    frame["dose"] = rng.choice([0.5, 0.75, 1.0], n)
    terms = term_values(frame)
    logit = 1.5 + sum(coefficient * terms[name] for name, (_, coefficient) in TERMS.items())
    frame["response_acute"] = rng.random(n) < expit(logit)
    frame.attrs["planted"] = planted_effects_of(frame)  # from the true values, as the generator does
    # as plain lists: pandas compares attrs when frames are combined, and frames do not compare to a bool
    frame.attrs["contributions"] = true_contributions_of(frame).to_dict(orient="list")
    frame.loc[rng.random(n) < 0.08, "bmi"] = np.nan  # then gaps, as in a clinic export
    return contract.coerce(frame)


@pytest.fixture(scope="module")
def planted(cohort) -> dict:
    return cohort.attrs["planted"]


@pytest.fixture(scope="module")
def contributions(cohort) -> pd.DataFrame:
    return pd.DataFrame(cohort.attrs["contributions"])


@pytest.fixture(scope="module")
def split(cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    return cohort.iloc[:N_TRAIN].reset_index(drop=True), cohort.iloc[N_TRAIN:].reset_index(drop=True)


@pytest.fixture(scope="module")
def spec(contract) -> FeatureSpec:
    return FeatureSpec.from_columns("acute", "response_acute", [contract.column(c) for c in FEATURES])


def fit(candidate: str, calibration: str, train: pd.DataFrame, spec: FeatureSpec):
    estimator = make_estimator(candidate, seed=SEED, interactions=[("route", "age")])
    if candidate == "xgboost":
        estimator.set_params(n_estimators=60, max_depth=3)
    elif candidate == "hist_gb":
        estimator.set_params(max_iter=60, max_depth=3)
    if calibration == LEGACY:  # models saved before pipeline.modelling.calibration
        estimator = CalibratedClassifierCV(estimator, method="sigmoid", cv=3, ensemble=False)
    elif calibration != "none":
        estimator = CalibratedModel(estimator, method=calibration, cv_folds=3, seed=SEED)
    return estimator.fit(build_features(train, spec), train["response_acute"].astype(bool).to_numpy(dtype=int))


def bundle(estimator, spec: FeatureSpec, candidate: str, calibration: str = "none") -> Bundle:
    info = ModelInfo(
        task="acute", target="response_acute", candidate=candidate, calibration=calibration,
        estimator_sha256="0" * 64, risk_bands=(RiskBand(name="all", upper=1.0),), training_data_sha256="0" * 64,
        n_train=N_TRAIN, registered_model_name="trd-acute", package_version="test",
    )  # fmt: skip
    return Bundle(path=Path("unsaved"), estimator=estimator, feature_spec=spec, info=info)


CANDIDATES = [
    ("logreg", "none"),
    ("logreg_spline", "none"),
    ("xgboost", "none"),
    ("hist_gb", "none"),
    ("xgboost", "sigmoid"),  # pipeline.modelling.calibration reads the log-odds: the map is linear on that scale
    ("hist_gb", "isotonic"),
    ("xgboost", LEGACY),  # CalibratedClassifierCV: XGBoost has no decision_function, so it reads the probability
]


@pytest.fixture(scope="module")
def models(split, spec) -> dict[tuple[str, str], Bundle]:
    train, _ = split
    return {(name, cal): bundle(fit(name, cal, train, spec), spec, name, cal) for name, cal in CANDIDATES}


def run(test: pd.DataFrame, champion: Bundle, reference: PlantedReference, **params) -> explain.Explanation:
    return explain_task(
        "acute", ACUTE, test, champion=champion, reference=reference, params=small_params(**params), seed=SEED
    )


@pytest.fixture(scope="module")
def reference(planted, split, contributions) -> PlantedReference:
    return planted_reference(
        planted, split[1], "response_acute", file="planted_effects.json", contributions=contributions
    )


@pytest.fixture(scope="module")
def result(split, models, reference) -> explain.Explanation:
    return run(split[1], models[("logreg", "none")], reference)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory) -> tuple[Path, Path]:
    first = tmp_path_factory.mktemp("first") / "explain"
    second = tmp_path_factory.mktemp("second") / "explain"
    write_reports(result, first)
    write_reports(result, second)
    return first, second


# --------------------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------------------


def test_params_section_parses_and_refuses_bad_values() -> None:
    params = ExplainParams.model_validate(read_params_file(REPO_ROOT / "params.yaml")["explain"])
    assert params.figure_rows >= 50
    with pytest.raises(ValueError, match="extra"):
        small_params(figure_row=10)
    with pytest.raises(ValueError, match="greater than or equal"):
        small_params(figure_rows=10)


def test_excluding_a_feature_the_model_does_not_use_is_a_config_error(split, models, reference) -> None:
    with pytest.raises(ConfigError, match="madrs_24h"):
        run(split[1], models[("logreg", "none")], reference, fidelity_exclude={"acute": ["madrs_24h"]})


# --------------------------------------------------------------------------------------------------------------
# additivity and what is explained
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("candidate", "calibration"), CANDIDATES)
def test_values_plus_base_reproduce_the_margin_for_every_test_row(
    split, models, reference, spec, candidate: str, calibration: str
) -> None:
    _, test = split
    champion = models[(candidate, calibration)]
    result = run(test, champion, reference)
    frame = result.per_patient
    assert len(frame) == len(test)  # every test row, not only the figure sample
    shap_columns = [f"{SHAP_PREFIX}{c}" for c in spec.input_columns]
    assert [c for c in frame.columns if c.startswith(SHAP_PREFIX)] == shap_columns
    features = build_features(test, spec)
    margin = model_margin(champion.estimator, features)
    reconstructed = frame["base_value"].to_numpy() + frame[shap_columns].to_numpy().sum(axis=1)
    np.testing.assert_allclose(reconstructed, margin, atol=1e-5)
    assert result.metrics["additivity"]["max_abs_error"] <= explain.ADDITIVITY_TOLERANCE
    np.testing.assert_allclose(frame["p_response"], champion.predict(features))
    assert frame["test_row"].tolist() == list(range(len(test)))


@pytest.mark.parametrize(("candidate", "calibration"), [c for c in CANDIDATES if c[1] in ("sigmoid", LEGACY)])
def test_a_sigmoid_calibration_map_reproduces_the_reported_probability(
    split, models, reference, candidate: str, calibration: str
) -> None:
    """The report says how the explained log-odds become the score; its numbers must give the score exactly."""
    result = run(split[1], models[(candidate, calibration)], reference)
    described = result.report["calibration"]
    margin = result.per_patient["margin"].to_numpy()
    if described["calibrator_input"] == "log-odds":
        expected = expit(described["slope"] * margin + described["intercept"])
        assert f"multiply a SHAP value by {described['slope']:.4g}" in described["description"]
    else:
        expected = expit(described["slope"] * expit(margin) + described["intercept"])
    np.testing.assert_allclose(result.per_patient["p_response"], expected, atol=1e-6)  # XGBoost sums in float32
    assert "sigmoid calibration" in result.report["method"]


def test_isotonic_and_uncalibrated_maps_are_described(split, models, reference) -> None:
    isotonic = run(split[1], models[("hist_gb", "isotonic")], reference).report["calibration"]
    assert isotonic["calibration"] == "isotonic"
    assert isotonic["calibrator_input"] == "log-odds"
    assert "isotonic" in isotonic["description"]
    plain = run(split[1], models[("xgboost", "none")], reference).report["calibration"]
    assert plain["calibration"] == "none"
    assert plain["explained_model"] == "XGBClassifier"


def test_a_calibrated_ensemble_is_refused_rather_than_half_explained(split, spec, reference) -> None:
    # ensemble=True averages one calibrated model per fold: explaining any one of them would be wrong
    train, test = split
    ensemble = CalibratedClassifierCV(make_estimator("logreg", seed=SEED), method="sigmoid", cv=2, ensemble=True)
    ensemble.fit(build_features(train, spec), train["response_acute"].astype(bool).to_numpy(dtype=int))
    with pytest.raises(TypeError, match="calibrated ensemble of 2 models"):
        run(test, bundle(ensemble, spec, "logreg", "sigmoid"), reference)


def test_a_non_additive_explanation_stops_the_stage(result) -> None:
    values = result.values.copy()
    margin = result.base_value + values.sum(axis=1).to_numpy()
    assert check_additivity(values, result.base_value, margin) < 1e-12
    values.iloc[5, 0] += 1e-3
    with pytest.raises(PipelineError, match=r"not additive.*1 of \d+ rows.*test row 5"):
        check_additivity(values, result.base_value, margin)
    values.iloc[5, 0] = np.nan
    with pytest.raises(PipelineError, match="not additive"):
        check_additivity(values, result.base_value, margin)


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


# --------------------------------------------------------------------------------------------------------------
# no truth, or a broken one
# --------------------------------------------------------------------------------------------------------------


def test_synthetic_patients_without_planted_effects_stop_the_stage(split, tmp_path) -> None:
    missing = tmp_path / "planted_effects.json"
    assert read_planted_effects(missing) is None
    with pytest.raises(PipelineError, match="no planted effects") as caught:
        planted_reference(read_planted_effects(missing), split[1], "response_acute", file=missing)
    assert "dvc repro synthesize" in str(caught.value)


def test_real_patients_report_fidelity_unavailable(split, models, tmp_path) -> None:
    real = split[1].assign(cohort=pd.Categorical(["ds005917"] * len(split[1])))
    reference = planted_reference(None, real, "response_acute", file="planted_effects.json")
    assert reference.truth is None
    assert "fidelity unavailable" in reference.reason
    result = run(real, models[("xgboost", "none")], reference, example_patients=0, dependence_top_k=0)
    assert "fidelity" not in result.metrics
    assert result.report["fidelity"] == {"available": False, "reason": reference.reason}
    assert "fidelity_role" not in result.importance.columns
    assert "fidelity.png" not in figures(result)
    write_reports(result, tmp_path / "explain")
    assert json.loads((tmp_path / "explain/fidelity.json").read_text())["n_explained"] == len(real)
    assert not (tmp_path / "explain/sign_checks.csv").exists()


def test_an_outcome_without_coefficients_is_reported_not_fatal(planted, split) -> None:
    reference = planted_reference(planted, split[1], "response_end_early", file="x")
    assert reference.truth is None
    assert "no coefficients (early markers enter non-linearly" in reference.reason


def test_broken_planted_effects_are_a_clear_error(tmp_path, planted) -> None:
    broken = tmp_path / "planted_effects.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(PipelineError, match="planted effects unreadable"):
        read_planted_effects(broken)
    without_terms = {**planted, "terms": {}}
    with pytest.raises(PipelineError, match="malformed"):
        parse_planted_truth(without_terms, "response_acute", file=broken)


# --------------------------------------------------------------------------------------------------------------
# outputs: identifiers, figures, determinism
# --------------------------------------------------------------------------------------------------------------


def figure_texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def test_every_figure_says_log_odds_and_shows_no_identifier(result, split) -> None:
    import matplotlib.pyplot as plt

    ids = set(split[1]["patient_id"].astype(str))
    drawers = figures(result)
    assert {"importance_bar.png", "beeswarm.png", "fidelity.png"} <= set(drawers)
    assert sum(name.startswith("dependence_") for name in drawers) == 1
    for name, draw in drawers.items():
        figure = draw()
        texts = figure_texts(figure)
        plt.close(figure)
        assert any(LOG_ODDS in text for text in texts), name
        assert not ids & {word for text in texts for word in text.replace("\n", " ").split()}, name


def test_waterfalls_are_named_by_test_row_number(result, written, split) -> None:
    import matplotlib.pyplot as plt

    rows = result.report["rows"]["examples"]
    assert len(rows) == 2
    on_disk = sorted(p.name for p in (written[0] / "figures").glob("waterfall_*.png"))
    assert on_disk == sorted(f"waterfall_row_{row}.png" for row in rows)
    for row in rows:
        figure = figures(result)[f"waterfall_row_{row}.png"]()
        title = " ".join(figure_texts(figure))
        plt.close(figure)
        assert f"test row {row}," in title
        assert split[1]["patient_id"].iloc[row] not in title


def test_example_patients_span_the_predicted_risk_and_are_seeded() -> None:
    p = np.linspace(0.05, 0.95, 400)
    picks = example_rows(p, 4, np.random.default_rng(1))
    assert [int(row // 100) for row in picks] == [0, 1, 2, 3]  # one per quarter of the risk ordering
    assert picks.tolist() == example_rows(p, 4, np.random.default_rng(1)).tolist()
    assert example_rows(p, 0, np.random.default_rng(1)).size == 0


def test_report_outputs_hold_no_identifiers_and_are_byte_identical(written, split) -> None:
    first, second = written
    ids = split[1]["patient_id"].astype(str).tolist()
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert {"fidelity.json", "explanation.json", "importance.csv", "sign_checks.csv"} <= {str(f) for f in files}
    for relative in files:
        content = (first / relative).read_bytes()
        assert content == (second / relative).read_bytes(), relative
        assert not [pid for pid in ids if pid.encode() in content], relative
        assert b"patient_id" not in content or relative.name == "explanation.json", relative  # only as a column name
    table = pd.read_csv(first / "importance.csv")
    assert set(table["feature"]) == set(FEATURES)  # canonical names, not route=oral or missingindicator_bmi


def test_fidelity_json_holds_only_numbers(written) -> None:
    payload = json.loads((written[0] / "fidelity.json").read_text())

    def leaves(node):
        for value in node.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    assert all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in leaves(payload))
    expected = {"patient_correlation_median", "rank_spearman_true", "noise_share", "sign_agreement", "noise_best_rank"}
    assert expected <= set(payload["fidelity"])


def test_per_patient_values_keep_the_identifier_under_data(result, split, tmp_path) -> None:
    folder = tmp_path / "data" / "explanations" / "acute"
    write_per_patient(result, folder)
    frame = pd.read_parquet(folder / explain.PER_PATIENT_FILE)
    assert frame["patient_id"].tolist() == split[1]["patient_id"].astype(str).tolist()
    assert frame.loc[7, "test_row"] == 7


# --------------------------------------------------------------------------------------------------------------
# the stage end to end, with MLflow, and dvc.yaml
# --------------------------------------------------------------------------------------------------------------


def test_main_writes_both_outputs_and_logs_only_the_reports_to_the_training_run(
    project_root, mlflow_store, split, models, planted, contributions, spec
) -> None:
    train, test = split
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["explain"] = small_params(example_patients=1, dependence_top_k=0).model_dump(mode="json")
    (project_root / "params.yaml").write_text(yaml.safe_dump(params))
    (project_root / "dvc.yaml").write_text("stages: {}\n")
    write_parquet(test, project_root / "data/processed/acute/test.parquet")
    (project_root / "data/raw/synthetic").mkdir(parents=True)
    (project_root / "data/raw/synthetic/planted_effects.json").write_text(json.dumps(planted))
    write_parquet(contributions, project_root / "data/raw/synthetic/true_contributions.parquet")
    champion = models[("xgboost", "none")]
    example = build_features(train.head(5), spec)
    info = json.loads(champion.info.model_dump_json())
    info.pop("estimator_sha256")
    save_bundle(
        project_root / "models/acute", estimator=champion.estimator, feature_spec=spec, info_fields=info,
        signature=mlflow.models.infer_signature(example, pd.DataFrame({OUTPUT_COLUMN: [0.0] * 5})),
        input_example=example,
    )  # fmt: skip
    sha256 = load_bundle(project_root / "models/acute").info.estimator_sha256
    run_id = register_training_run(project_root, sha256, SEED)
    client = MlflowClient()

    explain.main("acute")

    folder = project_root / "reports/acute/explain"
    payload = json.loads((folder / "fidelity.json").read_text())
    assert payload["n_explained"] == len(test)
    per_patient = pd.read_parquet(project_root / "data/explanations/acute/shap.parquet")
    assert len(per_patient) == len(test)
    assert "patient_id" in per_patient.columns
    run_data = client.get_run(run_id).data
    for key in ("patient_correlation_median", "rank_spearman_true", "noise_share"):
        assert run_data.metrics[f"explain.fidelity.{key}"] == pytest.approx(payload["fidelity"][key])
    logged = {a.path for a in client.list_artifacts(run_id, "explain")}
    assert {"explain/fidelity.json", "explain/importance.csv", "explain/figures"} <= logged
    figures_logged = {a.path for a in client.list_artifacts(run_id, "explain/figures")}
    assert "explain/figures/beeswarm.png" in figures_logged
    every = [a.path for a in client.list_artifacts(run_id)]
    assert not [p for p in every if "shap.parquet" in p or "explanations" in p]  # per-patient values never logged


def test_dvc_yaml_declares_the_stage_and_its_metrics_for_every_task() -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["explain"]
    assert stage["foreach"] == "${tasks}"
    assert stage["do"]["cmd"] == "python -m pipeline explain ${key}"
    assert stage["do"]["params"] == [p.replace("{task}", "${key}") for p in explain.PARAMS_USED]
    assert stage["do"]["outs"] == ["reports/${key}/explain", "data/explanations/${key}"]
    deps = stage["do"]["deps"]
    for needed in (
        "pipeline/explain.py", "pipeline/modelling", "models/${key}", "data/processed/${key}/test.parquet",
        "data/raw/synthetic/planted_effects.json", "data/raw/synthetic/true_contributions.parquet",
    ):  # fmt: skip
        assert needed in deps
    # the per-patient out must not overlap the split stage's data/processed/<task>
    assert not any(out.startswith("data/processed") for out in stage["do"]["outs"])
    for task in TASKS.root:
        assert f"reports/{task}/explain/headline.json" in dvc["metrics"]
        assert f"reports/{task}/explain/figures" in dvc["plots"]


def test_course_early_leaves_madrs_baseline_out_of_fidelity() -> None:
    params = ExplainParams.model_validate(read_params_file(REPO_ROOT / "params.yaml")["explain"])
    assert "madrs_baseline" in params.fidelity_exclude.get("course_early", ())
    assert set(params.fidelity_exclude) <= set(TASKS.root)
