"""Stage ``split@<task>``: patient-level train/test split of the training cohort, stratified and seeded.

With ``split.holdout_sites`` set, those whole sites form the test split instead (internal-external
validation). Only rows of ``split.training_cohort`` with a known target, inside the task's population
(``tasks.<task>.population``, :func:`pipeline.tasks.population_mask`), are split; the real cohort is never used
for training.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.model_selection import train_test_split

from pipeline.contract import load_contract
from pipeline.errors import ConfigError, PipelineError
from pipeline.io import read_parquet, write_json, write_parquet
from pipeline.params import BaseParams, Frozen, parse_section, read_params_file
from pipeline.paths import ProjectPaths
from pipeline.tasks import TasksParams, TaskSpec, population_mask

log = logging.getLogger(__name__)

PARAMS_USED = ("base.seed", "tasks.{task}", "split")


class SplitParams(Frozen):
    training_cohort: str = "synthetic"
    test_size: float = Field(gt=0.0, lt=1.0)
    holdout_sites: list[str] = Field(default_factory=list)


def split_cohort(
    cohort: pd.DataFrame, task: TaskSpec, params: SplitParams, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, test) rows of the training cohort with a known target."""
    in_population = population_mask(cohort, task.population)
    eligible = cohort[(cohort["cohort"] == params.training_cohort) & cohort[task.target].notna() & in_population]
    eligible = eligible.sort_values("patient_id", kind="stable").reset_index(drop=True)
    duplicated = eligible["patient_id"].duplicated()
    if duplicated.any():  # one patient in two rows could land on both sides of the split
        raise PipelineError(
            f"{int(duplicated.sum())} patient id(s) appear in more than one row of the training cohort",
            hint="the clean stage resolves duplicates: re-run it (dvc repro clean)",
        )
    if eligible.empty:
        raise PipelineError(
            f"no '{params.training_cohort}' rows with a known {task.target}"
            + (f" in the task's population ({task.population.description})" if task.population else ""),
            hint="check split.training_cohort and the clean stage's report",
        )
    if params.holdout_sites:
        unknown = sorted(set(params.holdout_sites) - set(eligible["site"].dropna()))
        if unknown:
            raise ConfigError(f"split.holdout_sites lists sites not in the cohort: {unknown}")
        in_test = eligible["site"].isin(params.holdout_sites).to_numpy()
        train, test = eligible[~in_test], eligible[in_test]
    else:
        y = eligible[task.target].astype(bool).to_numpy()
        if np.bincount(y.astype(int), minlength=2).min() < 2:
            raise PipelineError(f"{task.target} has fewer than 2 patients in a class: cannot stratify")
        train, test = train_test_split(eligible, test_size=params.test_size, stratify=y, random_state=seed)
    for name, part in (("train", train), ("test", test)):
        if part[task.target].nunique() < 2:
            raise PipelineError(f"the {name} split has only one outcome class", hint="change the split params")
    return (
        train.sort_values("patient_id", kind="stable").reset_index(drop=True),
        test.sort_values("patient_id", kind="stable").reset_index(drop=True),
    )


def main(task_name: str) -> None:
    paths = ProjectPaths.discover()
    raw = read_params_file(paths.params_file)
    seed = parse_section(BaseParams, raw, "base", paths.params_file).seed
    task = parse_section(TasksParams, raw, "tasks", paths.params_file).get(task_name)
    params = parse_section(SplitParams, raw, "split", paths.params_file)
    contract = load_contract(paths.cohort_schema)
    cohort = contract.coerce(read_parquet(paths.interim_dir / "cohort.parquet", "clean cohort"))
    train, test = split_cohort(cohort, task, params, seed)
    out = paths.processed_dir / task_name
    write_parquet(train, out / "train.parquet")
    write_parquet(test, out / "test.parquet")
    summary = {
        split: {"n": len(part), "events": int(part[task.target].astype(bool).sum())}
        for split, part in (("train", train), ("test", test))
    }
    write_json(summary, out / "split.json")
    log.info("%s: train %s, test %s", task_name, summary["train"], summary["test"])
