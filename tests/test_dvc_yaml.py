"""dvc.yaml agrees with the code: every stage declares exactly the params its module reads (anchors.md §6.2)."""

from __future__ import annotations

import importlib

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
