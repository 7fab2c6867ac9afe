"""Stage ``train@<task>``: tune, calibrate and select a classifier per task; validate the champion internally;
track it in MLflow; save it.

The pure core lives in :mod:`pipeline.modelling` (candidates, selection rule, internal validation, the model
bundle); this module is the thin stage: ``main`` opens the :class:`~pipeline.stage.StageContext`, checks the
sample size, trains, saves ``models/<task>/``, ``models/candidates/<task>/`` and ``reports/<task>/cv_metrics.json``,
and logs one MLflow run per task with a nested run per candidate (:func:`pipeline.tracking.stage_run`), registers
the champion as ``trd-<task>`` and moves the ``champion`` alias only when the gate in params passes.

Everything is decided on the training split by cross-validation; the test split is never read here.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from pipeline import __version__, tracking
from pipeline.features import training_ranges
from pipeline.io import write_json
from pipeline.modelling.bundle import (
    ESTIMATOR_FILE,
    MANIFEST_FILE,
    feature_signature,
    log_saved_model,
    save_bundle,
    sha256_file,
)
from pipeline.modelling.params import VALIDATED_METRICS, TrainParams
from pipeline.modelling.selection import selection_rule_text
from pipeline.modelling.training import TrainedTask, cv_report, load_training_inputs, save_candidates, train_task
from pipeline.protocol import registered_model_name, sample_size_gate
from pipeline.stage import StageContext

log = logging.getLogger(__name__)

PARAMS_USED = ("base.seed", "tasks.{task}", "train")


def main(task_name: str) -> None:
    ctx = StageContext.open(task_name)
    inputs = load_training_inputs(ctx)
    params, X, y = inputs.params, inputs.X, inputs.y
    log.info("%s: %d training patients, %d with the outcome, %d features", task_name, len(y), y.sum(), X.shape[1])
    registered_name = registered_model_name(task_name, inputs.cohorts)
    # before any fitting: the Riley minimum for this many candidate parameters (exit 6 below it, unless overridden)
    check = sample_size_gate(y, X.shape[1], params.sample_size, task=task_name, cohort="+".join(inputs.cohorts))
    trained = train_task(
        task_name, inputs.task.target, X, y, params=params, seed=inputs.seed, small_cohort=inputs.small_cohort
    )
    trained.protocol |= {
        "development_cohorts": list(inputs.cohorts),
        "registered_model_name": registered_name,
        "sample_size": check.as_dict() | {"override": params.sample_size.override},
        "underpowered": not check.passed,
    }

    info_fields = {
        "task": task_name,
        "target": inputs.task.target,
        "candidate": trained.champion.name,
        "calibration": trained.champion.calibration,
        "risk_bands": [b.model_dump() for b in params.risk_bands],
        "training_data_sha256": sha256_file(inputs.train_path),
        "n_train": trained.n_train,
        "registered_model_name": registered_name,
        "package_version": __version__,
        # applicability, stored so that the scorer needs no params.yaml: the task's minimum data for a score
        # (checked against its predictors when the inputs were loaded) and the training split's numeric ranges
        "scoring_rule": inputs.task.scoring.model_dump(),
        "training_ranges": training_ranges(X, inputs.spec),
        # what the probability is of, and who the model is for: the scorer's wording and eligibility check
        "outcome": inputs.task.outcome.model_dump(),
        "population": inputs.task.population.model_dump() if inputs.task.population else None,
    }
    save_bundle(
        ctx.champion_dir,
        estimator=trained.estimator,
        feature_spec=inputs.spec,
        info_fields=info_fields,
        signature=feature_signature(inputs.spec.feature_names),
        input_example=trained.example,
    )
    write_json(cv_report(trained, params), ctx.reports_dir / "cv_metrics.json")
    save_candidates(trained, ctx.candidates_dir)
    log_to_mlflow(
        trained, params, ctx.root, ctx.champion_dir, features=X, train_path=inputs.train_path, seed=inputs.seed,
        description=inputs.task.description,
    )  # fmt: skip


def log_to_mlflow(
    trained: TrainedTask,
    params: TrainParams,
    root: Path,
    model_dir: Path,
    *,
    features: pd.DataFrame,
    train_path: Path,
    seed: int,
    description: str = "",
) -> dict[str, Any]:
    """One run per task, a nested run per candidate; the saved model logged once, registered, gated."""
    name = trained.protocol.get("registered_model_name") or f"trd-{trained.task}"
    reasons = tracking.gate_decision(
        trained.champion.cv, params.gate.min_cv_auroc_lower, tuple(params.gate.calibration_slope)
    )
    if trained.protocol.get("underpowered"):  # trained only because of the override: never the champion
        reasons.append("below the Riley minimum sample size (trained with train.sample_size.override)")
    run_params = {
        "seed": seed,
        "target": trained.target,
        "n_features": trained.example.shape[1],
        **tracking.flatten_params("train", params.model_dump(exclude={"candidates"})),
    }
    with tracking.stage_run(root, name, f"train-{trained.task}", tags={"task": trained.task}, params=run_params):
        # lineage without data: the digest and schema of the training features, never the rows or their ids
        with warnings.catch_warnings():
            # MLflow 3.17 registers its local-file source class twice and warns that the path is ambiguous
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            features_digest = mlflow.data.from_pandas(
                features, source=str(train_path.relative_to(root)), name=f"{trained.task}-train"
            )
        mlflow.log_input(features_digest, context="training")
        mlflow.set_tag("training_data_sha256", sha256_file(train_path))
        for path, digest in tracking.dvc_lock_hashes(root, "split").items():
            mlflow.set_tag(f"dvc_md5.{path}", digest)
        rows = trained.selection.get("candidates", {})
        for result in trained.results:
            candidate_params = {f"hp.{k}": v for k, v in result.best_params.items()} | {
                "calibration": result.calibration
            }
            with tracking.stage_run(
                root, name, result.name, tags={"candidate": result.name}, params=candidate_params, nested=True
            ):
                mlflow.log_metrics({**result.cv, "fit_seconds": result.seconds})
                mlflow.log_metrics({f"calibration_log_loss.{k}": v for k, v in result.calibration_log_loss.items()})
                row = {k: v for k, v in rows.get(result.name, {}).items() if k != "eligible" and v is not None}
                mlflow.log_metrics(tracking.finite_metrics(row, "selection."))
                mlflow.set_tag("selection_eligible", str(rows.get(result.name, {}).get("eligible")))
        mlflow.log_metrics({f"champion.{k}": v for k, v in trained.champion.cv.items()})
        mlflow.set_tags(
            {
                "development_cohorts": ",".join(trained.protocol.get("development_cohorts", [])),
                "small_cohort_protocol": str(trained.protocol.get("small_cohort", False)),
                "underpowered": str(trained.protocol.get("underpowered", False)),
            }
        )
        mlflow.log_metrics(tracking.finite_metrics(trained.protocol.get("sample_size", {}), "sample_size."))
        mlflow.set_tag("champion", trained.champion.name)
        # the declared rule and how close the race was: a reviewer sees whether the champion won by noise
        mlflow.set_tags(
            {
                "selection_rule": selection_rule_text(params.selection),
                "selection_best_by_metric": str(trained.selection.get("best_by_metric")),
                "selection_margins": "; ".join(
                    f"{name} +{row['margin']:.4f} ({row['margin_in_se'] or 0:.2f} SE)" for name, row in rows.items()
                ),
            }
        )
        for metric in VALIDATED_METRICS:
            values = trained.internal.get(metric, {})
            mlflow.log_metrics(tracking.finite_metrics(values, f"internal_validation.{metric}."))
        if trained.internal:
            mlflow.log_metric("internal_validation.repetitions_used", trained.internal["repetitions_used"])
        version = log_saved_model(model_dir, registered_name=name)
        client = MlflowClient()
        client.set_model_version_tag(
            name, version, "estimator_sha256", sha256_file(model_dir / "artifacts" / ESTIMATOR_FILE)
        )
        # identifies the whole model (every file the scorer reads); `trd score` prints the same hash
        manifest_sha256 = sha256_file(model_dir / "artifacts" / MANIFEST_FILE)
        mlflow.set_tag("model_manifest_sha256", manifest_sha256)
        client.set_model_version_tag(name, version, "model_manifest_sha256", manifest_sha256)
        decision = tracking.promote_if_gated(name, version, reasons)
        tracking.describe_model(name, version, trained, description)
        mlflow.set_tags(
            {
                "gate_passed": str(decision["gate_passed"]),
                "gate_reasons": "; ".join(reasons) or "passed",  # why the alias did (not) move, on the run too
                "registered_version": version,
            }
        )
    return decision
