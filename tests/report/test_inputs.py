"""Gathering the card's inputs: a missing or broken upstream output stops the stage with the file named and what
to do, before anything is written; CSV cells read as the records the card cites."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.report.inputs import read_csv
from tests.report.fixtures import TASK, build


def test_a_missing_upstream_output_is_named_with_what_to_do(project) -> None:
    (project / f"reports/{TASK}/evaluation/metrics.json").unlink()
    with pytest.raises(PipelineError) as caught:
        build(project)
    assert caught.value.file.name == "metrics.json"
    assert "dvc repro" in str(caught.value)


def test_invalid_json_is_reported_with_its_file(project) -> None:
    (project / f"reports/{TASK}/cv_metrics.json").write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON") as caught:
        build(project)
    assert caught.value.file.name == "cv_metrics.json"


def test_an_evaluation_without_an_interval_level_stops_the_stage(project) -> None:
    path = project / f"reports/{TASK}/evaluation/evaluation.json"
    payload = json.loads(path.read_text())
    del payload["intervals"]["level"]
    path.write_text(json.dumps(payload))
    with pytest.raises(PipelineError, match=r"intervals\.level"):
        build(project)


def test_another_champion_in_the_cv_metrics_stops_the_stage(project) -> None:
    path = project / f"reports/{TASK}/cv_metrics.json"
    payload = json.loads(path.read_text())
    payload["champion"] = "xgboost"
    path.write_text(json.dumps(payload))
    with pytest.raises(PipelineError, match="another champion"):
        build(project)


def test_csv_rows_are_records_with_empty_cells_as_none(tmp_path) -> None:
    (tmp_path / "t.csv").write_text("a,b\n1,x\n,2.5\n")
    records = read_csv(tmp_path, "t.csv", "table").data
    assert records == [{"a": 1.0, "b": "x"}, {"a": None, "b": "2.5"}]  # a mixed column stays text
