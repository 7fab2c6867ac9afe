"""The ``trd`` command: one subcommand per DVC stage, plus the batch scorer.

Each command is a thin shell over a stage's ``main`` (or the scorer's command in pipeline/scoring/commands.py),
named in :data:`COMMANDS` and imported only when it runs. User-fixable problems print one message and exit with a
documented code.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.contract import load_contract
from pipeline.errors import ExitCode, PipelineError
from pipeline.missing import MISSING_MARKERS

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


# Each command's code as "module:function", imported when the command runs: the stages and the scorer load pandas,
# scikit-learn, MLflow or Dask (seconds), which `trd --help` and `trd score --help` should not wait for.
COMMANDS = {
    "synthesize": "pipeline.synthesize:main",
    "fetch": "pipeline.fetch:main",
    "clean": "pipeline.clean:main",
    "split": "pipeline.split:main",
    "train": "pipeline.train:main",
    "evaluate": "pipeline.evaluate.main:main",
    "explain": "pipeline.explain.main:main",
    "report": "pipeline.report:main",
    "score": "pipeline.scoring.commands:score",
    "validate": "pipeline.scoring.commands:validate",
    "features": "pipeline.scoring.commands:features",
}


def command_function(command: str) -> Callable[..., Any]:
    """The function that runs ``command`` (a key of :data:`COMMANDS`), its module imported now."""
    module, _, name = COMMANDS[command].partition(":")
    return getattr(importlib.import_module(module), name)


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


def run_command(command: str, *args: Any, **kwargs: Any) -> Any:
    """Import ``command``'s function and run it guarded (a PipelineError -> its message and exit code)."""
    return run_guarded(lambda: command_function(command)(*args, **kwargs))


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


@app.command()
def synthesize(verbose: Verbose = False) -> None:
    """Generate the synthetic cohort: a messy clinic export plus its ground truth (params: base, synthesize)."""
    _configure_logging(verbose)
    run_command("synthesize")


@app.command()
def fetch(
    source: Annotated[str, typer.Argument(help="Source name, a file in configs/sources/ (e.g. ds005917).")],
    verbose: Verbose = False,
) -> None:
    """Fetch a public cohort from its mirror or canonical location and verify every checksum.

    Set TRD_DATA_MIRROR to a folder holding <source>/... to fetch without network.
    """
    _configure_logging(verbose)
    run_command("fetch", source)


@app.command()
def clean(verbose: Verbose = False) -> None:
    """Harmonise every source onto the canonical cohort; quarantine bad rows with reasons (params: clean)."""
    _configure_logging(verbose)
    run_command("clean")


Task = Annotated[str, typer.Argument(help="Task name from params.yaml 'tasks' (e.g. acute, course).")]


@app.command()
def split(task: Task, verbose: Verbose = False) -> None:
    """Patient-level, stratified, seeded train/test split of the training cohort for TASK (params: split)."""
    _configure_logging(verbose)
    run_command("split", task)


@app.command()
def train(task: Task, verbose: Verbose = False) -> None:
    """Tune, calibrate and select TASK's model by CV; log to MLflow; register; save models/TASK (params: train)."""
    _configure_logging(verbose)
    run_command("train", task)


@app.command()
def evaluate(task: Task, verbose: Verbose = False) -> None:
    """Validate TASK's models on the test split, against the oracle and on ds005917 (params: evaluate)."""
    _configure_logging(verbose)
    run_command("evaluate", task)


@app.command()
def explain(task: Task, verbose: Verbose = False) -> None:
    """SHAP explanations of TASK's champion, checked for additivity and against the planted truth (params: explain)."""
    _configure_logging(verbose)
    run_command("explain", task)


@app.command()
def report(task: Task, verbose: Verbose = False) -> None:
    """Write TASK's model card (reports/TASK/model_card.md and .html) from the pipeline's outputs (params: report)."""
    _configure_logging(verbose)
    run_command("report", task)


def _input_contract_help() -> str:
    """The default (canonical) input contract, read from configs/cohort_schema.yaml, for `trd score --help`."""
    try:
        contract = load_contract(Path(__file__).resolve().parents[1] / "configs" / "cohort_schema.yaml")
    except PipelineError:
        return "Input contract: see configs/cohort_schema.yaml."
    markers = ", ".join(repr(m) for m in MISSING_MARKERS if m)
    lines = [
        "Input contract (--format canonical): one row per patient, a patient_id column, and the model's",
        "predictor columns below. Missing values: empty or blank cells and, in any case and with surrounding"
        f" spaces, {markers} (a source's configs/sources/NAME.yaml may add its own under missing_values);"
        " numbers are plain decimals (inf, 1e309 and text are wrong_type); yes/no flags accept 1/0, 1.0/0.0,"
        " yes/no, y/n, true/false:",
    ]
    for column in contract.with_role("baseline_predictor", "early_predictor"):
        detail = column.unit or ""
        if column.levels:
            detail = "one of " + ", ".join(column.levels)
        elif column.min is not None:
            detail = f"{detail}, {column.min:g}–{column.max:g}".lstrip(", ")
        elif column.dtype == "bool":
            detail = "yes/no"
        lines.append(f"  {column.name}: {detail}")
    return "\n\n".join(["\n".join(lines[:2]), "\n".join(lines[2:])])


FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="Input layout: 'canonical' (configs/cohort_schema.yaml names) or a tabular source in configs/sources/ "
        "(e.g. synthetic). Default: the layout whose columns the file has, canonical first.",
    ),
]


class Engine(StrEnum):
    LOCAL = "local"
    DASK = "dask"


@app.command(epilog=_input_contract_help())
def score(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="CSV or Parquet file of patients to score; with --engine dask also a folder or a quoted glob of them.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Output file (.csv or .parquet, by extension); with --engine dask, a folder."
        ),
    ],
    task: Annotated[str, typer.Option(help="Prediction task (a model in models/TASK).")] = "acute",
    model: Annotated[
        str | None,
        typer.Option(help="Model folder or registry URI, e.g. models:/trd-acute@champion. Default: models/TASK."),
    ] = None,
    explain: Annotated[bool, typer.Option("--explain/--no-explain", help="Add the top drivers of each score.")] = False,
    top_k: Annotated[int, typer.Option(min=1, max=20, help="How many drivers with --explain.")] = 3,
    chunk_size: Annotated[int, typer.Option(min=1, help="Rows read and scored at a time (bounds memory).")] = 50_000,
    input_format: FormatOption = None,
    engine: Annotated[
        Engine, typer.Option(help="local: this process, one file. dask: one task per partition on a Dask cluster.")
    ] = Engine.LOCAL,
    scheduler: Annotated[
        str | None,
        typer.Option(help="With --engine dask: a running scheduler (tcp://host:8786). Default: a local cluster."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="With --engine dask and no --scheduler: local worker processes (default: CPUs)."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Score a clinic export: probability of the task's outcome, risk band and model identity for every valid row.

    The probability column is p_response for every task; the outcome column words what it is of (e.g. "risk of
    a blood-pressure event" for safety_first_session). A row outside the task's population (e.g. baseline GAD-7
    below 10 for anxiety) is rejected as ineligible, not scored.

    Invalid rows go to OUTPUT's rejects file (e.g. scores.rejects.csv) with row number, patient id, reason
    code and message; rows in == scored + rejected. Outputs appear only when the whole file is scored, both
    or neither; temporary files (.NAME.trd-PID-RANDOM.tmp beside OUTPUT) left by a killed run are removed by
    the next. A second run into the same OUTPUT stops at once (lock .NAME.lock beside it; exit 7).
    In CSV outputs a text cell starting with =, +, -, @, tab or CR that is not a number gets a leading ' (so a
    spreadsheet does not run it as a formula); Parquet keeps values as they are.
    A row with too little data for a score is rejected as insufficient_data: the model stores its task's rule
    (required predictors, largest share of predictors missing; params.yaml tasks.TASK.scoring).
    Every scored row has n_missing_predictors (how many of the model's predictors were missing, hence imputed)
    and outside_training_range (the numeric predictors whose value lies outside the training data's range,
    comma-separated; empty when none; missing when the model stores no ranges).
    The model folder is checked against its manifest (SHA-256 of every file the scorer reads); the
    manifest's own SHA-256 is printed at start and recorded with the MLflow training run.
    With --engine dask, OUTPUT is a folder: scored/ and rejects/ Parquet partitions (one per input partition),
    failed_partitions.csv (unreadable partitions, exit 5) and _manifest.json.
    Exit codes: 0 all rows scored; 5 some rows rejected; 2 usage (e.g. OUTPUT is the input); 3 unreadable or
    invalid input; 4 model problem; 7 output not writable (a folder, device, read-only folder, full disk, or in
    use by another run).
    """
    _configure_logging(verbose)
    run_command(
        "score", input_path, output, task=task, model=model, explain=explain, top_k=top_k, chunk_size=chunk_size,
        input_format=input_format, engine=engine.value, scheduler=scheduler, workers=workers,
    )  # fmt: skip


@app.command()
def validate(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="CSV or Parquet file to check.")],
    task: Annotated[str, typer.Option(help="Prediction task whose model defines the needed columns.")] = "acute",
    model: Annotated[str | None, typer.Option(help="Model folder or registry URI (default: models/TASK).")] = None,
    input_format: FormatOption = None,
    chunk_size: Annotated[int, typer.Option(min=100)] = 50_000,
    verbose: Verbose = False,
) -> None:
    """Check a file against the scorer's input contract without scoring it, and print a readable report.

    Exit codes: 0 every row valid; 5 some rows would be rejected; 2 usage; 3 unreadable input; 4 model problem.
    """
    _configure_logging(verbose)
    run_command("validate", input_path, task=task, model=model, input_format=input_format, chunk_size=chunk_size)


@app.command()
def features(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="CSV or Parquet file of patients.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Feature matrix, .csv or .parquet.")],
    task: Annotated[str, typer.Option(help="Prediction task whose model defines the features.")] = "acute",
    model: Annotated[str | None, typer.Option(help="Model folder or registry URI (default: models/TASK).")] = None,
    input_format: FormatOption = None,
    chunk_size: Annotated[int, typer.Option(min=100)] = 50_000,
    verbose: Verbose = False,
) -> None:
    """Build the float64 feature matrix the MLflow pyfunc takes, through the scorer's own steps.

    Then, e.g.: mlflow models predict -m models:/trd-acute@champion -i features.csv -t csv --env-manager local.
    Rows are those `trd score` would score, in input order (rows it would reject are left out and counted);
    columns are the model's features in its signature's order; no patient identifier is written.
    Exit codes: 0 written; 2 usage; 3 unreadable input; 4 model problem; 7 output not writable.
    """
    _configure_logging(verbose)
    run_command(
        "features", input_path, output, task=task, model=model, input_format=input_format, chunk_size=chunk_size
    )


if __name__ == "__main__":  # pragma: no cover
    app()
