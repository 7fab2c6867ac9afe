"""Stage ``explain@<task>`` (thin): read the inputs, call the core, write reports/<task>/explain/ and
data/explanations/<task>/ atomically and log the identifier-free outputs to the task's MLflow run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib
import mlflow

from pipeline import figures, tracking
from pipeline.errors import ConfigError
from pipeline.explain.core import explain_task, planted_reference
from pipeline.explain.plots import figures as drawers
from pipeline.explain.types import OUTPUT_FOLDER, PER_PATIENT_FILE, PER_PATIENT_FOLDER, ExplainParams, Explanation
from pipeline.headline import explain_headline
from pipeline.io import (
    atomic_folder,
    flatten_metrics,
    json_ready,
    read_parquet,
    write_frame_csv,
    write_json,
    write_parquet,
)
from pipeline.modelling.bundle import load_bundle
from pipeline.stage import StageContext
from pipeline.synthesize.planted import PLANTED_EFFECTS_FILE, TRUE_CONTRIBUTIONS_FILE, read_planted_effects
from pipeline.tasks import TasksParams

log = logging.getLogger(__name__)


def write_reports(result: Explanation, folder: Path) -> None:
    """The identifier-free outputs: fidelity.json, explanation.json, tables and figures."""

    with atomic_folder(folder) as staging:
        write_json(json_ready(result.metrics), staging / "fidelity.json")
        # the DVC metric of this stage (pipeline/headline.py)
        write_json(explain_headline(result.task, json_ready(result.metrics)), staging / "headline.json")
        write_json(json_ready(result.report), staging / "explanation.json")
        write_frame_csv(result.importance, staging / "importance.csv")
        if result.fidelity is not None:
            write_frame_csv(result.fidelity.signs, staging / "sign_checks.csv")
        figures.save_all(drawers(result), staging / "figures")


def write_per_patient(result: Explanation, folder: Path) -> None:
    """Every test patient's SHAP values, with patient_id: under data/ only."""

    with atomic_folder(folder) as staging:
        write_parquet(result.per_patient, staging / PER_PATIENT_FILE)


def log_to_mlflow(task_name: str, root: Path, folder: Path, metrics: dict, estimator_sha256: str) -> str | None:
    """Log the fidelity metrics, tables and figures (never the per-patient values) to the task's training run.

    Warns and skips when there is no store or no matching run: the DVC outputs are the primary record.
    """

    run_id = tracking.training_run_to_extend(root, task_name, estimator_sha256, "explanations")
    if run_id is None:
        return None
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(flatten_metrics(metrics, prefix="explain."))
        # the whole folder is identifier-free by construction; the per-patient values live elsewhere (data/)
        mlflow.log_artifacts(str(folder), artifact_path="explain")
    log.info("%s: explanations logged to MLflow run %s", task_name, run_id)
    return run_id


def main(task_name: str) -> None:

    matplotlib.use("Agg")  # shap's waterfall draws through pyplot; a stage never has a display

    ctx = StageContext.open(task_name)
    paths, task, contract = ctx.paths, ctx.task, ctx.contract
    params = ctx.section(ExplainParams, "explain")
    tasks = ctx.section(TasksParams, "tasks")
    unknown_tasks = sorted(set(params.fidelity_exclude) - set(tasks.root))
    if unknown_tasks:
        raise ConfigError(f"explain.fidelity_exclude names unknown tasks: {unknown_tasks}", file=paths.params_file)

    test = contract.coerce(read_parquet(ctx.test_split, "test split"))
    explained_split = "test"
    if test.empty:  # small-cohort protocol: no test split; the model is explained on its development patients
        explained_split = "train"
        test = contract.coerce(read_parquet(ctx.train_split, "training split"))
    champion = load_bundle(ctx.champion_dir)
    planted_path = paths.synthetic_dir / PLANTED_EFFECTS_FILE
    contributions_path = paths.synthetic_dir / TRUE_CONTRIBUTIONS_FILE
    contributions = read_parquet(contributions_path, "true contributions") if contributions_path.is_file() else None
    reference = planted_reference(
        read_planted_effects(planted_path), test, task.target, file=planted_path, contributions=contributions
    )

    result = explain_task(
        task_name, task, test, champion=champion, reference=reference, params=params, seed=ctx.seed,
        explained_split=explained_split,
    )  # fmt: skip
    folder = ctx.reports_dir / OUTPUT_FOLDER
    write_reports(result, folder)
    write_per_patient(result, paths.root / PER_PATIENT_FOLDER / task_name)
    fidelity = result.metrics.get("fidelity")
    if fidelity:
        log.info(
            "%s: %d rows explained (additivity error %.2g); fidelity: patient-level r median %.2f (min %.2f), rank "
            "rho %.2f over planted features, noise share %.3f, signs %d/%d; written to %s",
            task_name, result.metrics["n_explained"], result.metrics["additivity"]["max_abs_error"],
            fidelity.get("patient_correlation_median", math.nan), fidelity.get("patient_correlation_min", math.nan),
            fidelity.get("rank_spearman_true", math.nan), fidelity.get("noise_share", math.nan),
            fidelity["sign_agree"], fidelity["sign_checked"], folder.relative_to(paths.root),
        )  # fmt: skip

    registered = champion.info.registered_model_name.removeprefix("trd-")  # trd-<task>[-<cohort>]
    log_to_mlflow(registered, paths.root, folder, json_ready(result.metrics), champion.info.estimator_sha256)
