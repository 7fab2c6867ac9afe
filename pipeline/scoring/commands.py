"""The bodies of ``trd score``, ``trd validate`` and ``trd features``; pipeline/cli.py declares their options.

They live here, not in the CLI module, so that the CLI imports the scorer (pandas, scikit-learn, the model loader)
only when one of them runs: ``trd --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline.errors import ExitCode, PipelineError
from pipeline.paths import ProjectPaths
from pipeline.scoring import build_context, progress_wanted, score_file, validate_file
from pipeline.scoring.context import ScoringContext, configs_folder
from pipeline.scoring.detect import choose_layout, read_header
from pipeline.scoring.feature_matrix import export_features
from pipeline.scoring.layout import CANONICAL_FORMAT, required_columns
from pipeline.scoring.layout import input_format as layout_named
from pipeline.tasks import describe_scores

LOCAL_ENGINE = "local"


def _check_task(task: str, model: str | None) -> None:
    """An unknown --task is a usage error listing the tasks of params.yaml (when the model comes from models/TASK)."""
    if model is not None:
        return
    try:
        paths = ProjectPaths.discover()
        tasks = list((yaml.safe_load(paths.params_file.read_text(encoding="utf-8")) or {}).get("tasks") or {})
    except (PipelineError, OSError, ValueError):
        return  # outside the project: the model loader reports what is missing
    if tasks and task not in tasks:
        raise PipelineError(
            f"unknown task '{task}'", exit_code=ExitCode.USAGE,
            hint=f"use --task with one of: {', '.join(tasks)} (params.yaml tasks), or give --model",
        )  # fmt: skip


def _tabular_formats() -> list[str]:
    """Names of the tabular sources in configs/sources/ (the layouts --format accepts besides canonical)."""
    try:
        folder = ProjectPaths.discover().sources_dir
    except PipelineError:
        return []
    names = []
    for path in sorted(folder.glob("*.yaml")):
        if path.stem == "canonical":
            continue  # the scorer's default layout, listed first by the caller
        try:
            if (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("kind") == "tabular_export":
                names.append(path.stem)
        except (OSError, yaml.YAMLError):
            continue  # a broken source file is reported when it is used
    return names


def scoring_context(
    input_path: Path, *, model: str | None, task: str, input_format: str | None, **options: Any
) -> ScoringContext:
    """The scoring context, its layout checked against the file's header (only the header is read here).

    Without --format: the layout whose columns the header holds, canonical first. A --format whose columns are
    missing, or an unknown one, stops here with what is missing and the layouts that fit.
    """
    _check_task(task, model)
    try:
        paths: Any = ProjectPaths.discover()
    except PipelineError:
        paths = None  # outside the project: only the canonical layout exists
    names = [CANONICAL_FORMAT, *(_tabular_formats() if paths else [])]
    if input_format is not None and input_format not in names:
        raise PipelineError(
            f"unknown input format '{input_format}'", exit_code=ExitCode.USAGE,
            hint=f"use --format with one of: {', '.join(names)} (layouts in configs/sources/)",
        )  # fmt: skip
    common = {"model": model, "task": task, "source_file": input_path.name, **options}
    ctx = build_context(input_format_name=input_format or CANONICAL_FORMAT, **common)
    header = read_header(input_path)
    if header is None:  # a folder, a glob or an unreadable file: the reader reports
        return ctx
    needed = ctx.bundle.feature_spec.input_columns
    configs = configs_folder(paths)
    required = {name: required_columns(layout_named(name, configs, paths, ctx.contract), needed) for name in names}
    chosen = choose_layout(header, required, input_path, requested=input_format)
    if chosen == (input_format or CANONICAL_FORMAT):
        return ctx
    typer.echo(f"input layout: --format {chosen} (its columns match configs/sources/{chosen}.yaml)", err=True)
    return build_context(input_format_name=chosen, **common)


def score(
    input_path: Path,
    output: Path,
    *,
    task: str,
    model: str | None,
    explain: bool,
    top_k: int,
    chunk_size: int,
    input_format: str | None,
    engine: str,
    scheduler: str | None,
    workers: int | None,
) -> None:
    """``trd score``: score the file (local engine) or the dataset (Dask engine); exit 5 when rows were rejected."""
    if engine == LOCAL_ENGINE and (scheduler or workers):
        raise PipelineError("--scheduler and --workers need --engine dask", exit_code=ExitCode.USAGE)
    if scheduler and workers:
        raise PipelineError(
            "give --scheduler or --workers, not both", exit_code=ExitCode.USAGE,
            hint="--workers sizes a local cluster; a remote cluster has its own workers",
        )  # fmt: skip
    ctx = scoring_context(input_path, model=model, task=task, input_format=input_format, explain=explain, top_k=top_k)
    typer.echo(f"model manifest sha256 {ctx.bundle.manifest_sha256 or 'none (saved before manifests)'}", err=True)
    typer.echo(describe_scores(ctx.bundle.info.outcome, ctx.bundle.info.risk_bands), err=True)
    if engine != LOCAL_ENGINE:
        from pipeline.scoring.dask_engine import score_dataset  # noqa: PLC0415 (loads distributed; local never needs it)

        dask_summary = score_dataset(
            input_path, output, ctx, chunk_size=chunk_size, scheduler=scheduler, workers=workers,
            progress=progress_wanted(),
        )  # fmt: skip
        typer.echo(dask_summary.line(), err=True)
        for name, message in dask_summary.failed:
            typer.secho(f"partition not scored: {name}: {message}", fg=typer.colors.YELLOW, err=True)
        if dask_summary.rejected or dask_summary.failed:
            raise typer.Exit(int(ExitCode.ROWS_REJECTED))
        return
    summary = score_file(input_path, output, ctx, chunk_size=chunk_size, progress=progress_wanted())
    typer.echo(summary.line(), err=True)
    if summary.rejected:
        raise typer.Exit(int(ExitCode.ROWS_REJECTED))


def validate(input_path: Path, *, task: str, model: str | None, input_format: str | None, chunk_size: int) -> None:
    """``trd validate``: the scorer's checks without predicting, as a readable report; exit 5 when rows would fail."""
    ctx = scoring_context(input_path, model=model, task=task, input_format=input_format, explain=False, top_k=1)
    report = validate_file(input_path, ctx, chunk_size=chunk_size)
    typer.echo(f"{input_path}: {report.rows} rows, {report.valid} valid, {report.rejected} would be rejected")
    for reason, count in sorted(report.rejected_by_reason.items()):
        typer.echo(f"  {reason}: {count}")
    for example in report.examples:
        typer.echo(f"  {example}")
    missing = {k: v for k, v in report.missing_by_column.items() if v}
    if missing:
        typer.echo("missing values (scored as missing): " + ", ".join(f"{k} {v}" for k, v in missing.items()))
    if report.rejected:
        raise typer.Exit(int(ExitCode.ROWS_REJECTED))


def features(
    input_path: Path, output: Path, *, task: str, model: str | None, input_format: str | None, chunk_size: int
) -> None:
    """``trd features``: the feature matrix of the rows the scorer would score."""
    ctx = scoring_context(input_path, model=model, task=task, input_format=input_format, explain=False, top_k=1)
    typer.echo(export_features(input_path, output, ctx, chunk_size=chunk_size).line(output), err=True)
