"""Project paths, derived from the project root rather than the working directory.

The root is the nearest folder at or above the working directory that holds both ``dvc.yaml`` and
``params.yaml``. Searching from the working directory (not from this file) matters for ``dvc exp run --temp``:
DVC runs the stage inside a copy of the repository, and outputs must land in that copy.
``TRD_PROJECT_ROOT`` overrides the search (used by tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

ROOT_ENV = "TRD_PROJECT_ROOT"


def find_project_root(start: Path | None = None) -> Path:
    """Return the project root, or raise a ConfigError that says how to fix it."""
    override = os.environ.get(ROOT_ENV)
    if override:
        return Path(override).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(
        f"no project root (a folder with dvc.yaml and params.yaml) at or above {here}",
        hint=f"run the command from inside the project, or set {ROOT_ENV}=/path/to/project",
    )


@dataclass(frozen=True)
class ProjectPaths:
    """Every file location the stages share, in one place."""

    root: Path

    @classmethod
    def discover(cls, start: Path | None = None) -> ProjectPaths:
        return cls(find_project_root(start))

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def cohort_schema(self) -> Path:
        return self.configs / "cohort_schema.yaml"

    @property
    def scale_conversions(self) -> Path:
        return self.configs / "scale_conversions.yaml"

    @property
    def sources_dir(self) -> Path:
        return self.configs / "sources"

    @property
    def synthetic_dir(self) -> Path:
        return self.root / "data" / "raw" / "synthetic"

    @property
    def external_dir(self) -> Path:
        return self.root / "data" / "external"

    @property
    def interim_dir(self) -> Path:
        return self.root / "data" / "interim"

    @property
    def processed_dir(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"
