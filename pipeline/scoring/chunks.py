"""Scoring one chunk of rows: the single code path of both engines, and the same code as training.

A chunk goes through the source adapter's renaming (pipeline/sources/tabular.py), the shared harmonisation
(codes, units, scales, ranges: pipeline/harmonise.py), the model's scoring rule, the duplicate check, the shared
feature builder (pipeline/features.py) and the hash-checked, pickle-free model bundle (pipeline/modelling/bundle.py);
explanations come from pipeline/modelling/contributions.py. Every row comes out either scored or rejected with its row
number, reason code and message, and ``rows in == scored + rejected`` is checked for every chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.errors import ExitCode, PipelineError
from pipeline.features import build_features, insufficient_data, outside_training_range
from pipeline.harmonise import HarmoniseResult, harmonise
from pipeline.modelling.bundle import Bundle, risk_band
from pipeline.modelling.contributions import Explained, explain, top_drivers
from pipeline.quarantine import Reason
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.inputs import iter_chunks
from pipeline.scoring.layout import required_columns
from pipeline.sources.tabular import stage_tabular
from pipeline.tasks import DEFAULT_OUTCOME, Eligibility, ineligible_rows

REJECT_COLUMNS = ("source_row", "patient_id", "reason_code", "column", "value", "message")


def insufficient_rows(cohort: pd.DataFrame, kept_rows: np.ndarray, bundle: Bundle) -> tuple[np.ndarray, pd.DataFrame]:
    """Rows below the model's scoring rule: their mask and their rejects (names of missing predictors, no values)."""
    found = insufficient_data(cohort, bundle.feature_spec.input_columns, bundle.scoring_rule)
    rejects = pd.DataFrame(
        {
            "source_row": kept_rows[found.mask],
            "patient_id": cohort.loc[found.mask, "patient_id"].to_numpy(),
            "reason_code": str(Reason.INSUFFICIENT_DATA),
            "column": found.columns,
            "value": None,
            "message": found.messages,
        }
    )
    return found.mask, rejects


def harmonised(frame: pd.DataFrame, first_row: int, ctx: ScoringContext) -> HarmoniseResult:
    """A chunk in the contract's columns, units and levels, with its rows that fail the contract quarantined."""
    required = required_columns(ctx.spec, ctx.bundle.feature_spec.input_columns)
    staged = stage_tabular(frame, ctx.spec, ctx.source_file, required=required, first_row=first_row)
    return harmonise(staged.rows, ctx.rules, ctx.contract, ctx.scales)


def ineligible_rejects(
    cohort: pd.DataFrame, kept_rows: np.ndarray, outside: Eligibility, bundle: Bundle
) -> pd.DataFrame:
    """Rejects for rows outside the model's population (the rule's column named, never its value)."""
    population = bundle.info.population
    return pd.DataFrame(
        {
            "source_row": kept_rows[outside.mask],
            "patient_id": cohort.loc[outside.mask, "patient_id"].to_numpy(),
            "reason_code": str(Reason.INELIGIBLE),
            "column": population.column if population else None,
            "value": None,
            "message": outside.messages,
        }
    )


def score_frame(frame: pd.DataFrame, first_row: int, ctx: ScoringContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one chunk: (scored rows, rejected rows). Row numbers are 1-based data rows of the input."""
    needed = ctx.bundle.feature_spec.input_columns
    result = harmonised(frame, first_row, ctx)
    rejects = result.quarantine
    cohort = result.cohort[list(dict.fromkeys(["patient_id", *needed]))]  # the columns used below
    kept_rows = result.source_rows

    # too little data for a score: rejected before the duplicate check, so that the id stays free for a later,
    # complete row of the same patient ("an earlier row, which was scored")
    # outside the task's population (tasks.<task>.population, stored in the model): not scored, with the reason
    outside = ineligible_rows(cohort, ctx.bundle.info.population)
    if outside.mask.any():
        rejects = pd.concat([rejects, ineligible_rejects(cohort, kept_rows, outside, ctx.bundle)], ignore_index=True)
        cohort, kept_rows = cohort.loc[~outside.mask].reset_index(drop=True), kept_rows[~outside.mask]

    insufficient, too_little = insufficient_rows(cohort, kept_rows, ctx.bundle)
    if insufficient.any():
        rejects = pd.concat([rejects, too_little], ignore_index=True)
        cohort, kept_rows = cohort.loc[~insufficient].reset_index(drop=True), kept_rows[~insufficient]

    # duplicated ids: the first occurrence in the file is scored, later ones are rejected
    repeated = ctx.seen.repeats(cohort["patient_id"])
    if repeated.any():
        duplicates = pd.DataFrame(
            {
                "source_row": kept_rows[repeated],
                "patient_id": cohort.loc[repeated, "patient_id"].to_numpy(),
                "reason_code": str(Reason.DUPLICATE),
                "column": "patient_id",
                "value": cohort.loc[repeated, "patient_id"].to_numpy(),
                "message": "this patient id appeared on an earlier row, which was scored",
            }
        )
        rejects = pd.concat([rejects, duplicates], ignore_index=True)
        cohort, kept_rows = cohort.loc[~repeated].reset_index(drop=True), kept_rows[~repeated]

    features = build_features(cohort, ctx.bundle.feature_spec)
    # a chunk whose rows were all rejected has nothing to predict (scikit-learn refuses an empty matrix)
    probability = ctx.bundle.predict(features) if len(features) else np.empty(0, dtype="float64")
    info = ctx.bundle.info
    scored = pd.DataFrame(
        {
            "patient_id": cohort["patient_id"].astype("string"),
            "source_row": np.asarray(kept_rows, dtype="int64"),
            "p_response": probability,
            "risk_band": risk_band(probability, info.risk_bands),
            # applicability: how much of the row was imputed, and which values the model never saw in training
            "n_missing_predictors": cohort[needed].isna().sum(axis=1).to_numpy(dtype="int64"),
            "outside_training_range": outside_training_range(features, info.training_ranges).array,
            "task": info.task,
            "model_name": info.registered_model_name,
            "model_version": ctx.model_version,
            "model_sha256": info.estimator_sha256,
            # what p_response and risk_band are of, in the task's words ("risk of a blood-pressure event")
            "outcome": (info.outcome or DEFAULT_OUTCOME).wording,
        }
    )
    if ctx.explain:
        if len(features):
            explained = explain(ctx.bundle.estimator, features, ctx.bundle.feature_spec)
        else:
            columns = pd.DataFrame(columns=ctx.bundle.feature_spec.input_columns, dtype="float64")
            explained = Explained(values=columns, base_value=np.empty(0), margin=np.empty(0), method="")
        drivers = top_drivers(explained, cohort, ctx.bundle.feature_spec, ctx.top_k)
        scored = pd.concat([scored, drivers.reset_index(drop=True)], axis=1)
    rejects = rejects.reindex(columns=list(REJECT_COLUMNS)).astype(
        {"source_row": "int64", **{c: "string" for c in REJECT_COLUMNS if c != "source_row"}}
    )
    if len(scored) + len(rejects) != len(frame):
        raise PipelineError(
            f"rows {first_row}–{first_row + len(frame) - 1}: {len(frame)} in but {len(scored)} scored + "
            f"{len(rejects)} rejected",
            hint="a row was lost: this is a bug, please report it",
            exit_code=ExitCode.INTERNAL,
        )
    return scored, rejects.sort_values("source_row", kind="stable").reset_index(drop=True)


def score_chunks(path: Path, ctx: ScoringContext, chunk_size: int) -> Iterator[tuple[int, pd.DataFrame, pd.DataFrame]]:
    """Read ``path`` chunk by chunk and score each: (rows read, scored rows, rejected rows), rows numbered across
    chunks; the caller has checked the path (check_input_path). Leading empty chunks (a Parquet file's empty row
    groups) are skipped: the first chunk scored types the outputs. One chunk is in memory at a time: the caller
    drops its references before asking for the next."""
    rows = 0
    for frame in iter_chunks(path, chunk_size):
        if rows == 0 and frame.empty:
            continue
        scored, rejects = score_frame(frame, rows + 1, ctx)
        n = len(frame)
        rows += n
        del frame  # free this chunk before the next is read
        yield n, scored, rejects
        del scored, rejects
        pa.default_memory_pool().release_unused()  # and hand Arrow's freed pages back to the system
