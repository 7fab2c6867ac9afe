"""The missing-truth and broken-truth paths (pipeline.synthesize.planted, pipeline.explain.core.planted_reference)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.explain.core import planted_reference
from pipeline.explain.main import write_reports
from pipeline.explain.plots import figures
from pipeline.synthesize.planted import parse_planted_truth, read_planted_effects
from tests.explain.conftest import run

# --------------------------------------------------------------------------------------------------------------
# no truth, or a broken one
# --------------------------------------------------------------------------------------------------------------


def test_synthetic_patients_without_planted_effects_stop_the_stage(split, tmp_path) -> None:
    missing = tmp_path / "planted_effects.json"
    assert read_planted_effects(missing) is None
    with pytest.raises(PipelineError, match="no planted effects") as caught:
        planted_reference(read_planted_effects(missing), split[1], "response_acute", file=missing)
    assert "dvc repro synthesize" in str(caught.value)


def test_real_patients_report_fidelity_unavailable(split, models, tmp_path) -> None:
    real = split[1].assign(cohort=pd.Categorical(["ds005917"] * len(split[1])))
    reference = planted_reference(None, real, "response_acute", file="planted_effects.json")
    assert reference.truth is None
    assert "fidelity unavailable" in reference.reason
    result = run(real, models[("xgboost", "none")], reference, example_patients=0, dependence_top_k=0)
    assert "fidelity" not in result.metrics
    assert result.report["fidelity"] == {"available": False, "reason": reference.reason}
    assert "fidelity_role" not in result.importance.columns
    assert "fidelity.png" not in figures(result)
    write_reports(result, tmp_path / "explain")
    assert json.loads((tmp_path / "explain/fidelity.json").read_text())["n_explained"] == len(real)
    assert not (tmp_path / "explain/sign_checks.csv").exists()


def test_an_outcome_without_coefficients_is_reported_not_fatal(planted, split) -> None:
    reference = planted_reference(planted, split[1], "response_end_early", file="x")
    assert reference.truth is None
    assert "no coefficients (early markers enter non-linearly" in reference.reason


def test_broken_planted_effects_are_a_clear_error(tmp_path, planted) -> None:
    broken = tmp_path / "planted_effects.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(PipelineError, match="planted effects unreadable"):
        read_planted_effects(broken)
    without_terms = {**planted, "terms": {}}
    with pytest.raises(PipelineError, match="malformed"):
        parse_planted_truth(without_terms, "response_acute", file=broken)
