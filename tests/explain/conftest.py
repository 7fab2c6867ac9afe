"""Fixtures and helpers shared by the explain tests: a small synthetic cohort with its planted truth and models
trained on it."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from threadpoolctl import threadpool_limits

from pipeline.explain import types
from pipeline.explain.core import explain_task, planted_reference
from pipeline.explain.main import write_reports
from pipeline.explain.types import ExplainParams, PlantedReference
from pipeline.features import FeatureSpec, build_features
from pipeline.modelling.bundle import Bundle, ModelInfo, RiskBand
from pipeline.modelling.calibration import CalibratedModel
from pipeline.modelling.candidates import make_estimator
from pipeline.params import read_params_file
from pipeline.tasks import TasksParams
from tests.conftest import REPO_ROOT

matplotlib.use("Agg")

SEED = 7
# a sigmoid CalibratedClassifierCV, as models saved before pipeline.modelling.calibration hold
LEGACY = "legacy_sigmoid"
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


@pytest.fixture(scope="package", autouse=True)
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


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def planted(cohort) -> dict:
    return cohort.attrs["planted"]


@pytest.fixture(scope="package")
def contributions(cohort) -> pd.DataFrame:
    return pd.DataFrame(cohort.attrs["contributions"])


@pytest.fixture(scope="package")
def split(cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    return cohort.iloc[:N_TRAIN].reset_index(drop=True), cohort.iloc[N_TRAIN:].reset_index(drop=True)


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def models(split, spec) -> dict[tuple[str, str], Bundle]:
    train, _ = split
    return {(name, cal): bundle(fit(name, cal, train, spec), spec, name, cal) for name, cal in CANDIDATES}


def run(test: pd.DataFrame, champion: Bundle, reference: PlantedReference, **params) -> types.Explanation:
    return explain_task(
        "acute", ACUTE, test, champion=champion, reference=reference, params=small_params(**params), seed=SEED
    )


@pytest.fixture(scope="package")
def reference(planted, split, contributions) -> PlantedReference:
    return planted_reference(
        planted, split[1], "response_acute", file="planted_effects.json", contributions=contributions
    )


@pytest.fixture(scope="package")
def result(split, models, reference) -> types.Explanation:
    return run(split[1], models[("logreg", "none")], reference)


@pytest.fixture(scope="package")
def written(result, tmp_path_factory) -> tuple[Path, Path]:
    first = tmp_path_factory.mktemp("first") / "explain"
    second = tmp_path_factory.mktemp("second") / "explain"
    write_reports(result, first)
    write_reports(result, second)
    return first, second
