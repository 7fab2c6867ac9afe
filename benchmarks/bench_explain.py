"""Rows per second of the explanation paths the scorer and the explain stage share (pipeline.modelling.contributions).

For each candidate family the pipeline trains, a model is fitted on synthetic rows of the ``acute`` task's
features at the most expensive corner of the ``train`` grid in params.yaml (most trees, deepest), then
``contributions.explain`` (the SHAP values plus their aggregation onto canonical columns, exactly what
``trd score --explain`` and ``dvc repro explain`` call) is timed on fresh synthetic rows:

* ``xgboost``: TreeSHAP through XGBoost's ``pred_contribs``, with the thread setting the pipeline trains with;
* ``hist_gb``: ``shap.TreeExplainer`` (path-dependent TreeSHAP) on scikit-learn histogram gradient boosting;
* ``logreg``: exact linear SHAP of the imputation + scaling + logistic-regression pipeline.

Synthetic rows follow the contract's columns (numbers in range, flags, category levels, 5 % missing); the
timings depend on the model's size and the row count, not on what the values mean. Not a test: it prints.

    .venv/bin/python benchmarks/bench_explain.py [--rows 10000 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.special import expit

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = (10_000, 100_000)
TRAIN_ROWS = 5_000
MISSING = 0.05


def synthetic_rows(n: int, rng: np.random.Generator):
    """Canonical rows for the acute task's predictors, and its FeatureSpec."""
    from pipeline.contract import load_contract  # noqa: PLC0415
    from pipeline.features import FeatureSpec  # noqa: PLC0415
    from pipeline.tasks import TasksParams, task_predictors  # noqa: PLC0415

    contract = load_contract(REPO_ROOT / "configs" / "cohort_schema.yaml")
    tasks = TasksParams.model_validate(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["tasks"])
    columns = task_predictors(tasks.get("acute"), contract)
    frame = {}
    for column in columns:
        if column.dtype == "category":
            values = pd.Series(rng.choice(list(column.levels), n), dtype="string")
        elif column.dtype == "bool":
            values = pd.Series(rng.random(n) < 0.4, dtype="boolean")
        else:
            low = column.min if column.min is not None else 0.0
            high = column.max if column.max is not None else 100.0
            values = pd.Series(rng.uniform(low, min(high, low + 60.0), n))
            if column.dtype == "int":
                values = values.round().astype("Int64")
        values[rng.random(n) < MISSING] = pd.NA
        frame[column.name] = values
    return pd.DataFrame(frame), FeatureSpec.from_columns("acute", "response_acute", columns)


def largest_grid_point(name: str, grid: dict[str, list]) -> dict[str, object]:
    """The grid's most expensive setting: the largest value of every size parameter, the first of the rest."""
    if name == "logreg":
        return {}  # the linear path's cost does not depend on the penalty
    sizes = {"n_estimators", "max_depth", "max_iter", "max_leaf_nodes"}
    return {key: (max(values) if key in sizes else values[0]) for key, values in grid.items()}


def fitted_models(X: pd.DataFrame, y: np.ndarray, seed: int) -> dict[str, object]:
    from pipeline.modelling.candidates import make_estimator  # noqa: PLC0415

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]["candidates"]
    models = {}
    for name in ("xgboost", "hist_gb", "logreg"):
        estimator = make_estimator(name, seed)
        estimator.set_params(**largest_grid_point(name, params[name]["grid"]))
        models[name] = estimator.fit(X, y)
    return models


def describe(name: str, model: object) -> str:
    if name == "xgboost":
        return f"pred_contribs, {model.n_estimators} trees, depth {model.max_depth}, n_jobs {model.n_jobs}"
    if name == "hist_gb":
        return f"shap TreeSHAP, {model.max_iter} trees, depth {model.max_depth}"
    return "exact linear SHAP"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per size; the fastest is reported.")
    parser.add_argument("--seed", type=int, default=20261127)
    args = parser.parse_args()

    from pipeline.features import build_features  # noqa: PLC0415
    from pipeline.modelling.contributions import explain, model_margin  # noqa: PLC0415

    rng = np.random.default_rng(args.seed)
    train, spec = synthetic_rows(TRAIN_ROWS, rng)
    X_train = build_features(train, spec)
    logit = 0.04 * (X_train["age"].fillna(45) - 45) - 0.8 * X_train["route=intranasal_esketamine"].fillna(0)
    y = (rng.random(TRAIN_ROWS) < expit(logit.to_numpy())).astype(int)
    models = fitted_models(X_train, y, args.seed)
    data = {n: build_features(synthetic_rows(n, rng)[0], spec) for n in args.rows}
    for model in models.values():  # first call pays one-off costs (imports, explainer set-up)
        explain(model, X_train.head(100), spec)

    print(f"{'path':<10} {'rows':>8} {'seconds':>8} {'rows/s':>10}  {'max |additivity error|':>22}  model")
    for name, model in models.items():
        for n, X in data.items():
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                explained = explain(model, X, spec)
                times.append(time.perf_counter() - started)
            error = float(np.abs(explained.margin - model_margin(model, X)).max())
            best = min(times)
            print(f"{name:<10} {n:>8} {best:>8.3f} {n / best:>10,.0f}  {error:>22.2e}  {describe(name, model)}")


if __name__ == "__main__":
    main()
