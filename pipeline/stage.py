"""One stage frame: what every stage's ``main`` used to assemble by hand before its pure core runs.

:meth:`StageContext.open` finds the project, reads ``params.yaml`` once, and for a task stage resolves the task and
the cohort contract; the properties name every per-task file the stages share (the splits, ``split.json``, the
champion's folder), so no stage rebuilds a path or imports another stage to find one. A bottom module: it imports
only the params, paths, tasks and contract modules, never a stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ConfigError
from pipeline.params import BaseParams, parse_section, read_params_file
from pipeline.paths import ProjectPaths
from pipeline.tasks import TasksParams, TaskSpec

ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass(frozen=True)
class StageContext:
    """Paths, params, seed, task and contract of one stage run (frozen: a stage reads it, never changes it)."""

    paths: ProjectPaths
    raw_params: dict[str, Any]
    seed: int
    contract: CohortContract
    task_name: str | None = None
    task: TaskSpec | None = None

    @classmethod
    def open(cls, task_name: str | None = None, *, paths: ProjectPaths | None = None) -> StageContext:
        """Read params.yaml and the contract; with ``task_name``, the task too (an unknown task is a ConfigError)."""
        paths = paths or ProjectPaths.discover()
        raw = read_params_file(paths.params_file)
        seed = parse_section(BaseParams, raw, "base", paths.params_file).seed
        task = None
        if task_name is not None:
            task = parse_section(TasksParams, raw, "tasks", paths.params_file).get(task_name)
        return cls(paths, raw, seed, load_contract(paths.cohort_schema), task_name, task)

    def section(self, model: type[ParamsT], name: str) -> ParamsT:
        """The typed, frozen params of section ``name`` (errors name ``section.key`` and params.yaml)."""
        return parse_section(model, self.raw_params, name, self.paths.params_file)

    @property
    def root(self) -> Path:
        return self.paths.root

    def _task(self) -> str:
        if self.task_name is None:
            raise ConfigError("this stage was opened without a task, but a per-task file was asked for")
        return self.task_name

    @property
    def split_dir(self) -> Path:
        """``data/processed/<task>``: the split stage's out."""
        return self.paths.processed_dir / self._task()

    @property
    def train_split(self) -> Path:
        return self.split_dir / "train.parquet"

    @property
    def test_split(self) -> Path:
        return self.split_dir / "test.parquet"

    @property
    def split_summary_file(self) -> Path:
        return self.split_dir / "split.json"

    def split_summary(self) -> dict[str, Any] | None:
        """split.json (sizes, protocol, development cohorts), or None before the split stage has run."""
        path = self.split_summary_file
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc})", file=path, hint="re-run the split stage") from None

    @property
    def champion_dir(self) -> Path:
        """``models/<task>``: the champion's bundle, as the train stage saved it."""
        return self.paths.models_dir / self._task()

    @property
    def candidates_dir(self) -> Path:
        """``models/candidates/<task>``: every candidate's final fit, for comparison on the test split."""
        return self.paths.models_dir / "candidates" / self._task()

    @property
    def reports_dir(self) -> Path:
        """``reports/<task>``."""
        return self.paths.reports_dir / self._task()
