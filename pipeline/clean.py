"""Stage ``clean``: every configured source becomes one canonical cohort, with a quarantine and a report.

Pure core: :func:`clean_source` (one source: adapter, then the shared harmonisation) and
:func:`cleaning_report`. ``main`` reads params and files and writes
``data/interim/cohort.parquet``, ``data/interim/quarantine.parquet`` and ``reports/cleaning.json``.
Invariant, per source: rows in == rows kept + rows quarantined (for a long export the rows in are patients; its
visit rows are accounted for one by one in the adapter's ledger, checked too).
Losses are loud: a source that keeps no row, or a column its config fills that is missing in every kept row,
stops the stage (``clean.on_loss: warn`` logs them instead); both are listed in the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from pipeline.contract import CohortContract, cohort_source_names, load_contract
from pipeline.errors import ConfigError, PipelineError
from pipeline.harmonise import HarmoniseRules, harmonise, rules_from_tabular_spec
from pipeline.io import write_json, write_parquet
from pipeline.params import Frozen, load_section
from pipeline.paths import ProjectPaths
from pipeline.quarantine import quarantine_frame
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources import Staged
from pipeline.sources.bids import stage_source_folder
from pipeline.sources.bids_spec import load_bids_spec
from pipeline.sources.check import bids_problems, load_tabular_spec
from pipeline.sources.spec import TabularSourceSpec, load_yaml_spec
from pipeline.sources.tabular import LongStaged, read_table, stage_long, stage_tabular

log = logging.getLogger(__name__)

PARAMS_USED = ("clean",)


class CleanParams(Frozen):
    sources: list[str] = Field(min_length=1, description="Sources to clean, each a file in configs/sources/.")
    on_loss: Literal["fail", "warn"] = Field(
        default="fail",
        description="A source that keeps no row, or a mapped column missing in every kept row: stop, or warn.",
    )


@dataclass
class CleanedSource:
    name: str
    rows_in: int
    cohort: pd.DataFrame
    quarantine: pd.DataFrame
    conversions: dict[str, int]
    extra: dict[str, Any]  # adapter bookkeeping (e.g. phenotype rows read/used)
    measurements_quarantine: pd.DataFrame | None = None  # set-aside rows of secondary (long) tables
    not_on_madrs: dict[str, dict[str, int]] = field(default_factory=dict)  # scale -> column -> values
    unused_columns: dict[str, list[str]] = field(default_factory=dict)  # file -> raw columns mapped to nothing
    accounts: list[tuple[str, int, int]] = field(default_factory=list)  # (file, rows in, rows with a disposition)

    def check_conservation(self) -> None:
        if self.rows_in != len(self.cohort) + len(self.quarantine):
            raise PipelineError(
                f"source '{self.name}': {self.rows_in} rows in but {len(self.cohort)} kept + "
                f"{len(self.quarantine)} quarantined",
                hint="a row was lost: this is a bug, please report it",
            )
        for file, rows_in, accounted in self.accounts:
            if rows_in != accounted:
                raise PipelineError(
                    f"source '{self.name}': {file} has {rows_in} rows but {accounted} are accounted for",
                    hint="a row was lost: this is a bug, please report it",
                )


@dataclass(frozen=True)
class StagedSource:
    """An adapter's output, with what the clean stage needs to judge the source."""

    staged: Staged
    rules: HarmoniseRules
    extra: dict[str, Any]
    targets: dict[str, str]  # canonical column the config fills -> the key that fills it


def load_source_config(name: str, paths: ProjectPaths, contract: CohortContract, scales: ScaleConversions) -> Any:
    """The source's config, checked completely against the contract and the scale registry (no data read)."""
    spec_path = paths.sources_dir / f"{name}.yaml"
    if not spec_path.is_file():
        known = cohort_source_names(paths.sources_dir)
        raise ConfigError(
            f"unknown source '{name}'", file=paths.params_file, hint=f"clean.sources may list: {', '.join(known)}"
        )
    kind = load_yaml_spec(spec_path).get("kind")
    if kind == "tabular_export":
        spec = load_tabular_spec(spec_path, contract=contract, scales=scales)
        if "export" not in spec.files:
            raise ConfigError(
                "files.export: missing: the path of the export (CSV or Parquet) the clean stage reads",
                file=spec_path,
                hint="add files: {export: data/raw/<name>/export.csv} (see README 'Adding a cohort')",
            )
        return spec
    if kind == "bids_phenotype":
        bids = load_bids_spec(spec_path)
        problems = bids_problems(bids, contract)
        if problems:
            raise ConfigError("; ".join(problems), file=spec_path)
        return bids
    raise ConfigError(
        f"kind: unknown source kind '{kind}'", file=spec_path, hint="use tabular_export or bids_phenotype"
    )


def stage_source(name: str, paths: ProjectPaths, contract: CohortContract, scales: ScaleConversions) -> StagedSource:
    """Check the source's config completely, then run the adapter its ``kind`` names."""
    spec = load_source_config(name, paths, contract, scales)
    if isinstance(spec, TabularSourceSpec):
        export = spec.files["export"]
        frame = read_table(paths.root / export)
        targets = {canonical: key for key, canonical in reversed(spec.targets())}
        rules = rules_from_tabular_spec(spec)
        if spec.is_long:
            staged = stage_long(frame, spec, export)
            return StagedSource(staged, rules, {"visits": visits_report(staged)}, targets)
        return StagedSource(stage_tabular(frame, spec, source_file=export), rules, {}, targets)

    staged, rules, extra = stage_source_folder(paths.sources_dir / f"{name}.yaml", paths)
    return StagedSource(staged, rules, extra, bids_targets(spec))


def bids_targets(spec: Any) -> dict[str, str]:
    adapter = spec.adapter
    targets = {c: f"adapter.participants.numeric.{raw}" for raw, c in adapter.participants.numeric.items()}
    targets |= {c: f"adapter.participants.text.{raw}" for raw, c in adapter.participants.text.items()}
    for table in adapter.phenotype:
        for raw, sessions in table.measures.items():
            targets |= {c: f"adapter.phenotype.{table.path}.measures.{raw}.{s}" for s, c in sessions.items()}
    return targets


def visits_report(staged: LongStaged) -> dict[str, Any]:
    """Counts for reports/cleaning.json: where every row of a long export went (no identifiers)."""
    account = staged.visits
    return {
        "file": account.file,
        "rows_in": account.rows_in,
        "dispositions": dict(account.dispositions),
        "unmapped_visits": dict(account.unmapped_visits),
    }


def clean_source(
    name: str, staged: Staged, rules: HarmoniseRules, contract: CohortContract, scales: ScaleConversions
) -> CleanedSource:
    result = harmonise(staged.rows, rules, contract, scales)
    quarantine = pd.concat([quarantine_frame(staged.excluded), result.quarantine], ignore_index=True)
    # secondary tables (BIDS phenotype rows, a long export's visit rows) are accounted for per row in the
    # adapter's ledger
    accounts = [*getattr(staged, "phenotype", ()), *([staged.visits] if isinstance(staged, LongStaged) else [])]
    secondary = [account.quarantine for account in accounts]
    return CleanedSource(
        name=name,
        rows_in=staged.rows_in,
        cohort=result.cohort,
        quarantine=quarantine_frame(quarantine),
        conversions=result.conversions,
        extra={},
        measurements_quarantine=quarantine_frame(pd.concat(secondary, ignore_index=True)) if secondary else None,
        not_on_madrs=result.not_on_madrs,
        unused_columns={file: list(columns) for file, columns in staged.unused_columns.items()},
        accounts=[(a.file, a.rows_in, sum(a.dispositions.values())) for a in accounts],
    )


def losses(item: CleanedSource, targets: dict[str, str]) -> list[str]:
    """What a source silently lost: every row, or a column its config fills, missing in every kept row (unless
    counted as a score on a scale without a conversion to MADRS)."""
    if item.cohort.empty:
        reasons = item.quarantine["reason_code"].value_counts().sort_index().to_dict()
        shown = ", ".join(f"{reason} {count}" for reason, count in reasons.items()) or "no data rows"
        return [f"source '{item.name}' keeps no rows: {item.rows_in} in, all quarantined ({shown})"]
    explained = {column for columns in item.not_on_madrs.values() for column in columns}
    return [
        f"source '{item.name}': column '{column}' (filled by {key}) is missing in every kept row"
        for column, key in targets.items()
        if column in item.cohort and item.cohort[column].isna().all() and column not in explained
    ]


def cleaning_report(cleaned: list[CleanedSource], contract: CohortContract) -> dict[str, Any]:
    """Counts per source: rows in/kept/quarantined, reasons, conversions, missing values, outcome counts."""
    outcomes = [c.name for c in contract.with_role("outcome") if c.dtype == "bool"]
    per_source: dict[str, Any] = {}
    for item in cleaned:
        cohort = item.cohort
        per_source[item.name] = {
            "rows_in": item.rows_in,
            "rows_kept": len(cohort),
            "rows_quarantined": len(item.quarantine),
            "quarantined_by_reason": {
                str(k): int(v) for k, v in item.quarantine["reason_code"].value_counts().sort_index().items()
            },
            "values_converted": dict(sorted(item.conversions.items())),
            "missing_by_column": {c: int(cohort[c].isna().sum()) for c in contract.names if cohort[c].isna().any()},
            "outcomes": {
                o: {"known": int(cohort[o].notna().sum()), "positive": int(cohort[o].sum(skipna=True))}
                for o in outcomes
                if cohort[o].notna().any()
            },
            **({"not_on_madrs": item.not_on_madrs} if item.not_on_madrs else {}),
            "raw_columns_unused": item.unused_columns,
            **({"adapter": item.extra} if item.extra else {}),
        }
    return {
        "sources": per_source,
        "total": {
            "rows_in": sum(c.rows_in for c in cleaned),
            "rows_kept": sum(len(c.cohort) for c in cleaned),
            "rows_quarantined": sum(len(c.quarantine) for c in cleaned),
        },
    }


def main() -> None:
    paths = ProjectPaths.discover()
    params = load_section(CleanParams, "clean", paths.params_file)
    contract = load_contract(paths.cohort_schema)
    scales = load_scale_conversions(paths.scale_conversions)
    for name in params.sources:  # every config is checked before any data is read
        load_source_config(name, paths, contract, scales)
    cleaned, lost = [], {}
    for name in params.sources:
        source = stage_source(name, paths, contract, scales)
        item = clean_source(name, source.staged, source.rules, contract, scales)
        item.extra = source.extra
        item.check_conservation()
        log.info("%s: %d rows in, %d kept, %d quarantined", name, item.rows_in, len(item.cohort), len(item.quarantine))
        cleaned.append(item)
        if found := losses(item, source.targets):
            lost[name] = found
    problems = [message for found in lost.values() for message in found]
    if problems and params.on_loss == "fail":
        raise PipelineError(
            "; ".join(problems),
            file=paths.sources_dir,
            hint="check the export and its config (nothing was written), or set clean.on_loss: warn in params.yaml "
            "to keep going with the losses listed in reports/cleaning.json",
        )
    for message in problems:
        log.warning("%s", message)
    cohort = pd.concat([c.cohort for c in cleaned], ignore_index=True)
    cohort = contract.coerce(cohort.sort_values(["cohort", "patient_id"], kind="stable").reset_index(drop=True))
    quarantine = quarantine_frame(pd.concat([c.quarantine for c in cleaned], ignore_index=True))
    measurements = quarantine_frame(
        pd.concat(
            [c.measurements_quarantine for c in cleaned if c.measurements_quarantine is not None]
            or [quarantine_frame()],
            ignore_index=True,
        )
    )
    report = cleaning_report(cleaned, contract)
    for name, found in lost.items():
        report["sources"][name]["losses"] = found
    # write only after everything succeeded, each file atomically
    write_parquet(cohort, paths.interim_dir / "cohort.parquet")
    write_parquet(quarantine, paths.interim_dir / "quarantine.parquet")
    write_parquet(measurements, paths.interim_dir / "quarantine_measurements.parquet")
    write_json(report, paths.reports_dir / "cleaning.json")
