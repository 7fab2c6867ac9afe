"""dvc.yaml agrees with the code: every stage declares exactly the params its module reads (docs/engineering.md §7)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from pipeline.params import read_params_file
from tests.conftest import REPO_ROOT

DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = read_params_file(REPO_ROOT / "params.yaml")
TASKS = sorted(PARAMS["tasks"])


def declared(stage: dict, task: str | None) -> set[str]:
    entries = stage.get("do", stage).get("params", [])
    return {str(e).replace("${key}", task or "") for e in entries}


@pytest.mark.parametrize("stage_name", sorted(DVC_YAML["stages"]))
def test_stage_params_match_the_module(stage_name: str) -> None:
    stage = DVC_YAML["stages"][stage_name]
    module = importlib.import_module(f"pipeline.{stage_name}")
    tasks = TASKS if "foreach" in stage else [None]
    for task in tasks:
        used = {p.format(task=task) for p in module.PARAMS_USED}
        assert declared(stage, task) == used, f"{stage_name}@{task}: dvc.yaml params differ from PARAMS_USED"


@pytest.mark.parametrize("stage_name", sorted(DVC_YAML["stages"]))
def test_declared_params_exist(stage_name: str) -> None:
    stage = DVC_YAML["stages"][stage_name]
    for task in TASKS if "foreach" in stage else [None]:
        for dotted in declared(stage, task):
            node = PARAMS
            for part in dotted.split("."):
                assert isinstance(node, dict), dotted
                assert part in node, f"{stage_name}: params.yaml has no '{dotted}'"
                node = node[part]


def test_task_stages_expand_over_the_tasks_section() -> None:
    for stage in DVC_YAML["stages"].values():
        if "foreach" in stage:
            assert stage["foreach"] == "${tasks}"


def test_stage_commands_run_the_working_tree_code() -> None:
    for name, stage in DVC_YAML["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        assert cmd.startswith("python -m pipeline "), name


# --- the clean stage depends on every configured source's files ------------------------------------------------


def source_files(root: Path, params: dict) -> dict[str, list[str]]:
    """The local files (relative to ``root``, or absolute) each source in ``clean.sources`` makes clean read."""
    files: dict[str, list[str]] = {}
    for name in params["clean"]["sources"]:
        config = yaml.safe_load((root / "configs" / "sources" / f"{name}.yaml").read_text(encoding="utf-8"))
        if config["kind"] == "tabular_export":
            files[name] = [config["files"]["export"]]
        else:  # bids_phenotype: the release as `trd fetch` lays it out
            files[name] = [f"data/external/{name}"]
    return files


def undeclared_source_files(root: Path, dvc: dict, params: dict) -> list[str]:
    """Files a configured source reads that no dependency of the clean stage covers (editing them would not
    rerun it)."""
    deps = [str(dep).rstrip("/") for dep in dvc["stages"]["clean"]["deps"]]
    return [
        path
        for paths in source_files(root, params).values()
        for path in paths
        if not any(path == dep or path.startswith(dep + "/") for dep in deps)
    ]


def test_clean_depends_on_every_configured_source_file() -> None:
    missing = undeclared_source_files(REPO_ROOT, DVC_YAML, PARAMS)
    assert not missing, f"add these to the clean stage's deps in dvc.yaml (README 'Adding a cohort'): {missing}"


def test_a_source_file_missing_from_the_clean_deps_is_found() -> None:
    dvc = {"stages": {"clean": {"deps": [d for d in DVC_YAML["stages"]["clean"]["deps"] if "synthetic" not in d]}}}
    assert undeclared_source_files(REPO_ROOT, dvc, PARAMS) == ["data/raw/synthetic/export.parquet"]
    assert source_files(REPO_ROOT, PARAMS) == {
        "synthetic": ["data/raw/synthetic/export.parquet"],
        "ds005917": ["data/external/ds005917"],
    }
