"""Explain params, additivity on every row for every candidate type and the calibration map (pipeline.explain.core)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV

from pipeline.errors import ConfigError, PipelineError
from pipeline.explain import types
from pipeline.explain.core import check_additivity
from pipeline.explain.types import SHAP_PREFIX, ExplainParams
from pipeline.features import build_features
from pipeline.modelling.candidates import make_estimator
from pipeline.modelling.contributions import model_margin
from pipeline.params import read_params_file
from tests.conftest import REPO_ROOT
from tests.explain.conftest import CANDIDATES, LEGACY, SEED, bundle, run, small_params

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
    assert result.metrics["additivity"]["max_abs_error"] <= types.ADDITIVITY_TOLERANCE
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
