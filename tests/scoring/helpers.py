"""Shared by the scorer's tests: canonical patient rows, a small model in the pipeline's bundle format, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.contract import CohortContract
from pipeline.features import FeatureSpec, build_features, training_ranges
from pipeline.harmonise import harmonise, rules_from_tabular_spec
from pipeline.modelling.bundle import feature_signature, save_bundle
from pipeline.modelling.candidates import make_estimator
from pipeline.scales import load_scale_conversions
from pipeline.scoring.layout import load_canonical_format
from pipeline.sources.spec import TabularSourceSpec
from pipeline.sources.tabular import stage_tabular
from tests.conftest import REPO_ROOT

runner = CliRunner()
PREDICTORS = ("age", "sex", "bmi", "madrs_baseline", "route", "family_history_aud", "benzodiazepine_mg_deq")


def canonical_rows(contract: CohortContract, n: int, seed: int = 0) -> pd.DataFrame:
    """Patients in the canonical input layout, as a clinic would export them (text codes)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:05d}" for i in range(n)],
            "age": rng.integers(18, 80, n).astype(float),
            "sex": rng.choice(["F", "M", "female", "Male"], n),
            "bmi": rng.normal(28, 4, n).clip(16, 50).round(1),
            "madrs_baseline": rng.integers(20, 50, n).astype(float),
            "route": rng.choice(["iv_racemic", "intranasal_esketamine", "oral"], n),
            "family_history_aud": rng.choice(["yes", "no", "1", "0"], n),
            "benzodiazepine_mg_deq": rng.choice([0.0, 5.0, 10.0], n),
        }
    )


def save_test_model(
    contract: CohortContract,
    folder: Path,
    logit: Callable[[pd.DataFrame], pd.Series],
    scoring_rule: dict | None = None,
    info_overrides: dict | None = None,
) -> Path:
    """A small XGBoost model in this pipeline's bundle format, trained on canonical rows whose outcome follows
    ``logit(features)``; shared with the Dask tests. Its scoring rule requires madrs_baseline and allows up to 5
    of the 7 predictors missing (``scoring_rule`` replaces it); its training ranges come from its training rows."""
    spec = FeatureSpec.from_columns("acute", "response_acute", [contract.column(c) for c in PREDICTORS])
    fmt = canonical_layout(contract)
    staged = stage_tabular(
        canonical_rows(contract, 500, seed=1), fmt, "train.csv", required=["patient_id", *PREDICTORS]
    )
    scales = load_scale_conversions(REPO_ROOT / "configs" / "scale_conversions.yaml")
    cohort = harmonise(staged.rows, rules_from_tabular_spec(fmt, constants={"cohort": "synthetic"}), contract, scales)
    X = build_features(cohort.cohort, spec)
    y = (np.random.default_rng(2).random(len(X)) < 1 / (1 + np.exp(-logit(X)))).astype(int)
    estimator = make_estimator("xgboost", seed=0).set_params(n_estimators=30, max_depth=2).fit(X, y)
    info = {
        "task": "acute", "target": "response_acute", "candidate": "xgboost", "calibration": "none",
        "risk_bands": [{"name": "low", "upper": 0.3}, {"name": "intermediate", "upper": 0.5},
                       {"name": "high", "upper": 1.0}],
        "training_data_sha256": "0" * 64, "n_train": len(X), "registered_model_name": "trd-acute",
        "package_version": "test",
        "scoring_rule": scoring_rule or {"required_predictors": ["madrs_baseline"], "max_missing_fraction": 0.75},
        "training_ranges": training_ranges(X, spec),
        **(info_overrides or {}),
    }  # fmt: skip
    save_bundle(
        folder, estimator=estimator, feature_spec=spec, info_fields=info,
        signature=feature_signature(list(X.columns)), input_example=X.head(3),
    )  # fmt: skip
    return folder


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def canonical_layout(contract: CohortContract) -> TabularSourceSpec:
    """The scorer's default input layout, configs/sources/canonical.yaml."""
    return load_canonical_format(REPO_ROOT / "configs" / "sources" / "canonical.yaml", contract)


def score_in_background(
    contract: CohortContract, folder: Path, model_dir: Path, out_name: str, *, pieces: int, **popen: object
) -> tuple[subprocess.Popen, Path]:
    """`trd score` of a big CSV (``pieces`` x 2,000 rows, with explanations, so it runs for seconds) as a separate
    process, to be interrupted or killed: the process and the output it writes."""
    big = pd.concat([canonical_rows(contract, 2000, seed=s) for s in range(pieces)], ignore_index=True)
    big["patient_id"] = [f"P{i:07d}" for i in range(len(big))]
    source = write(big, folder / "big.csv")
    out = folder / out_name
    env = {**os.environ, "TRD_PROJECT_ROOT": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "score", str(source), "-o", str(out), "--model", str(model_dir),
         "--chunk-size", "500", "--explain"],
        env=env, **popen,
    )  # fmt: skip
    return process, out
