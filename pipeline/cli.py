"""The ``trd`` command: one subcommand per DVC stage, plus the batch scorer.

Each command is a thin shell over a stage's ``main``; heavy imports happen inside the command so that
``trd --help`` stays fast. User-fixable problems print one message and exit with a documented code.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from pipeline.errors import ExitCode, PipelineError

EXIT_CODES_HELP = "; ".join(f"{code.value} {code.name.lower().replace('_', ' ')}" for code in ExitCode)

app = typer.Typer(
    name="trd",
    help=(
        "Ketamine/esketamine response prediction for treatment-resistant depression.\n\n"
        "Stages (run them through `dvc repro`, which calls these commands): synthesize, fetch, clean, "
        "train, evaluate, explain, report.\n\n"
        f"Exit codes: {EXIT_CODES_HELP}."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# MLflow draws a progress bar for every local artifact copy; it is noise in stage logs and CI
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # third-party chatter that says nothing actionable at INFO
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "shap", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``; turn a PipelineError into one readable message and its exit code."""
    try:
        return action()
    except PipelineError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        typer.secho("interrupted: no partial output was written", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


@app.command()
def synthesize(verbose: Verbose = False) -> None:
    """Generate the synthetic cohort: a messy clinic export plus its ground truth (params: base, synthesize)."""
    _configure_logging(verbose)
    from pipeline.synthesize import main  # noqa: PLC0415

    run_guarded(main)


@app.command()
def fetch(
    source: Annotated[str, typer.Argument(help="Source name, a file in configs/sources/ (e.g. ds005917).")],
    verbose: Verbose = False,
) -> None:
    """Fetch a public cohort from its mirror or canonical location and verify every checksum.

    Set TRD_DATA_MIRROR to a folder holding <source>/... to fetch without network.
    """
    _configure_logging(verbose)
    from pipeline.fetch import main  # noqa: PLC0415

    run_guarded(lambda: main(source))


@app.command()
def clean(verbose: Verbose = False) -> None:
    """Harmonise every source onto the canonical cohort; quarantine bad rows with reasons (params: clean)."""
    _configure_logging(verbose)
    from pipeline.clean import main  # noqa: PLC0415

    run_guarded(main)


Task = Annotated[str, typer.Argument(help="Task name from params.yaml 'tasks' (e.g. acute, course).")]


@app.command()
def split(task: Task, verbose: Verbose = False) -> None:
    """Patient-level, stratified, seeded train/test split of the training cohort for TASK (params: split)."""
    _configure_logging(verbose)
    from pipeline.split import main  # noqa: PLC0415

    run_guarded(lambda: main(task))


@app.command()
def train(task: Task, verbose: Verbose = False) -> None:
    """Tune, calibrate and select TASK's model by CV; log to MLflow; register; save models/TASK (params: train)."""
    _configure_logging(verbose)
    from pipeline.train import main  # noqa: PLC0415

    run_guarded(lambda: main(task))


if __name__ == "__main__":  # pragma: no cover
    app()
