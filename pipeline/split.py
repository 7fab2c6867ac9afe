"""Stage ``split@<task>``: patient-level train/test split of the development cohort, stratified and seeded.

The development cohort is ``split.training_cohort``: any cohort of the clean stage (a name), or several pooled
(a list; each row keeps its ``cohort``). Only its rows with a known target, inside the task's
population (``tasks.<task>.population``, :func:`pipeline.tasks.population_mask`), are split; every other cohort is left
for external validation. With ``split.holdout_sites`` set, those whole sites form the test split instead
(internal-external validation; the cohort needs a ``site`` column). Below ``split.small_cohort_n`` patients no
single test split is held out (a quarter of a small cohort is too few patients to judge a model by): every
patient trains, the test split is empty and ``split.json`` says ``protocol: small_cohort``; the train stage then
validates internally by bootstrap optimism correction on all of them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pydantic import Field, field_validator
from sklearn.model_selection import train_test_split

from pipeline.errors import ConfigError, PipelineError
from pipeline.io import read_parquet, write_json, write_parquet
from pipeline.params import Frozen
from pipeline.stage import StageContext
from pipeline.tasks import TaskSpec, population_mask

log = logging.getLogger(__name__)

PARAMS_USED = ("base.seed", "tasks.{task}", "split")


SMALL_COHORT = "small_cohort"  # split.json protocol: no held-out test split
HELD_OUT = "held_out"
SITES = "holdout_sites"


class SplitParams(Frozen):
    training_cohort: str | list[str] = Field(default="synthetic", description="A cohort, or a list to pool.")
    test_size: float = Field(gt=0.0, lt=1.0)
    holdout_sites: list[str] = Field(default_factory=list)
    small_cohort_n: int = Field(
        default=0, ge=0, description="Fewer eligible patients than this: no test split (bootstrap validation only)."
    )

    @field_validator("training_cohort")
    @classmethod
    def _names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not name.strip() for name in names) or len(set(names)) != len(names):
            raise ValueError("give a cohort name or a list of distinct cohort names")
        return value

    @property
    def cohorts(self) -> tuple[str, ...]:
        """The development cohort(s), sorted."""
        return tuple(sorted([self.training_cohort] if isinstance(self.training_cohort, str) else self.training_cohort))


def protocol(params: SplitParams, n_eligible: int) -> str:
    """How the development cohort is validated: whole sites held out, a random test split, or none (small)."""
    if params.holdout_sites:
        return SITES
    return SMALL_COHORT if n_eligible < params.small_cohort_n else HELD_OUT


def split_cohort(
    cohort: pd.DataFrame, task: TaskSpec, params: SplitParams, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, test) rows of the development cohort(s) with a known target (test empty: small cohort)."""
    present = set(cohort["cohort"].dropna().astype(str))
    unknown = [name for name in params.cohorts if name not in present]
    if unknown:
        raise ConfigError(
            f"split.training_cohort names {unknown}, not in the clean cohort (it holds {sorted(present)})",
            hint="use a name from clean.sources (each a file in configs/sources/) and re-run the clean stage",
        )
    in_population = population_mask(cohort, task.population)
    eligible = cohort[cohort["cohort"].isin(params.cohorts) & cohort[task.target].notna() & in_population]
    eligible = eligible.sort_values("patient_id", kind="stable").reset_index(drop=True)
    duplicated = eligible["patient_id"].duplicated()
    if duplicated.any():  # one patient in two rows could land on both sides of the split
        raise PipelineError(
            f"{int(duplicated.sum())} patient id(s) appear in more than one row of the training cohort",
            hint="the clean stage resolves duplicates: re-run it (dvc repro clean)",
        )
    if eligible.empty:
        raise PipelineError(
            f"no {'+'.join(params.cohorts)} rows with a known {task.target}"
            + (f" in the task's population ({task.population.description})" if task.population else ""),
            hint="check split.training_cohort and the clean stage's report (does the cohort record this outcome?)",
        )
    how = protocol(params, len(eligible))
    if how == SITES:
        sites = eligible["site"].dropna().astype(str) if "site" in eligible.columns else pd.Series(dtype=str)
        if sites.empty:
            raise ConfigError(
                f"split.holdout_sites is set but {'+'.join(params.cohorts)} records no site for any patient",
                hint="map the cohort's site column in its configs/sources/ file, or set split.holdout_sites: []",
            )
        unknown = sorted(set(params.holdout_sites) - set(sites))
        if unknown:
            raise ConfigError(
                f"split.holdout_sites lists sites not in the cohort: {unknown} (its sites: {sorted(set(sites))})"
            )
        in_test = eligible["site"].astype("string").isin(params.holdout_sites).fillna(False).to_numpy(dtype=bool)
        train, test = eligible[~in_test], eligible[in_test]
    elif how == SMALL_COHORT:
        train, test = eligible, eligible.iloc[:0]
    else:
        y = eligible[task.target].astype(bool).to_numpy()
        if np.bincount(y.astype(int), minlength=2).min() < 2:
            raise PipelineError(f"{task.target} has fewer than 2 patients in a class: cannot stratify")
        train, test = train_test_split(eligible, test_size=params.test_size, stratify=y, random_state=seed)
    for name, part in (("train", train), ("test", test)):
        if name == "test" and how == SMALL_COHORT:
            continue
        if part[task.target].nunique() < 2:
            raise PipelineError(f"the {name} split has only one outcome class", hint="change the split params")
    return (
        train.sort_values("patient_id", kind="stable").reset_index(drop=True),
        test.sort_values("patient_id", kind="stable").reset_index(drop=True),
    )


def main(task_name: str) -> None:
    ctx = StageContext.open(task_name)
    task, params, seed = ctx.task, ctx.section(SplitParams, "split"), ctx.seed
    cohort = ctx.contract.coerce(read_parquet(ctx.paths.interim_dir / "cohort.parquet", "clean cohort"))
    train, test = split_cohort(cohort, task, params, seed)
    write_parquet(train, ctx.train_split)
    write_parquet(test, ctx.test_split)
    summary: dict = {
        split: {"n": len(part), "events": int(part[task.target].astype(bool).sum())}
        for split, part in (("train", train), ("test", test))
    }
    summary["protocol"] = protocol(params, len(train) + len(test))
    summary["development_cohorts"] = list(params.cohorts)
    write_json(summary, ctx.split_summary_file)
    log.info("%s: train %s, test %s", task_name, summary["train"], summary["test"])
