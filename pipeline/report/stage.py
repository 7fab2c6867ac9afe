"""The stage's thin shell: gather, build, render, write ``card_data.json``, ``model_card.md`` and
``model_card.html`` together atomically, and attach them to the task's MLflow training run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pipeline import tracking
from pipeline.io import atomic_paths
from pipeline.params import read_params_file
from pipeline.paths import ProjectPaths
from pipeline.report.card_data import build_card_data
from pipeline.report.inputs import CardInputs, RegistryInfo, gather_inputs
from pipeline.report.render import render_html, render_markdown

log = logging.getLogger(__name__)

PARAMS_USED = ("tasks.{task}", "split", "train", "report")
DATA_FILE = "card_data.json"
MARKDOWN_FILE = "model_card.md"
HTML_FILE = "model_card.html"
MLFLOW_ARTIFACT_PATH = "model_card"


def render(inputs: CardInputs, root: Path) -> tuple[dict[str, Any], str, str]:
    """card_data, its Markdown and that Markdown as HTML (with the figures' bytes embedded)."""
    card = build_card_data(inputs)
    markdown = render_markdown(card)
    folder = root / "reports" / inputs.task
    figures = {**inputs.figures, **(inputs.explain.figures if inputs.explain else {})}
    images = {href: (folder / href).read_bytes() for href in figures.values()}
    return card, markdown, render_html(markdown, card["title"], images)


def write_card(card: dict[str, Any], markdown: str, page: str, folder: Path) -> tuple[Path, Path, Path]:
    """The three files, replaced together or not at all."""
    files = (folder / DATA_FILE, folder / MARKDOWN_FILE, folder / HTML_FILE)
    data = json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_paths(*files) as tmps:
        for tmp, content in zip(tmps, (data, markdown, page), strict=True):
            tmp.write_text(content, encoding="utf-8", newline="\n")
    return files


def registry_line(registry: RegistryInfo) -> str:
    """The store-specific facts the card leaves out (version, alias, recorded gate), for the console and the log."""
    if not registry.found:
        return f"{registry.name} not found ({registry.reason or 'no version carries this estimator'})"
    if registry.holds_champion:
        alias = "holds the champion alias"
    elif registry.champion_version:
        alias = f"the champion alias points to version {registry.champion_version}"
    else:
        alias = "no version holds the champion alias"
    gate = f", gate {registry.gate}" if registry.gate else ""
    return f"{registry.name} version {registry.version}, {alias}{gate}"


def log_to_mlflow(root: Path, registry: RegistryInfo, files: tuple[Path, ...]) -> bool:
    """Attach the card to the task's training run; skip with a warning when there is no run to attach it to.

    The DVC outputs are the primary record, so MLflow trouble never fails the stage.
    """
    if registry.run_id is None:
        log.warning("%s: model card not logged to MLflow (%s)", registry.name, registry.reason or "no training run")
        return False
    try:
        tracking.use_store(root)
        with mlflow.start_run(run_id=registry.run_id):
            for path in files:
                mlflow.log_artifact(str(path), artifact_path=MLFLOW_ARTIFACT_PATH)
    except (MlflowException, OSError) as exc:
        log.warning("%s: model card not logged to MLflow run %s: %s", registry.name, registry.run_id, exc)
        return False
    log.info("%s: model card logged to MLflow run %s", registry.name, registry.run_id)
    return True


def main(task_name: str) -> None:
    paths = ProjectPaths.discover()
    inputs = gather_inputs(paths, task_name, read_params_file(paths.params_file))
    card, markdown, page = render(inputs, paths.root)
    files = write_card(card, markdown, page, paths.reports_dir / task_name)
    written = ", ".join(p.relative_to(paths.root).as_posix() for p in files)
    log.info("%s: model card written to %s", task_name, written)
    log.info("%s: registry: %s", task_name, registry_line(inputs.registry))
    log_to_mlflow(paths.root, inputs.registry, files)
