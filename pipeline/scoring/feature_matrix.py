"""``trd features``: the float64 feature matrix that ``mlflow models predict`` (the registered pyfunc) takes.

It goes through the scorer's own steps: the input layout's staging, harmonisation onto the canonical cohort,
the model's scoring rule, and :func:`pipeline.features.build_features` (which training and scoring share). So
its rows are the rows ``trd score`` would score, in input order, and its columns are the model's feature names
in the signature's order. Rows the scorer would reject are left out and counted (``trd validate`` says why).
No patient identifier is written: the pyfunc takes features only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipeline.errors import ExitCode, PipelineError
from pipeline.features import build_features, insufficient_data
from pipeline.harmonise import harmonise
from pipeline.io import atomic_path
from pipeline.scoring.inputs import iter_chunks
from pipeline.scoring.layout import required_columns
from pipeline.sources.tabular import stage_tabular
from pipeline.tasks import ineligible_rows

if TYPE_CHECKING:
    from pipeline.scoring.context import ScoringContext

SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class FeatureExport:
    rows_in: int
    written: int

    @property
    def left_out(self) -> int:
        return self.rows_in - self.written

    def line(self, output: Path) -> str:
        text = f"{self.rows_in} rows: {self.written} feature rows -> {output}"
        if self.left_out:
            text += f"; {self.left_out} rows the scorer would reject left out (run `trd validate` to see why)"
        return text


def feature_rows(frame: pd.DataFrame, first_row: int, ctx: ScoringContext, seen: set[str]) -> pd.DataFrame:
    """One input chunk -> the feature rows of the rows the scorer would score (``seen``: ids already kept)."""
    spec = ctx.bundle.feature_spec
    staged = stage_tabular(
        frame, ctx.spec, ctx.source_file, required=required_columns(ctx.spec, spec.input_columns), first_row=first_row
    )
    cohort = harmonise(staged.rows, ctx.rules, ctx.contract, ctx.scales).cohort
    cohort = cohort.loc[~ineligible_rows(cohort, ctx.bundle.info.population).mask]  # outside the task's population
    cohort = cohort.loc[~insufficient_data(cohort, spec.input_columns, ctx.bundle.scoring_rule).mask]
    # as the scorer: the first row of a patient id counts, later ones are duplicates
    ids = cohort["patient_id"].astype("string")
    first = ~ids.duplicated().to_numpy() & ~ids.isin(seen).to_numpy()
    cohort = cohort.loc[first]
    seen.update(ids[first])
    return build_features(cohort.reset_index(drop=True), spec)


def export_features(input_path: Path, output: Path, ctx: ScoringContext, *, chunk_size: int) -> FeatureExport:
    """Write the feature matrix of ``input_path`` to ``output`` (.csv or .parquet), whole or not at all."""
    output = Path(output)
    if output.suffix.lower() not in SUFFIXES:
        raise PipelineError(
            "the output must end in .csv or .parquet", file=output, exit_code=ExitCode.USAGE,
            hint="e.g. -o features.csv (what `mlflow models predict -t csv` reads)",
        )  # fmt: skip
    if output.resolve() == Path(input_path).resolve():
        raise PipelineError("the output is the input file", file=output, exit_code=ExitCode.USAGE)
    parts, rows_in, seen = [], 0, set()
    for frame in iter_chunks(Path(input_path), chunk_size):
        parts.append(feature_rows(frame, rows_in + 1, ctx, seen))
        rows_in += len(frame)
    columns = ctx.bundle.feature_spec.feature_names
    features = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns, dtype="float64")
    features = features.astype("float64")
    try:
        with atomic_path(output) as tmp:
            if output.suffix.lower() == ".parquet":
                features.to_parquet(tmp, index=False)
            else:
                # shortest round-trip repr of each float64: the CSV reads back bit for bit
                features.to_csv(tmp, index=False, lineterminator="\n")
    except OSError as exc:
        raise PipelineError(f"cannot write the features: {exc}", file=output, exit_code=ExitCode.OUTPUT) from exc
    return FeatureExport(rows_in=rows_in, written=len(features))
