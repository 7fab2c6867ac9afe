"""The stage frame (pipeline/stage.py): one place that reads params, the task and the contract for a stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.split import SplitParams
from pipeline.stage import StageContext


def test_a_task_stage_gets_its_params_task_and_per_task_paths(project_root: Path) -> None:
    params = yaml.safe_load((project_root / "params.yaml").read_text(encoding="utf-8"))
    ctx = StageContext.open("acute")
    assert ctx.root == project_root.resolve()
    assert ctx.seed == params["base"]["seed"]
    assert ctx.task is not None
    assert ctx.task.target == params["tasks"]["acute"]["target"]
    assert ctx.section(SplitParams, "split").test_size == params["split"]["test_size"]
    assert ctx.train_split == project_root.resolve() / "data" / "processed" / "acute" / "train.parquet"
    assert ctx.test_split.parent == ctx.split_summary_file.parent == ctx.split_dir
    assert ctx.champion_dir == project_root.resolve() / "models" / "acute"
    assert ctx.candidates_dir == project_root.resolve() / "models" / "candidates" / "acute"
    assert ctx.reports_dir == project_root.resolve() / "reports" / "acute"
    assert "cohort" in ctx.contract.by_name


def test_split_summary_is_none_before_the_split_and_read_after(project_root: Path) -> None:
    ctx = StageContext.open("acute")
    assert ctx.split_summary() is None
    ctx.split_dir.mkdir(parents=True)
    ctx.split_summary_file.write_text(json.dumps({"protocol": "held_out"}), encoding="utf-8")
    assert ctx.split_summary() == {"protocol": "held_out"}


def test_a_broken_split_summary_names_the_file(project_root: Path) -> None:
    ctx = StageContext.open("acute")
    ctx.split_dir.mkdir(parents=True)
    ctx.split_summary_file.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON") as error:
        ctx.split_summary()
    assert "split.json" in str(error.value)


def test_an_unknown_task_is_refused_before_anything_is_read(project_root: Path) -> None:
    with pytest.raises(ConfigError, match="acut"):
        StageContext.open("acut")


def test_a_stage_without_a_task_has_no_per_task_paths(project_root: Path) -> None:
    ctx = StageContext.open()
    assert ctx.task is None
    with pytest.raises(ConfigError, match="without a task"):
        _ = ctx.champion_dir


def test_a_bad_param_names_its_dotted_key(project_root: Path) -> None:
    params_file = project_root / "params.yaml"
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params["split"]["test_size"] = 1.5
    params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"split\.test_size"):
        StageContext.open("acute").section(SplitParams, "split")
