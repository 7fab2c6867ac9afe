"""Stage ``evaluate@<task>`` (thin): read the inputs, call the core, write reports/<task>/evaluation/ atomically and
log to the task's MLflow run."""

from __future__ import annotations

import json
import logging
import math
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd

from pipeline import figures, tracking
from pipeline.errors import ModelError
from pipeline.evaluate.core import evaluate_task
from pipeline.evaluate.plots import FIGURES, ci_label
from pipeline.evaluate.types import (
    CHAMPION,
    NO_TEST_SPLIT,
    ORACLE,
    OUTPUT_FOLDER,
    Candidate,
    EvaluateParams,
    Evaluation,
)
from pipeline.headline import evaluation_headline
from pipeline.io import atomic_folder, flatten_metrics, json_ready, read_parquet, write_frame_csv, write_json
from pipeline.modelling.bundle import load_bundle, load_estimator
from pipeline.stage import StageContext

log = logging.getLogger(__name__)


def load_candidates(folder: Path) -> dict[str, Candidate]:
    """Every candidate in ``candidates.json``, hash-checked and loaded with the trusted-types list, by name."""
    index_path = Path(folder) / "candidates.json"
    if not index_path.is_file():
        raise ModelError("candidate index missing", file=index_path, hint="run the train stage (dvc repro train)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        entries = {name: (str(e["file"]), str(e["sha256"]), str(e["calibration"])) for name, e in index.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"candidate index unreadable ({exc})", file=index_path) from None
    return {
        name: Candidate(load_estimator(Path(folder) / file, sha256), sha256, calibration)
        for name, (file, sha256, calibration) in sorted(entries.items())
    }


def plot_files(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """DVC plot data, by path relative to the output folder (dvc.yaml's top-level ``plots:`` names these)."""
    curves = evaluation.curves
    empty_roc = pd.DataFrame({"fpr": [], "tpr": []})
    empty_pr = pd.DataFrame({"recall": [], "precision": []})
    calibration = evaluation.calibration_curves
    champion_calibration = calibration[calibration["model"] == CHAMPION].drop(columns="model")
    prevalence = float(evaluation.y.mean()) if evaluation.y.size else math.nan
    return {
        "plots/roc/champion.csv": curves["roc"][CHAMPION],
        # the oracle file always exists (header only when unavailable) so the declared plot always renders
        "plots/roc/oracle.csv": curves["roc"].get(ORACLE, empty_roc),
        "plots/precision_recall/champion.csv": curves["precision_recall"][CHAMPION],
        "plots/precision_recall/oracle.csv": curves["precision_recall"].get(ORACLE, empty_pr),
        "plots/precision_recall/no_skill.csv": pd.DataFrame({"recall": [0.0, 1.0], "precision": [prevalence] * 2}),
        "plots/calibration/champion.csv": champion_calibration,
        "plots/calibration/ideal.csv": pd.DataFrame({"mean_predicted": [0.0, 1.0], "observed": [0.0, 1.0]}),
        "plots/decision_curve.csv": evaluation.decision_curves[CHAMPION],
    }


def write_outputs(evaluation: Evaluation, folder: Path) -> None:
    """Write every output into ``folder``, replacing it as a whole (no partial folder on failure)."""

    with atomic_folder(folder) as staging:
        write_json(json_ready(evaluation.metrics), staging / "metrics.json")
        # the few numbers dvc.yaml declares as DVC metrics (pipeline/headline.py)
        write_json(evaluation_headline(evaluation.task, json_ready(evaluation.metrics)), staging / "headline.json")
        write_json(json_ready(evaluation.report), staging / "evaluation.json")
        write_frame_csv(evaluation.thresholds, staging / "thresholds.csv")
        write_frame_csv(evaluation.subgroups, staging / "subgroups.csv")
        write_frame_csv(evaluation.calibration_curves, staging / "calibration_curves.csv")
        for relative, frame in plot_files(evaluation).items():
            write_frame_csv(frame, staging / relative)
        write_figures(evaluation, staging / "figures")


def write_figures(evaluation: Evaluation, folder: Path) -> None:
    # no test split: nothing to draw (the card says so); the folder exists all the same
    drawers = {} if evaluation.y.size == 0 else {name: partial(draw, evaluation) for name, draw in FIGURES.items()}
    figures.save_all(drawers, folder)


def log_to_mlflow(task_name: str, root: Path, folder: Path, metrics_nested: dict, estimator_sha256: str) -> str | None:
    """Log the metrics and figures to the task's training run; warn and skip when there is no store or run.

    The DVC outputs are the primary record, so a missing store never fails the stage.
    """

    run_id = tracking.training_run_to_extend(root, task_name, estimator_sha256, "evaluation")
    if run_id is None:
        return None
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flatten_metrics(metrics_nested))
        mlflow.log_artifacts(str(folder / "figures"), artifact_path="evaluation/figures")
        for name in ("metrics.json", "evaluation.json", "thresholds.csv", "subgroups.csv", "calibration_curves.csv"):
            mlflow.log_artifact(str(folder / name), artifact_path="evaluation")
    log.info("%s: evaluation logged to MLflow run %s", task_name, run_id)
    return run_id


def main(task_name: str) -> None:

    ctx = StageContext.open(task_name)
    paths, task, contract = ctx.paths, ctx.task, ctx.contract
    params = ctx.section(EvaluateParams, "evaluate")

    test = contract.coerce(read_parquet(ctx.test_split, "test split"))
    champion = load_bundle(ctx.champion_dir)
    candidates = load_candidates(ctx.candidates_dir)
    truth_path = paths.synthetic_dir / "truth.parquet"
    truth = read_parquet(truth_path, "synthetic ground truth") if truth_path.is_file() else None
    cohort = contract.coerce(read_parquet(paths.interim_dir / "cohort.parquet", "clean cohort"))
    cv_path = ctx.reports_dir / "cv_metrics.json"
    cv = json.loads(cv_path.read_text(encoding="utf-8")) if cv_path.is_file() else {}
    internal = cv.get("internal_validation")
    development = tuple(cv.get("protocol", {}).get("development_cohorts") or ("synthetic",))

    evaluation = evaluate_task(
        task_name,
        task,
        test,
        champion=champion,
        candidates=candidates,
        truth=truth,
        cohort=cohort,
        params=params,
        seed=ctx.seed,
        internal=internal,
        development=development,
    )
    folder = ctx.reports_dir / OUTPUT_FOLDER
    write_outputs(evaluation, folder)
    headline = evaluation.metrics["test"]
    if headline["n"]:
        log.info(
            "%s: test AUROC %s, calibration slope %s; written to %s", task_name, ci_label(headline, "auroc"),
            ci_label(headline, "calibration_slope"), folder.relative_to(paths.root),
        )  # fmt: skip
    else:
        log.info("%s: %s; written to %s", task_name, NO_TEST_SPLIT, folder.relative_to(paths.root))
    # the model's own registry entry (trd-<task>, or trd-<task>-<cohort> for another development cohort)
    registered = champion.info.registered_model_name.removeprefix("trd-")
    log_to_mlflow(registered, paths.root, folder, json_ready(evaluation.metrics), champion.info.estimator_sha256)
