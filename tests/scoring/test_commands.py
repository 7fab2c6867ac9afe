"""What the scorer's commands (pipeline/scoring/commands.py) and the `trd` CLI import when they load.

Each check runs in a fresh interpreter: in this test process other tests have imported everything already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, command_function

REPO_ROOT = Path(__file__).resolve().parents[2]
# slow to import and never used to score: MLflow (registry URIs load it on demand), SHAP, matplotlib
NOT_FOR_THE_SCORER = ("mlflow", "shap", "matplotlib")
# what the stages and the scorer load: `trd --help` must not wait for them
NOT_FOR_HELP = (*NOT_FOR_THE_SCORER, "sklearn", "dask", "distributed", "xgboost", "pipeline.scoring")


def _loaded_after_import(module: str, watched: tuple[str, ...]) -> list[str]:
    """The ``watched`` packages (or pipeline subpackages) in sys.modules after importing ``module``."""
    code = (
        f"import sys, {module}\n"
        f"watched = {watched!r}\n"
        "print(' '.join(w for w in watched if any(m == w or m.startswith(w + '.') for m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_scorer_does_not_import_mlflow_shap_or_matplotlib() -> None:
    assert _loaded_after_import("pipeline.scoring.commands", NOT_FOR_THE_SCORER) == []


def test_trd_help_imports_no_stage_and_not_the_scorer() -> None:
    assert _loaded_after_import("pipeline.cli", NOT_FOR_HELP) == []


def test_the_check_sees_an_import() -> None:
    """Negative control: the helper reports a package the imported module does load."""
    assert _loaded_after_import("pipeline.tracking", NOT_FOR_THE_SCORER) == ["mlflow"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_resolves_to_a_function(command: str) -> None:
    assert callable(command_function(command))


def test_an_unknown_command_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        command_function("no-such-command")
