"""SHAP contributions: additive, agreeing with shap, credited to the right clinical column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shap
from sklearn.calibration import CalibratedClassifierCV
from xgboost import XGBClassifier

from pipeline.contract import CohortContract
from pipeline.features import FeatureSpec, build_features
from pipeline.modelling.calibration import CalibratedModel
from pipeline.modelling.candidates import make_estimator
from pipeline.modelling.contributions import explain, model_margin, top_drivers


@pytest.fixture(scope="module")
def data(contract: CohortContract) -> tuple[pd.DataFrame, FeatureSpec, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 600
    cohort = contract.empty_frame(n)
    cohort["bmi"] = rng.normal(28, 5, n)
    cohort.loc[rng.random(n) < 0.15, "bmi"] = np.nan
    cohort["age"] = rng.normal(45, 12, n)
    route = rng.choice(["iv_racemic", "intranasal_esketamine", "oral"], n)
    fh_aud = rng.random(n) < 0.3
    cohort["route"] = pd.array(route, dtype="string")
    cohort["family_history_aud"] = pd.array(fh_aud, dtype="boolean")
    logit = 0.1 * (cohort["bmi"].fillna(28).to_numpy() - 28) + 0.8 * fh_aud - 0.5 * (route == "oral")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    spec = FeatureSpec.from_columns(
        "t", "response_acute", [contract.column(c) for c in ("age", "bmi", "route", "family_history_aud")]
    )
    return cohort, spec, build_features(cohort, spec), y


@pytest.mark.parametrize("candidate", ["logreg", "logreg_spline", "xgboost", "hist_gb"])
@pytest.mark.parametrize("calibrated", ["none", "sigmoid", "legacy"])
def test_values_plus_base_reproduce_the_margin(data, candidate: str, calibrated: str) -> None:
    _cohort, spec, X, y = data
    estimator = make_estimator(candidate, seed=0, interactions=[("route", "age")])
    if candidate in ("xgboost", "hist_gb"):
        estimator.set_params(**({"n_estimators": 40} if candidate == "xgboost" else {"max_iter": 40}))
    if calibrated == "sigmoid":
        estimator = CalibratedModel(estimator, method="sigmoid", cv_folds=3, seed=0)
    elif calibrated == "legacy":  # models saved before pipeline.modelling.calibration still explain
        estimator = CalibratedClassifierCV(estimator, method="sigmoid", cv=3, ensemble=False)
    estimator.fit(X, y)
    explained = explain(estimator, X, spec)
    assert list(explained.values.columns) == ["age", "bmi", "route", "family_history_aud"]
    np.testing.assert_allclose(explained.margin, model_margin(estimator, X), atol=1e-4)
    assert ("sigmoid calibration" in explained.method) is (calibrated != "none")


def _interventional_shapley(f, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Brute force: phi_i = sum over coalitions S without i of |S|!(m-|S|-1)!/m! [v(S + i) - v(S)], with
    v(S) = mean over background rows of f(x on S, background row elsewhere)."""
    from itertools import combinations
    from math import factorial

    m = x.size

    def value(coalition: tuple[int, ...]) -> float:
        rows = background.copy()
        rows[:, list(coalition)] = x[list(coalition)]
        return float(f(rows).mean())

    phi = np.zeros(m)
    for i in range(m):
        others = [j for j in range(m) if j != i]
        for size in range(m):
            for coalition in combinations(others, size):
                weight = factorial(size) * factorial(m - size - 1) / factorial(m)
                phi[i] += weight * (value(tuple(sorted((*coalition, i)))) - value(coalition))
    return phi


def test_spline_model_values_are_the_exact_interventional_shapley_values(contract) -> None:
    """Splines credited to their feature and a declared product split by Shapley: equal to brute force over
    coalitions with the training data as background (no missing values, so imputation plays no part)."""
    rng = np.random.default_rng(3)
    n = 80
    cohort = contract.empty_frame(n)
    cohort["age"] = rng.normal(50, 12, n).round()
    cohort["bmi"] = rng.normal(28, 4, n)
    cohort["route"] = pd.array(rng.choice(["iv_racemic", "intranasal_esketamine"], n), dtype="string")
    spec = FeatureSpec.from_columns("t", "response_acute", [contract.column(c) for c in ("age", "bmi", "route")])
    X = build_features(cohort, spec)
    y = (rng.random(n) < 0.4).astype(int)
    model = make_estimator("logreg_spline", seed=0, interactions=[("route", "age")]).set_params(
        model__C=10.0, design__n_knots=3
    )
    model.fit(X, y)
    assert any(t[0] == "product" for t in model[0].terms_)
    explained = explain(model, X, spec)
    matrix = X.to_numpy()
    for row in (0, 7, 41):
        brute = _interventional_shapley(model.decision_function, matrix[row], matrix)
        # the one-hot columns of route are one feature: sum the brute-force values of its levels
        route = [i for i, c in enumerate(X.columns) if c.startswith("route=")]
        expected = [brute[0], brute[1], brute[route].sum()]
        np.testing.assert_allclose(explained.values.iloc[row].to_numpy(), expected, atol=1e-9)


def test_xgboost_pred_contribs_agree_with_shap_tree_explainer(data) -> None:
    _, _spec, X, y = data
    model = XGBClassifier(n_estimators=25, max_depth=3, random_state=0).fit(X, y)
    native = model.get_booster().predict(__import__("xgboost").DMatrix(X, missing=np.nan), pred_contribs=True)
    via_shap = shap.TreeExplainer(model).shap_values(X)
    np.testing.assert_allclose(native[:, :-1], via_shap, atol=1e-5)


def test_one_hot_levels_are_summed_into_their_category(data) -> None:
    _, spec, X, y = data
    model = XGBClassifier(n_estimators=25, max_depth=3, random_state=0).fit(X, y)
    raw = model.get_booster().predict(__import__("xgboost").DMatrix(X, missing=np.nan), pred_contribs=True)
    route_columns = [i for i, c in enumerate(X.columns) if c.startswith("route=")]
    explained = explain(model, X, spec)
    np.testing.assert_allclose(explained.values["route"], raw[:, route_columns].sum(axis=1), atol=1e-6)


def test_linear_missingness_indicator_is_credited_to_its_feature(data) -> None:
    _, spec, X, y = data
    model = make_estimator("logreg", seed=0).fit(X, y)
    explained = explain(model, X, spec)
    missing = X["bmi"].isna().to_numpy()
    # with bmi missing, the bmi contribution is the indicator's plus the imputed value's, not zero
    assert np.all(np.isfinite(explained.values.loc[missing, "bmi"]))
    assert explained.values.loc[missing, "bmi"].nunique() == 1


def test_top_drivers_read_as_text_and_columns(data) -> None:
    cohort, spec, X, y = data
    model = make_estimator("logreg", seed=0).fit(X, y)
    explained = explain(model, X.head(4), spec)
    drivers = top_drivers(explained, cohort.head(4), spec, k=2)
    assert list(drivers.columns) == [
        "driver_1_feature", "driver_1_contribution", "driver_2_feature", "driver_2_contribution", "drivers",
    ]  # fmt: skip
    first = drivers.iloc[0]
    assert abs(first["driver_1_contribution"]) >= abs(first["driver_2_contribution"])
    assert first["drivers"].count(" the probability") == 2
    assert ("raises" in first["drivers"]) or ("lowers" in first["drivers"])
    bmi_rows = drivers[drivers["driver_1_feature"] == "bmi"]
    for _, row in bmi_rows.iterrows():
        assert "kg/m2" in row["drivers"]


def test_unknown_model_type_is_refused(data) -> None:
    from sklearn.ensemble import RandomForestClassifier

    _, spec, X, y = data
    with pytest.raises(TypeError, match="no explanation path"):
        explain(RandomForestClassifier(n_estimators=5).fit(X.fillna(0), y), X, spec)
