"""Fixtures and helpers shared by the evaluate tests: a tiny synthetic cohort with its truth, a fabricated mini
"real" cohort, honest and leaky models."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.core import evaluate_task
from pipeline.evaluate.main import load_candidates, write_outputs
from pipeline.evaluate.types import EvaluateParams, Evaluation
from pipeline.features import FeatureSpec, build_features, build_target
from pipeline.modelling.bundle import OUTPUT_COLUMN, Bundle, load_bundle, save_bundle
from pipeline.modelling.params import TrainParams
from pipeline.modelling.training import save_candidates, train_task
from pipeline.params import read_params_file
from pipeline.tasks import TasksParams, task_predictors
from tests.conftest import REPO_ROOT

SEED = 11
N_BOOT = 200
SITES = ("north", "east", "south")
TINY_SITE = "tiny"  # few test patients: its subgroup row must be suppressed
TASKS = TasksParams.model_validate(read_params_file(REPO_ROOT / "params.yaml")["tasks"])
ACUTE = TASKS.get("acute")


def eval_params(**overrides) -> EvaluateParams:
    raw = read_params_file(REPO_ROOT / "params.yaml")["evaluate"]
    raw = {**raw, "bootstrap_repetitions": N_BOOT, **overrides}
    return EvaluateParams.model_validate(raw)


def tiny_train_params() -> TrainParams:
    return TrainParams.model_validate(
        {
            "cv_folds": 3,
            "selection": {"metric": "log_loss", "rule": "best", "simplicity_order": ["logreg", "xgboost"]},
            "calibration_methods": ["none"],
            "cv_bootstrap_repetitions": 50,
            "n_jobs": 1,
            "internal_validation": {"bootstrap_repetitions": 20},
            "candidates": {
                "logreg": {"search_iterations": 1, "grid": {"C": [1.0]}},
                "xgboost": {"search_iterations": 1, "grid": {"n_estimators": [40], "max_depth": [2]}},
            },
            "gate": {"min_cv_auroc_lower": 0.5, "calibration_slope": [0.5, 2.0]},
            "risk_bands": [{"name": "low", "upper": 0.4}, {"name": "high", "upper": 1.0}],
        }
    )


# --------------------------------------------------------------------------------------------------------------
# fixtures: a tiny synthetic cohort with its truth, a fabricated mini "real" cohort, honest and leaky models
# --------------------------------------------------------------------------------------------------------------


def synthetic_cohort(contract, n: int = 600) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical synthetic rows and their truth (true P(response_acute)); the first 400 train, the rest test."""
    rng = np.random.default_rng(5)
    frame = contract.empty_frame(n)
    frame["patient_id"] = [f"syn-{i:06d}" for i in range(1, n + 1)]
    frame["cohort"] = "synthetic"
    site = rng.choice(SITES, n)
    site[400:406] = TINY_SITE  # six test patients from a tiny site
    frame["site"] = site
    frame["age"] = rng.uniform(18, 80, n).round(1)
    frame["sex"] = rng.choice(["F", "M"], n)
    frame["bmi"] = rng.normal(28, 5, n).clip(15, 60)
    frame["madrs_baseline"] = rng.integers(20, 50, n).astype(float)
    frame["route"] = rng.choice(["iv_racemic", "intranasal_esketamine"], n)
    frame["dose"] = 0.5
    frame["psychotherapy"] = rng.choice(["none", "supportive"], n)
    frame["n_failed_trials"] = rng.integers(2, 8, n)
    logit = (
        -0.3
        - 0.05 * (frame["age"] - 45)
        - 0.25 * (frame["n_failed_trials"].astype(float) - 4)
        + 0.6 * (frame["route"] == "iv_racemic")
    )
    p_true = 1 / (1 + np.exp(-logit.to_numpy(dtype=float)))
    frame["response_acute"] = rng.random(n) < p_true
    truth = pd.DataFrame(
        {"patient_id": frame["patient_id"].to_numpy(dtype=object), "p_response_acute": p_true, "p_response_end": 0.4}
    )
    return contract.coerce(frame), truth


def real_cohort(contract, champion: Bundle) -> pd.DataFrame:
    """A fabricated mini ds005917: 33 patients, 27 with a known acute response (6 responders), 26 with a known
    placebo response (1 responder); only the columns the real cohort records. Outcomes are set from the model's
    own ranking, so the expected AUROC (1) and Spearman sign (-1) are known exactly."""
    n = 33
    rng = np.random.default_rng(9)
    frame = contract.empty_frame(n)
    frame["patient_id"] = [f"sub-NIMH{i:03d}" for i in range(1, n + 1)]
    frame["cohort"] = "ds005917"
    frame["site"] = "nimh"
    frame["age"] = np.linspace(20, 64, n).round(1)
    frame["sex"] = np.where(np.arange(n) % 2, "F", "M")
    frame["bmi"] = rng.normal(29, 4, n)
    frame["madrs_baseline"] = rng.integers(22, 45, n).astype(float)
    frame["route"] = "iv_racemic"
    frame["dose"] = 0.5
    frame["n_sessions"] = 1
    frame["psychotherapy"] = "none"
    frame = contract.coerce(frame)
    p = champion.predict(build_features(frame, champion.feature_spec))
    known = np.arange(n) < 27  # the last six have no day-2 rating
    order = np.argsort(p[known], kind="stable")  # ascending predicted probability
    pct = np.full(n, np.nan)
    pct_known = np.empty(27)
    pct_known[order] = np.r_[np.linspace(0, -45, 21), np.linspace(-55, -90, 6)]  # higher p, larger drop
    pct[known] = pct_known
    frame["madrs_pct_change_acute"] = pct
    frame["madrs_acute"] = frame["madrs_baseline"] * (1 + pct / 100)
    frame["response_acute"] = pd.array(np.where(known, pct <= -50, None), dtype="boolean")
    placebo_known = np.arange(n) < 26
    frame["madrs_placebo_acute"] = np.where(placebo_known, frame["madrs_baseline"] * rng.uniform(0.6, 1.05, n), np.nan)
    placebo_response = np.zeros(n, dtype=bool)
    placebo_response[3] = True
    frame.loc[3, "madrs_placebo_acute"] = frame.loc[3, "madrs_baseline"] * 0.4
    frame["response_placebo_acute"] = pd.array(np.where(placebo_known, placebo_response, None), dtype="boolean")
    return contract.coerce(frame)


def save_model(folder: Path, trained, spec: FeatureSpec, candidate: str) -> Bundle:
    result = next(r for r in trained.results if r.name == candidate)
    info = {
        "task": "acute", "target": spec.target, "candidate": candidate, "calibration": result.calibration,
        "risk_bands": [{"name": "low", "upper": 0.4}, {"name": "high", "upper": 1.0}],
        "training_data_sha256": "0" * 64, "n_train": trained.n_train, "registered_model_name": "trd-acute",
        "package_version": "test",
    }  # fmt: skip
    signature = mlflow.models.infer_signature(trained.example, pd.DataFrame({OUTPUT_COLUMN: [0.0] * 5}))
    save_bundle(
        folder / "model", estimator=trained.candidate_estimators[candidate], feature_spec=spec, info_fields=info,
        signature=signature, input_example=trained.example,
    )  # fmt: skip
    save_candidates(trained, folder / "candidates")
    return load_bundle(folder / "model")


@pytest.fixture(scope="package")
def data(contract):
    cohort, truth = synthetic_cohort(contract)
    return {"train": cohort.iloc[:400].reset_index(drop=True), "test": cohort.iloc[400:].reset_index(drop=True),
            "truth": truth}  # fmt: skip


@pytest.fixture(scope="package")
def honest(contract, data, tmp_path_factory):
    """A model on the acute task's real predictors; the logistic regression is made the champion."""
    spec = FeatureSpec.from_columns("acute", "response_acute", task_predictors(ACUTE, contract))
    X, y = build_features(data["train"], spec), build_target(data["train"], spec)
    trained = train_task("acute", "response_acute", X, y, params=tiny_train_params(), seed=SEED)
    folder = tmp_path_factory.mktemp("honest")
    champion = save_model(folder, trained, spec, "logreg")
    return {"folder": folder, "champion": champion, "candidates": load_candidates(folder / "candidates")}


@pytest.fixture(scope="package")
def cohort(contract, data, honest):
    return pd.concat([data["train"], data["test"], real_cohort(contract, honest["champion"])], ignore_index=True)


@pytest.fixture(scope="package")
def evaluation(data, honest, cohort) -> Evaluation:
    return run(data["test"], honest["champion"], honest["candidates"], data["truth"], cohort)


@pytest.fixture(scope="package")
def written(evaluation, tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("first") / "evaluation", tmp_path_factory.mktemp("second") / "evaluation"
    write_outputs(evaluation, first)
    write_outputs(evaluation, second)
    return first, second


def run(test, champion, candidates, truth, cohort, seed: int = SEED) -> Evaluation:
    return evaluate_task(
        "acute", ACUTE, test, champion=champion, candidates=candidates, truth=truth, cohort=cohort,
        params=eval_params(), seed=seed,
    )  # fmt: skip


def champion_scores(data, honest) -> tuple[np.ndarray, np.ndarray]:
    spec = honest["champion"].feature_spec
    return build_target(data["test"], spec), honest["champion"].predict(build_features(data["test"], spec))
