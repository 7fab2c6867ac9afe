"""MLflow plumbing: where the store is, how runs are tagged, and the gated ``champion`` alias.

The tracking URI is ``$MLFLOW_TRACKING_URI`` when set (a team server), otherwise an embedded SQLite store at
``<repo root>/mlflow.db`` with artifacts in ``<repo root>/mlruns``. Inside DVC the repo root comes from
``DVC_ROOT``, so ``dvc exp run --temp/--queue`` experiments (which run in a copy of the repo) log to the same
store as the workspace (docs/engineering.md §2).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DVC_TAGS = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")
CHAMPION_ALIAS = "champion"


def store_root(project_root: Path) -> Path:
    """The repo root that owns the MLflow store (DVC_ROOT inside DVC stages)."""
    return Path(os.environ.get("DVC_ROOT") or project_root).resolve()


def tracking_uri(project_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(project_root) / 'mlflow.db'}"


def use_store(project_root: Path) -> str:
    """Point MLflow's tracking and registry at the project's store (or $MLFLOW_TRACKING_URI)."""
    import mlflow  # noqa: PLC0415

    uri = tracking_uri(project_root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def registry_version(model_uri: str) -> str:
    """The version number a ``models:/name@alias`` or ``models:/name/3`` URI resolves to."""
    from mlflow import MlflowClient  # noqa: PLC0415

    reference = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = reference.partition("/")
    return version or "unknown"


def configure(project_root: Path, experiment: str) -> str:
    """Point MLflow at the store and make sure ``experiment`` exists with artifacts under the store root."""
    import mlflow  # noqa: PLC0415

    uri = use_store(project_root)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            # without this, artifacts land in ./mlruns of the working directory (a temp copy under dvc exp)
            artifact_location = (store_root(project_root) / "mlruns").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    return uri


def find_model_version(registered_name: str, estimator_sha256: str, *, with_run: bool = False) -> Any | None:
    """The newest registered version of ``registered_name`` whose estimator hash matches (with a run, if asked)."""
    from mlflow import MlflowClient  # noqa: PLC0415

    versions = MlflowClient().search_model_versions(f"name = '{registered_name}'")
    matches = [v for v in versions if v.tags.get("estimator_sha256") == estimator_sha256 and (v.run_id or not with_run)]
    return max(matches, key=lambda v: int(v.version)) if matches else None


def find_training_run(registered_name: str, estimator_sha256: str) -> str | None:
    """Run id of the newest registered version of ``registered_name`` whose estimator hash matches, if any."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

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
    """Tags that tie a run to its code and its DVC experiment."""
    tags = {"git_sha": git_sha(project_root)}
    for key in DVC_TAGS:
        if os.environ.get(key):
            tags[key.lower()] = os.environ[key]
    return tags


def _lock_stages(project_root: Path) -> dict[str, Any]:
    import yaml  # noqa: PLC0415

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
    from mlflow import MlflowClient  # noqa: PLC0415

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
