"""MLflow plumbing: where the store is, how runs are tagged, and the gated ``champion`` alias.

The tracking URI is ``$MLFLOW_TRACKING_URI`` when set (a team server), otherwise an embedded SQLite store at
``<repo root>/mlflow.db`` with artifacts in ``<repo root>/mlruns``. Inside DVC the repo root comes from
``DVC_ROOT``, so ``dvc exp run --temp/--queue`` experiments (which run in a copy of the repo) log to the same
store as the workspace (docs/engineering.md §2).

MLflow records absolute artifact locations in the SQLite store. A project folder that was moved or copied (with
its mlflow.db and mlruns/) therefore still points at the old folder; :func:`relocate_store` rewrites those
locations to this root's mlruns/, and every command that opens the embedded store runs it first.

Tags (the names in the MLflow UI and in ``mlflow.search_runs`` as ``tags.<name>``): every run, parent and nested
candidate alike, carries ``git_sha`` and, inside DVC, ``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV`` and
``DVC_STAGE`` (DVC's own variable names). Experiments carry ``mlflow.experimentKind`` so the UI opens the
model-training view rather than the GenAI one.

Stages open their runs through one helper: :func:`stage_run` (a new run, or a nested one, tagged and with its
params flattened) and :func:`extending_training_run` (evaluate, explain and report add to the training run of
the model they read); :func:`flatten_params` and :func:`finite_metrics` shape what they log.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# at the top: every module that imports this one logs to MLflow (the scorer imports it only for a registry URI)
import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

DVC_TAGS = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")
CHAMPION_ALIAS = "champion"
# the experiment tag MLflow 3's UI reads to choose its view; this value opens runs, metrics and models
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ARTIFACTS_FOLDER = "mlruns"
# SQLite columns that hold artifact locations (MLflow 3 schema)
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def store_root(project_root: Path) -> Path:
    """The repo root that owns the MLflow store (DVC_ROOT inside DVC stages)."""
    return Path(os.environ.get("DVC_ROOT") or project_root).resolve()


def tracking_uri(project_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(project_root) / 'mlflow.db'}"


def _old_artifact_roots(locations: list[str], artifacts: Path) -> set[str]:
    """The ``.../mlruns`` prefixes (path or file URI) of recorded locations that are not under ``artifacts``."""
    current = {str(artifacts), artifacts.as_uri()}
    roots = set()
    for location in locations:
        head, sep, _ = location.partition(f"/{ARTIFACTS_FOLDER}")
        root = head + sep
        if sep and root not in current:
            roots.add(root)
    return roots


def relocate_store(db: Path, artifacts: Path) -> dict[str, str]:
    """Rewrite artifact locations recorded under another folder's mlruns/ so they point into ``artifacts``.

    For a project folder moved or copied with its store: returns {old prefix: new prefix} (empty when nothing
    pointed elsewhere, when ``artifacts`` does not exist, or when the store has no MLflow tables yet).
    """
    artifacts = Path(artifacts).resolve()
    if not Path(db).is_file() or not artifacts.is_dir():
        return {}
    with sqlite3.connect(db) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = [(t, c) for t, c in LOCATION_COLUMNS if t in tables]
        if ("experiments", "artifact_location") not in columns:
            return {}
        locations = [row[0] for row in con.execute("SELECT artifact_location FROM experiments") if row[0]]
        moves = {}
        for old in _old_artifact_roots(locations, artifacts):
            new = artifacts.as_uri() if old.startswith("file:") else str(artifacts)
            moves[old] = new
            for table, column in columns:
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",  # noqa: S608 (names from LOCATION_COLUMNS)
                    (new, len(old) + 1, len(old), old),
                )
    for old, new in moves.items():
        log.warning("MLflow store moved: artifact locations under %s now point to %s", old, new)
    return moves


def use_store(project_root: Path) -> str:
    """Point MLflow's tracking and registry at the project's store (or $MLFLOW_TRACKING_URI).

    The embedded store is relocated first if it was moved or copied from another folder (:func:`relocate_store`).
    """
    uri = tracking_uri(project_root)
    db = store_root(project_root) / "mlflow.db"
    if uri == f"sqlite:///{db}":  # the embedded store only, never a server's
        relocate_store(db, store_root(project_root) / ARTIFACTS_FOLDER)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def registry_version(model_uri: str) -> str:
    """The version number a ``models:/name@alias`` or ``models:/name/3`` URI resolves to."""
    reference = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = reference.partition("/")
    return version or "unknown"


def configure(project_root: Path, experiment: str) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists, with artifacts under the store root and
    its kind set to model development (also on experiments created before the kind was set)."""
    uri = use_store(project_root)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            # without this, artifacts land in ./mlruns of the working directory (a temp copy under dvc exp)
            artifact_location = (store_root(project_root) / ARTIFACTS_FOLDER).as_uri()
        experiment_id = mlflow.create_experiment(
            experiment, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    else:
        experiment_id = existing.experiment_id
        if existing.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return uri


def find_model_version(registered_name: str, estimator_sha256: str, *, with_run: bool = False) -> Any | None:
    """The newest registered version of ``registered_name`` whose estimator hash matches (with a run, if asked)."""
    versions = MlflowClient().search_model_versions(f"name = '{registered_name}'")
    matches = [v for v in versions if v.tags.get("estimator_sha256") == estimator_sha256 and (v.run_id or not with_run)]
    return max(matches, key=lambda v: int(v.version)) if matches else None


def model_descriptions(trained: Any, task_description: str) -> tuple[str, str]:
    """(registered model, version) descriptions from a TrainedTask: what it predicts, how to call it, what won.

    Aggregate facts only (no data, no identifiers).
    """
    auroc, slope = (trained.champion.cv.get(key, float("nan")) for key in ("cv_auroc", "cv_calibration_slope"))
    model = (
        f"Task {trained.task}: {task_description} Target: {trained.target}. MLflow pyfunc: the float64 feature "
        "matrix in (`trd features INPUT -o features.csv` builds it from a clinic export), p_response out; "
        f"`trd score` scores clinic exports directly. The `{CHAMPION_ALIAS}` alias moves only through the gate "
        "(params.yaml train.gate)."
    )
    version = (
        f"Champion {trained.champion.name} (calibration {trained.champion.calibration}): CV AUROC "
        f"{auroc:.3f}, CV calibration slope {slope:.2f}."
        f" The model card is reports/{trained.task}/model_card.md at the commit in the run's tag git_sha."
    )
    return model, version


def describe_model(name: str, version: str, trained: Any, task_description: str) -> None:
    """Set the registered model's and this version's descriptions (shown in the registry UI)."""
    model, version_text = model_descriptions(trained, task_description)
    client = MlflowClient()
    client.update_registered_model(name, description=model)
    client.update_model_version(name, version, description=version_text)


def find_training_run(registered_name: str, estimator_sha256: str) -> str | None:
    """Run id of the newest registered version of ``registered_name`` whose estimator hash matches, if any."""
    try:
        version = find_model_version(registered_name, estimator_sha256, with_run=True)
    except MlflowException as exc:
        log.warning("MLflow registry search for %s failed: %s", registered_name, exc)
        return None
    return None if version is None else version.run_id


def training_run_to_extend(project_root: Path, task_name: str, estimator_sha256: str, what: str) -> str | None:
    """The training run that later stages (evaluate, explain) add their ``what`` to, with MLflow configured.

    None, with a warning, when there is no store or no registered version with this estimator: the DVC outputs
    are the primary record, so a missing store never fails a stage.
    """
    uri = tracking_uri(project_root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        log.warning("no MLflow store at %s: %s not logged to MLflow (the DVC outputs are complete)", uri, what)
        return None
    registered_name = f"trd-{task_name}"
    configure(project_root, registered_name)
    run_id = find_training_run(registered_name, estimator_sha256)
    if run_id is None:
        log.warning(
            "no registered version of %s with estimator hash %s…: %s not logged to MLflow",
            registered_name, estimator_sha256[:12], what,
        )  # fmt: skip
    return run_id


def git_sha(project_root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(project_root: Path) -> dict[str, str]:
    """Tags that tie a run (parent or nested) to its code and its DVC experiment, under DVC's variable names."""
    tags = {"git_sha": git_sha(project_root)}
    for key in DVC_TAGS:
        if os.environ.get(key):
            tags[key] = os.environ[key]
    return tags


def _lock_stages(project_root: Path) -> dict[str, Any]:
    lock = project_root / "dvc.lock"
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})


def dvc_lock_hashes(project_root: Path, stage_prefix: str) -> dict[str, str]:
    """Data hashes DVC recorded for the outputs of stages whose name starts with ``stage_prefix``."""
    hashes = {}
    for name, stage in _lock_stages(project_root).items():
        if name.startswith(stage_prefix):
            for out in stage.get("outs", []):
                hashes[out["path"]] = out.get("md5", "")
    return hashes


def dvc_lock_outs(project_root: Path, stage_names: list[str]) -> list[tuple[str, str, str]]:
    """(stage, output path, md5) DVC recorded for exactly these stages, in the order given; [] without dvc.lock."""
    stages = _lock_stages(project_root)
    return [
        (name, str(out.get("path")), str(out.get("md5", "")))
        for name in stage_names
        for out in (stages.get(name) or {}).get("outs", [])
    ]


def gate_decision(metrics: dict[str, float], min_auroc_lower: float, slope_range: tuple[float, float]) -> list[str]:
    """Reasons the gate refuses the candidate (empty list: it passes)."""
    reasons = []
    if not metrics["cv_auroc_lower"] >= min_auroc_lower:
        reasons.append(f"CV AUROC lower bound {metrics['cv_auroc_lower']:.3f} < required {min_auroc_lower:.3f}")
    low, high = slope_range
    slope = metrics["cv_calibration_slope"]
    if not low <= slope <= high:
        reasons.append(f"CV calibration slope {slope:.3f} outside [{low}, {high}]")
    return reasons


def promote_if_gated(name: str, version: str, reasons: list[str]) -> dict[str, Any]:
    """Move the ``champion`` alias to ``version`` only if the gate passed; record the decision on the version."""
    client = MlflowClient()
    passed = not reasons
    client.set_model_version_tag(name, version, "gate", "passed" if passed else "refused")
    if reasons:
        client.set_model_version_tag(name, version, "gate_reasons", "; ".join(reasons))
    if passed:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        log.info("%s: alias %s -> version %s", name, CHAMPION_ALIAS, version)
    else:
        log.warning("%s: version %s stays without the %s alias: %s", name, version, CHAMPION_ALIAS, reasons)
    return {"registered_model": name, "version": version, "gate_passed": passed, "gate_reasons": reasons}


def flatten_params(prefix: str, value: Any) -> dict[str, Any]:
    """Nested params -> dotted keys (``train.gate.min_cv_auroc_lower``), as MLflow params take them."""
    if isinstance(value, dict):
        pairs = (flatten_params(f"{prefix}.{k}" if prefix else str(k), v).items() for k, v in value.items())
        return dict(itertools.chain.from_iterable(pairs))
    return {prefix: value}


def finite_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric, finite entries of ``values`` as floats, keys prefixed (MLflow refuses NaN in some stores, and a
    missing number is better absent than a fake zero)."""
    out = {}
    for key, value in values.items():
        if not isinstance(value, int | float) or not math.isfinite(value):  # a bool counts as 0/1
            continue
        out[f"{prefix}{key}"] = float(value)
    return out


@contextmanager
def stage_run(
    project_root: Path,
    experiment: str,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    nested: bool = False,
) -> Iterator[Any]:
    """Open a stage's MLflow run: the store configured (outermost run only), the code and DVC tags of
    :func:`run_tags` plus ``tags``, and ``params`` logged. Yields MLflow's active run."""
    if not nested:
        configure(project_root, experiment)
    with mlflow.start_run(run_name=run_name, nested=nested, tags={**run_tags(project_root), **(tags or {})}) as run:
        if params:
            mlflow.log_params(dict(params))
        yield run


@contextmanager
def extending_training_run(project_root: Path, task_name: str, estimator_sha256: str, what: str) -> Iterator[bool]:
    """Resume the training run of the model with this estimator to add ``what`` to it; yields False (and logs
    nothing) when there is no store or no such run (see :func:`training_run_to_extend`)."""
    run_id = training_run_to_extend(project_root, task_name, estimator_sha256, what)
    if run_id is None:
        yield False
        return
    with mlflow.start_run(run_id=run_id):
        yield True
