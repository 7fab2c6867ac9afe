"""dvc.yaml's code deps of explain@<task> are exactly the files the stage runs, and it imports no other stage."""

from __future__ import annotations

import yaml

from tests.conftest import REPO_ROOT
from tests.import_closure import stage_code, uncovered

# other stages' modules: importing one would make this stage rerun on (and depend on) their internals
OTHER_STAGES = (
    "pipeline/train.py",
    "pipeline/report.py",
    "pipeline/clean.py",
    "pipeline/split.py",
    "pipeline/evaluate",
)


def test_code_deps_are_the_import_closure() -> None:
    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["explain"]["do"]["deps"]
    missing, extra = uncovered(stage_code("pipeline.explain.main"), deps)
    assert not missing, f"dvc.yaml explain deps miss files the stage imports: {sorted(missing)}"
    assert not extra, f"dvc.yaml explain deps list code the stage never imports: {sorted(extra)}"


def test_no_other_stage_is_imported() -> None:
    code = stage_code("pipeline.explain.main")
    assert not [f for f in code if f.startswith(OTHER_STAGES)]
