"""The stage: main writes card_data.json and both cards without an MLflow store, finds (or honestly misses) its
registry entry, logs the card there and says the store's facts on the console, never in the card; dvc.yaml
declares what it reads and writes; the real outputs check out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import report, tracking
from pipeline.report import inputs as card_inputs
from pipeline.report import stage
from tests.conftest import REPO_ROOT
from tests.report.fixtures import SHA, TASK, build, check_card_data


def test_main_writes_the_card_without_an_mlflow_store(project) -> None:
    report.main(TASK)
    folder = project / "reports" / TASK
    card = json.loads((folder / stage.DATA_FILE).read_text())
    assert (folder / stage.HTML_FILE).read_text().startswith("<!DOCTYPE html>")
    assert not (project / "mlflow.db").exists()  # looking for the registry must not create a store
    assert check_card_data(card, project)["checked"] > 250
    assert not list(folder.glob("*.tmp*"))  # no temporary file left beside the outputs


def test_a_failing_render_leaves_no_partial_output(project, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(stage, "render_html", broken)
    with pytest.raises(RuntimeError):
        report.main(TASK)
    folder = project / "reports" / TASK
    assert not [name for name in (stage.DATA_FILE, stage.MARKDOWN_FILE, stage.HTML_FILE) if (folder / name).exists()]
    assert not list(folder.glob("*.tmp*"))


def _register(root: Path, sha: str, *, champion: bool) -> tuple[str, str]:
    tracking.configure(root, f"trd-{TASK}")
    with mlflow.start_run(run_name=f"train-{TASK}", tags={"git_sha": "d" * 40}) as run:
        mlflow.log_param("seed", 1)
    client = MlflowClient()
    client.create_registered_model(f"trd-{TASK}")
    version = client.create_model_version(
        f"trd-{TASK}",
        source=f"runs:/{run.info.run_id}/model",
        run_id=run.info.run_id,
        tags={"estimator_sha256": sha, "gate": "passed"},
    )
    if champion:
        client.set_registered_model_alias(f"trd-{TASK}", "champion", version.version)
    return run.info.run_id, str(version.version)


def _card_files(project: Path) -> dict[str, bytes]:
    folder = project / "reports" / TASK
    return {name: (folder / name).read_bytes() for name in (stage.DATA_FILE, stage.MARKDOWN_FILE, stage.HTML_FILE)}


def test_the_card_is_the_same_bytes_whatever_the_mlflow_store_holds(project, mlflow_store, caplog) -> None:
    """The card is a DVC output: a fresh clone (empty store, version 1) and a store with many versions must write
    the same files, or every clone's dvc.lock differs. The store's facts go to the log instead."""
    report.main(TASK)
    without_registry = _card_files(project)
    run_id, version = _register(project, SHA, champion=True)
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.report.stage"):
        report.main(TASK)
    assert _card_files(project) == without_registry
    markdown = without_registry[stage.MARKDOWN_FILE].decode()
    assert run_id not in markdown
    assert "d" * 40 not in markdown  # the training run's git tag
    assert "registered model version" not in markdown
    assert SHA in markdown  # the model is named by its estimator hash
    assert f"trd-{TASK} version {version}, holds the champion alias, gate passed" in caplog.text
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, stage.MLFLOW_ARTIFACT_PATH)}
    assert artifacts == {
        f"{stage.MLFLOW_ARTIFACT_PATH}/{name}" for name in (stage.DATA_FILE, stage.MARKDOWN_FILE, stage.HTML_FILE)
    }


def test_a_version_without_the_alias_is_said_on_the_console(project, mlflow_store) -> None:
    _register(project, SHA, champion=False)
    _, _, inputs = build(project)
    assert not inputs.registry.holds_champion
    assert stage.registry_line(inputs.registry).endswith("no version holds the champion alias, gate passed")


def test_a_registry_without_this_estimator_is_not_found(project, mlflow_store) -> None:
    _register(project, "e" * 64, champion=True)
    _, _, inputs = build(project)
    assert not inputs.registry.found
    assert stage.registry_line(inputs.registry).startswith(f"trd-{TASK} not found")


def test_dvc_lock_hashes_are_read_for_this_task_only(project) -> None:
    card, _, _ = build(project)
    assert card["provenance"]["rows"] == [
        ["`evaluate@acute`", "`reports/acute/evaluation`", "`0123456789abcdef0123456789abcdef.dir`"]
    ]


def test_dvc_yaml_declares_the_stage_and_every_file_it_reads(project) -> None:
    stage_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["report"]
    assert stage_yaml["foreach"] == "${tasks}"
    assert stage_yaml["do"]["cmd"] == "python -m pipeline report ${key}"
    assert stage_yaml["do"]["outs"] == [
        f"reports/${{key}}/{name}" for name in (stage.DATA_FILE, stage.MARKDOWN_FILE, stage.HTML_FILE)
    ]
    deps = [d.replace("${key}", TASK) for d in stage_yaml["do"]["deps"]]
    assert "dvc.lock" not in deps
    assert "pipeline/report" in deps  # the package: code, templates and data files

    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)

    _, _, inputs = build(project)
    read = [value.path for value in vars(inputs).values() if isinstance(value, card_inputs.Sourced)]
    read += [s.path for s in inputs.sources.values()]
    read += [inputs.feature_spec_path, "configs/cohort_schema.yaml"]
    assert inputs.explain is not None
    read += [s.path for s in (inputs.explain.fidelity, inputs.explain.explanation, inputs.explain.importance)]
    read += [f"reports/{TASK}/{href}" for href in (*inputs.figures.values(), *inputs.explain.figures.values())]
    missing = sorted(path for path in read if not covered(path) and path != "params.yaml")
    assert not missing, f"read but not declared as dvc.yaml deps: {missing}"


def test_cli_has_the_report_command() -> None:
    from typer.main import get_command

    from pipeline.cli import app

    assert "report" in get_command(app).commands


REAL_INPUTS = [REPO_ROOT / f"reports/{TASK}/evaluation/metrics.json", REPO_ROOT / f"reports/{TASK}/cv_metrics.json"]


def identifying(ids: set[str]) -> set[str]:
    """Patient ids a card could be checked for: a bare number of up to 5 digits reads the same as a count or a
    value in the card, so it is no evidence of a leak; longer numbers and ids with other characters are."""
    return {patient for patient in ids if not re.fullmatch(r"\d{1,5}", patient.strip())}


def test_the_privacy_check_matches_real_identifiers_only() -> None:
    ids = {"1", "100", "12345", "syn-000123", "sub-MOA999", "483920", "P07"}
    assert identifying(ids) == {"syn-000123", "sub-MOA999", "483920", "P07"}


@pytest.mark.skipif(not all(p.is_file() for p in REAL_INPUTS), reason="the pipeline has not run here (dvc repro)")
def test_card_over_the_real_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    # the registry is not read here: the facts are what is checked, and the real store may be busy
    monkeypatch.setattr(
        card_inputs, "registry_info", lambda root, name, sha: card_inputs.RegistryInfo(name, reason="skipped")
    )
    monkeypatch.setenv("TRD_PROJECT_ROOT", str(REPO_ROOT))
    card, markdown, _ = build(REPO_ROOT)
    assert check_card_data(card, REPO_ROOT)["checked"] > 300
    test_ids = pd.read_parquet(REPO_ROOT / f"data/processed/{TASK}/test.parquet", columns=["patient_id"])
    cohort = REPO_ROOT / "data/interim/cohort.parquet"
    ids = set(test_ids["patient_id"].astype(str))
    if cohort.is_file():
        ids |= set(pd.read_parquet(cohort, columns=["patient_id"])["patient_id"].astype(str))
    assert not identifying(ids) & set(re.findall(r"[A-Za-z0-9_-]+", markdown))
