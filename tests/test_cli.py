"""`trd` messages (layout detection, unknown task), `trd features` and the pyfunc's missing-column error."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from pipeline.errors import ExitCode, PipelineError
from pipeline.features import FeatureSpec
from pipeline.scoring.detect import choose_layout, read_header
from tests.scoring.helpers import canonical_rows, invoke, save_test_model, write

TOLERANCE = 1e-12  # same estimator, same float64 matrix: only the batch shape may move the last bit


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, contract) -> Path:
    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", lambda X: 0.08 * (X["bmi"] - 28))


# --------------------------------------------------------------------------------------------------------------
# input layout
# --------------------------------------------------------------------------------------------------------------

LAYOUTS = {"canonical": ["patient_id", "age"], "synthetic": ["patient_ref", "age_years"]}


def test_the_first_layout_whose_columns_are_there_is_chosen() -> None:
    assert choose_layout({"patient_id", "age", "x"}, LAYOUTS, Path("in.csv")) == "canonical"
    assert choose_layout({"patient_ref", "age_years"}, LAYOUTS, Path("in.csv")) == "synthetic"
    assert choose_layout({"patient_ref", "age_years"}, LAYOUTS, Path("in.csv"), requested="synthetic") == "synthetic"


def test_no_fitting_layout_names_what_each_lacks_and_suggests_format() -> None:
    with pytest.raises(PipelineError) as caught:
        choose_layout({"id"}, LAYOUTS, Path("in.csv"))
    text = str(caught.value)
    assert "canonical lacks patient_id, age" in text
    assert "synthetic lacks patient_ref, age_years" in text
    assert "give --format, one of: canonical, synthetic" in text
    assert "canonical.yaml" not in text
    assert caught.value.exit_code == ExitCode.INPUT


def test_a_requested_layout_that_does_not_fit_points_at_the_one_that_does() -> None:
    with pytest.raises(PipelineError, match=r"missing required column\(s\) for --format canonical") as caught:
        choose_layout({"patient_ref", "age_years"}, LAYOUTS, Path("in.csv"), requested="canonical")
    assert caught.value.hint == "the file fits --format synthetic"


def test_read_header_of_csv_and_parquet_and_none_for_a_folder(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1], " b": [2]})
    assert read_header(write(frame, tmp_path / "x.csv")) == {"a", "b"}
    assert read_header(write(frame, tmp_path / "x.parquet")) == {"a", " b"}
    assert read_header(tmp_path) is None


def test_validate_without_format_reads_a_canonical_file(tmp_path, model_dir, contract) -> None:
    source = write(canonical_rows(contract, 20), tmp_path / "in.csv")
    code, text = invoke("validate", str(source), "--model", str(model_dir))
    assert code == 0, text
    assert "20 rows, 20 valid" in text


def test_a_wrong_format_says_which_format_fits(tmp_path, model_dir, contract) -> None:
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    code, text = invoke("validate", str(source), "--model", str(model_dir), "--format", "synthetic")
    assert code == ExitCode.INPUT, text
    assert "the file fits --format canonical" in text
    code, text = invoke("validate", str(source), "--model", str(model_dir), "--format", "ds005917")
    assert code == ExitCode.USAGE, text
    assert "use --format with one of: canonical, synthetic" in text  # a BIDS source is no input layout


def test_an_unknown_task_lists_the_tasks(tmp_path, contract) -> None:
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    for command in (["validate"], ["score", "-o", str(tmp_path / "out.csv")], ["features", "-o", "f.csv"]):
        code, text = invoke(*command, str(source), "--task", "foo")
        assert code == ExitCode.USAGE, text
        assert "unknown task 'foo'" in text
        assert "acute, course, course_early" in text


# --------------------------------------------------------------------------------------------------------------
# trd features and the pyfunc
# --------------------------------------------------------------------------------------------------------------


def test_features_feed_the_pyfunc_to_the_scores_of_trd_score(tmp_path, model_dir, contract) -> None:
    rows = canonical_rows(contract, 120)
    rows.loc[3, "madrs_baseline"] = np.nan  # below the scoring rule: rejected by the scorer, left out here
    rows.loc[7, "patient_id"] = rows.loc[6, "patient_id"]  # a duplicate: the first row counts
    source = write(rows, tmp_path / "in.csv")
    features_csv, scores_csv = tmp_path / "features.csv", tmp_path / "scores.csv"

    code, text = invoke("features", str(source), "-o", str(features_csv), "--model", str(model_dir))
    assert code == 0, text
    assert "120 rows: 118 feature rows" in text
    code, text = invoke("score", str(source), "-o", str(scores_csv), "--model", str(model_dir))
    assert code == ExitCode.ROWS_REJECTED, text

    features = pd.read_csv(features_csv)  # what `mlflow models predict -t csv` does with the file
    spec = FeatureSpec.load(model_dir / "artifacts" / "feature_spec.json")
    assert list(features.columns) == spec.feature_names
    assert (features.dtypes == "float64").all()
    assert "patient_id" not in features.columns
    predicted = mlflow.pyfunc.load_model(str(model_dir)).predict(features)["p_response"].to_numpy()
    scored = pd.read_csv(scores_csv)["p_response"].to_numpy()
    np.testing.assert_allclose(predicted, scored, rtol=0, atol=TOLERANCE)


def test_features_refuse_an_output_that_is_not_csv_or_parquet(tmp_path, model_dir, contract) -> None:
    source = write(canonical_rows(contract, 5), tmp_path / "in.csv")
    code, text = invoke("features", str(source), "-o", str(tmp_path / "f.txt"), "--model", str(model_dir))
    assert code == ExitCode.USAGE, text
    assert not (tmp_path / "f.txt").exists()


def test_the_pyfunc_names_a_missing_column_and_the_command_that_builds_the_matrix(model_dir) -> None:
    model = mlflow.pyfunc.load_model(str(model_dir))
    spec = FeatureSpec.load(model_dir / "artifacts" / "feature_spec.json")
    frame = pd.DataFrame({name: [1.0] for name in spec.feature_names if name != "bmi"})
    with pytest.raises(MlflowException, match=r"lacks 1 of the model's \d+ feature column\(s\): bmi") as caught:
        model.predict(frame)
    assert "trd features INPUT -o features.csv" in str(caught.value)
