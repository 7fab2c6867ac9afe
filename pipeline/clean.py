"""Stage ``clean``: every configured source becomes one canonical cohort, with a quarantine and a report.

Pure core: :func:`clean_source` (one source: adapter, then the shared harmonisation) and
:func:`cleaning_report`. ``main`` reads params and files and writes
``data/interim/cohort.parquet``, ``data/interim/quarantine.parquet`` and ``reports/cleaning.json``.
Invariant, per source: rows in == rows kept + rows quarantined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import Field

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ConfigError, PipelineError
from pipeline.harmonise import HarmoniseRules, harmonise, rules_from_tabular_spec
from pipeline.io import write_json, write_parquet
from pipeline.params import Frozen, load_section
from pipeline.paths import ProjectPaths
from pipeline.quarantine import quarantine_frame
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources import Staged
from pipeline.sources.spec import load_tabular_spec, load_yaml_spec
from pipeline.sources.tabular import read_table, stage_tabular

log = logging.getLogger(__name__)

PARAMS_USED = ("clean",)


class CleanParams(Frozen):
    sources: list[str] = Field(min_length=1, description="Sources to clean, each a file in configs/sources/.")


@dataclass
class CleanedSource:
    name: str
    rows_in: int
    cohort: pd.DataFrame
    quarantine: pd.DataFrame
    conversions: dict[str, int]
    extra: dict[str, Any]  # adapter bookkeeping (e.g. phenotype rows read/used)
    measurements_quarantine: pd.DataFrame | None = None  # set-aside rows of secondary (long) tables

    def check_conservation(self) -> None:
        if self.rows_in != len(self.cohort) + len(self.quarantine):
            raise PipelineError(
                f"source '{self.name}': {self.rows_in} rows in but {len(self.cohort)} kept + "
                f"{len(self.quarantine)} quarantined",
                hint="a row was lost: this is a bug, please report it",
            )


def stage_source(name: str, paths: ProjectPaths) -> tuple[Staged, HarmoniseRules, dict[str, Any]]:
    """Run the adapter that the source's ``kind`` names; return its staged rows and harmonisation rules."""
    spec_path = paths.sources_dir / f"{name}.yaml"
    if not spec_path.is_file():
        known = sorted(p.stem for p in paths.sources_dir.glob("*.yaml"))
        raise ConfigError(
            f"unknown source '{name}'", file=paths.params_file, hint=f"clean.sources may list: {', '.join(known)}"
        )
    kind = load_yaml_spec(spec_path).get("kind")
    if kind == "tabular_export":
        spec = load_tabular_spec(spec_path)
        export = paths.root / spec.files["export"]
        staged = stage_tabular(read_table(export), spec, source_file=spec.files["export"])
        return staged, rules_from_tabular_spec(spec), {}
    if kind == "bids_phenotype":
        from pipeline.sources.bids import stage_source_folder  # noqa: PLC0415 (only this source needs it)

        return stage_source_folder(spec_path, paths)
    raise ConfigError(f"unknown source kind '{kind}'", file=spec_path, hint="use tabular_export or bids_phenotype")


def clean_source(
    name: str, staged: Staged, rules: HarmoniseRules, contract: CohortContract, scales: ScaleConversions
) -> CleanedSource:
    result = harmonise(staged.rows, rules, contract, scales)
    quarantine = pd.concat([quarantine_frame(staged.excluded), result.quarantine], ignore_index=True)
    # secondary tables (e.g. BIDS phenotype rows) are accounted for per row in the adapter's ledger
    secondary = [account.quarantine for account in getattr(staged, "phenotype", ())]
    return CleanedSource(
        name=name,
        rows_in=staged.rows_in,
        cohort=result.cohort,
        quarantine=quarantine_frame(quarantine),
        conversions=result.conversions,
        extra={},
        measurements_quarantine=quarantine_frame(pd.concat(secondary, ignore_index=True)) if secondary else None,
    )


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
    cleaned = []
    for name in params.sources:
        staged, rules, extra = stage_source(name, paths)
        item = clean_source(name, staged, rules, contract, scales)
        item.extra = extra
        item.check_conservation()
        log.info("%s: %d rows in, %d kept, %d quarantined", name, item.rows_in, len(item.cohort), len(item.quarantine))
        cleaned.append(item)
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
    # write only after everything succeeded, each file atomically
    write_parquet(cohort, paths.interim_dir / "cohort.parquet")
    write_parquet(quarantine, paths.interim_dir / "quarantine.parquet")
    write_parquet(measurements, paths.interim_dir / "quarantine_measurements.parquet")
    write_json(report, paths.reports_dir / "cleaning.json")
