"""Split stage: patient-level, stratified, seeded; holdout sites; the real cohort never trains."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import split as split_stage
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import write_parquet
from pipeline.split import SplitParams, split_cohort
from pipeline.tasks import TaskPopulation, TaskSpec

TASK = TaskSpec(description="Before a single infusion.", target="response_acute", prediction_time="baseline")
SITES = ("north", "east", "south", "west")


def cohort_frame(contract, n: int = 800, seed: int = 0) -> pd.DataFrame:
    """Synthetic patients over four sites (30 % responders, 5 % unknown outcomes) and 30 real ones."""
    rng = np.random.default_rng(seed)
    frame = contract.empty_frame(n + 30)
    frame["patient_id"] = [f"syn-{i:06d}" for i in range(n)] + [f"sub-{i:03d}" for i in range(30)]
    frame["cohort"] = ["synthetic"] * n + ["ds005917"] * 30
    frame["site"] = [*rng.choice(SITES, n), *["nimh"] * 30]
    response = pd.array(rng.random(n + 30) < 0.3, dtype="boolean")
    response[rng.random(n + 30) < 0.05] = pd.NA
    frame["response_acute"] = response
    return contract.coerce(frame)


def params(**overrides) -> SplitParams:
    return SplitParams.model_validate({"training_cohort": "synthetic", "test_size": 0.25, **overrides})


@pytest.fixture(scope="module")
def frame(contract) -> pd.DataFrame:
    return cohort_frame(contract)


def test_no_patient_is_on_both_sides_and_every_eligible_patient_is_on_one(frame) -> None:
    train, test = split_cohort(frame, TASK, params(), seed=1)
    assert not set(train["patient_id"]) & set(test["patient_id"])
    eligible = frame[(frame["cohort"] == "synthetic") & frame["response_acute"].notna()]
    assert sorted([*train["patient_id"], *test["patient_id"]]) == sorted(eligible["patient_id"])
    assert len(test) == pytest.approx(0.25 * len(eligible), abs=1)


def test_a_duplicated_patient_stops_the_split(frame) -> None:
    """A patient in two rows could be trained on and tested on: refused, not split."""
    doubled = pd.concat([frame, frame[frame["cohort"] == "synthetic"].head(1)], ignore_index=True)
    with pytest.raises(PipelineError, match="more than one row"):
        split_cohort(doubled, TASK, params(), seed=1)


def test_the_split_is_stratified_on_the_target(frame) -> None:
    train, test = split_cohort(frame, TASK, params(), seed=1)
    rate = lambda part: part["response_acute"].astype(bool).mean()  # noqa: E731
    # stratified: the two rates differ by at most one patient's worth of the test split
    assert abs(rate(train) - rate(test)) <= 1 / len(test)
    # an unstratified split of the same size usually differs by more: the check above can fail
    rng = np.random.default_rng(3)
    eligible = pd.concat([train, test])
    differences = []
    for _ in range(50):
        shuffled = eligible.iloc[rng.permutation(len(eligible))]
        differences.append(abs(rate(shuffled.iloc[len(test) :]) - rate(shuffled.iloc[: len(test)])))
    assert np.median(differences) > 1 / len(test)


def test_the_split_is_seeded(frame) -> None:
    first, _ = split_cohort(frame, TASK, params(), seed=1)
    again, _ = split_cohort(frame, TASK, params(), seed=1)
    other, _ = split_cohort(frame, TASK, params(), seed=2)
    assert first["patient_id"].tolist() == again["patient_id"].tolist()
    assert first["patient_id"].tolist() != other["patient_id"].tolist()


def test_holdout_sites_become_the_whole_test_split(frame) -> None:
    train, test = split_cohort(frame, TASK, params(holdout_sites=["east", "west"]), seed=1)
    assert set(test["site"]) == {"east", "west"}
    assert not set(train["site"]) & {"east", "west"}
    eligible = frame[(frame["cohort"] == "synthetic") & frame["response_acute"].notna()]
    assert len(test) == int(eligible["site"].isin(["east", "west"]).sum())


def test_an_unknown_holdout_site_is_a_config_error(frame) -> None:
    with pytest.raises(ConfigError, match=r"holdout_sites.*nowhere"):
        split_cohort(frame, TASK, params(holdout_sites=["nowhere"]), seed=1)


def test_a_real_site_cannot_be_held_out_into_training_data(frame) -> None:
    """The real cohort's site is not a training-cohort site, so naming it is an error, not a silent no-op."""
    with pytest.raises(ConfigError, match="nimh"):
        split_cohort(frame, TASK, params(holdout_sites=["nimh"]), seed=1)


def test_the_real_cohort_never_trains(frame) -> None:
    for holdout in ([], ["north"]):
        train, test = split_cohort(frame, TASK, params(holdout_sites=holdout), seed=1)
        assert set(train["cohort"]) == {"synthetic"}
        assert set(test["cohort"]) == {"synthetic"}
        assert not train["patient_id"].str.startswith("sub-").any()


def test_training_on_another_cohort_uses_only_its_rows(contract) -> None:
    frame = cohort_frame(contract)
    frame["cohort"] = frame["cohort"].astype("string").replace({"synthetic": "other_clinic"})
    with pytest.raises(ConfigError, match=r"training_cohort names \['synthetic'\], not in the clean cohort"):
        split_cohort(frame, TASK, params(), seed=1)
    train, test = split_cohort(frame, TASK, params(training_cohort="other_clinic"), seed=1)
    assert set(pd.concat([train, test])["cohort"]) == {"other_clinic"}


def test_a_list_of_cohorts_is_pooled_and_each_row_keeps_its_cohort(contract) -> None:
    frame = cohort_frame(contract)
    frame["cohort"] = frame["cohort"].astype("string").where(frame.index % 2 == 0, "clinic_b")
    frame.loc[frame["patient_id"].str.startswith("sub-"), "cohort"] = "ds005917"
    train, test = split_cohort(frame, TASK, params(training_cohort=["synthetic", "clinic_b"]), seed=1)
    pooled = pd.concat([train, test])
    assert set(pooled["cohort"]) == {"synthetic", "clinic_b"}
    eligible = frame[frame["cohort"].isin(["synthetic", "clinic_b"]) & frame["response_acute"].notna()]
    assert len(pooled) == len(eligible)
    with pytest.raises(ValueError, match="distinct"):
        params(training_cohort=["synthetic", "synthetic"])
    with pytest.raises(ValueError, match="distinct"):
        params(training_cohort=[])


def test_a_small_cohort_keeps_every_patient_for_training(frame) -> None:
    small = params(training_cohort="ds005917", small_cohort_n=200)
    train, test = split_cohort(frame, TASK, small, seed=1)
    eligible = frame[(frame["cohort"] == "ds005917") & frame["response_acute"].notna()]
    assert sorted(train["patient_id"]) == sorted(eligible["patient_id"])
    assert test.empty
    assert list(test.columns) == list(train.columns)
    assert split_stage.protocol(small, len(eligible)) == "small_cohort"
    # at or above the threshold: the usual held-out split
    assert split_stage.protocol(small, 200) == "held_out"
    train, test = split_cohort(frame, TASK, params(small_cohort_n=200), seed=1)
    assert len(test) > 0


def test_holdout_sites_on_a_real_cohort_with_a_site_column(contract) -> None:
    frame = cohort_frame(contract)
    real = frame["cohort"] == "synthetic"
    frame["cohort"] = frame["cohort"].astype("string").where(~real, "clinic")
    train, test = split_cohort(frame, TASK, params(training_cohort="clinic", holdout_sites=["east"]), seed=1)
    assert set(test["site"]) == {"east"}
    assert set(train["cohort"]) == set(test["cohort"]) == {"clinic"}
    frame.loc[real, "site"] = pd.NA  # a cohort whose config maps no site
    with pytest.raises(ConfigError, match="records no site"):
        split_cohort(frame, TASK, params(training_cohort="clinic", holdout_sites=["east"]), seed=1)


def test_a_single_outcome_class_cannot_be_split(contract) -> None:
    frame = cohort_frame(contract)
    frame["response_acute"] = pd.array([False] * len(frame), dtype="boolean")
    with pytest.raises(PipelineError, match="fewer than 2 patients in a class"):
        split_cohort(frame, TASK, params(), seed=1)


def test_a_holdout_without_responders_is_refused(contract) -> None:
    frame = cohort_frame(contract)
    frame.loc[frame["site"] == "east", "response_acute"] = False
    with pytest.raises(PipelineError, match="test split has only one outcome class"):
        split_cohort(frame, TASK, params(holdout_sites=["east"]), seed=1)


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="test_size"):
        params(test_size=1.0)
    with pytest.raises(ValueError, match="extra"):
        params(holdout_site=["east"])


def test_main_writes_both_splits_and_their_counts(project_root, contract) -> None:
    frame = cohort_frame(contract)
    write_parquet(frame, project_root / "data/interim/cohort.parquet")
    split_stage.main("acute")
    out = project_root / "data/processed/acute"
    train, test = pd.read_parquet(out / "train.parquet"), pd.read_parquet(out / "test.parquet")
    counts = json.loads((out / "split.json").read_text())
    assert counts["train"] == {"n": len(train), "events": int(train["response_acute"].sum())}
    assert counts["test"] == {"n": len(test), "events": int(test["response_acute"].sum())}
    assert (counts["protocol"], counts["development_cohorts"]) == ("held_out", ["synthetic"])
    assert not set(train["patient_id"]) & set(test["patient_id"])


def test_only_the_task_s_population_is_split(frame) -> None:
    """tasks.<task>.population (issue 18): rows outside it, or with the column missing, reach neither split."""
    rng = np.random.default_rng(4)
    gad7 = pd.array(rng.integers(0, 22, len(frame)).astype(float), dtype="Float64")
    gad7[:40] = pd.NA
    with_gad7 = frame.assign(gad7_baseline=gad7)
    task = TASK.model_copy(
        update={"population": TaskPopulation(column="gad7_baseline", min=10, description="baseline GAD-7 >= 10")}
    )
    train, test = split_cohort(with_gad7, task, params(), seed=1)
    both = pd.concat([train, test])
    assert (both["gad7_baseline"] >= 10).all()
    inside = with_gad7[
        (with_gad7["cohort"] == "synthetic") & with_gad7["response_acute"].notna() & (with_gad7["gad7_baseline"] >= 10)
    ]
    assert sorted(both["patient_id"]) == sorted(inside["patient_id"])
    nobody = task.model_copy(
        update={"population": TaskPopulation(column="gad7_baseline", min=30, description="GAD-7 >= 30")}
    )
    with pytest.raises(PipelineError, match="in the task's population"):
        split_cohort(with_gad7, nobody, params(), seed=1)
