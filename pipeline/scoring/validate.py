"""``trd validate``: the scorer's checks on a file (columns, types, codes, ranges, scoring rule, duplicates),
without predicting anything, summarised as counts per reason and the first few messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.quarantine import Reason
from pipeline.scoring.chunks import harmonised, insufficient_rows
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.inputs import check_input_path, expected_rows, iter_chunks
from pipeline.scoring.progress import progress_bar, progress_wanted


@dataclass
class ValidationReport:
    rows: int = 0
    valid: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the first few reject messages, with row numbers
    missing_by_column: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def count(self, reason: str, n: int) -> None:
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + n


def validate_file(
    input_path: Path, ctx: ScoringContext, *, chunk_size: int, max_examples: int = 10, progress: bool | None = None
) -> ValidationReport:
    """Run the scorer's checks without predicting anything. ``progress``: draw a bar; by default when stderr is a
    terminal (pipeline.scoring.progress.progress_wanted)."""
    input_path = Path(input_path)
    check_input_path(input_path)
    progress = progress_wanted() if progress is None else progress
    total, estimated = expected_rows(input_path) if progress else (None, False)
    report = ValidationReport()
    needed = ctx.bundle.feature_spec.input_columns
    with progress_bar(progress, total, action="checking", estimated=estimated) as advance:
        for frame in iter_chunks(input_path, chunk_size):
            result = harmonised(frame, report.rows + 1, ctx)
            # the scorer's order: too little data first (those ids stay free), then duplicates
            insufficient, too_little = insufficient_rows(result.cohort, result.source_rows, ctx.bundle)
            cohort = result.cohort.loc[~insufficient]
            repeated = ctx.seen.repeats(cohort["patient_id"])
            report.rows += len(frame)
            report.valid += int((~repeated).sum())
            rejects = pd.concat([result.quarantine, too_little], ignore_index=True)
            rejects = rejects.sort_values("source_row", kind="stable")
            for reason, count in rejects["reason_code"].value_counts().items():
                report.count(str(reason), int(count))
            if repeated.any():
                report.count(str(Reason.DUPLICATE), int(repeated.sum()))
            for _, row in rejects.head(max_examples - len(report.examples)).iterrows():
                report.examples.append(f"row {row['source_row']}: {row['reason_code']}: {row['message']}")
            for column in needed:
                missing = int(cohort[column].isna().sum())
                report.missing_by_column[column] = report.missing_by_column.get(column, 0) + missing
            advance(len(frame))
    if report.rows == 0:
        raise PipelineError("the file has a header but no rows", file=input_path)
    return report
