"""What scoring needs, loaded once per run: the model (hash-checked), the input layout, the harmonisation rules."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ExitCode, PipelineError
from pipeline.harmonise import HarmoniseRules, rules_from_tabular_spec
from pipeline.modelling.bundle import Bundle, load_bundle
from pipeline.paths import ProjectPaths
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.scoring.dedupe import SeenIds
from pipeline.scoring.layout import input_format
from pipeline.sources.spec import TabularSourceSpec

log = logging.getLogger(__name__)


@dataclass
class ScoringContext:
    """The run's settings and loaded configs, plus the one piece of state of a file: the ids scored so far."""

    bundle: Bundle
    spec: TabularSourceSpec
    rules: HarmoniseRules
    contract: CohortContract
    scales: ScaleConversions
    source_file: str
    explain: bool = False
    top_k: int = 3
    model_version: str = "local"
    seen: SeenIds = field(default_factory=SeenIds)


def resolve_model(model: str | None, task: str, paths: ProjectPaths | None) -> tuple[Bundle, str]:
    """Load the model from a folder or a registry URI; return it with its registry version (or 'local')."""
    if model is None:
        if paths is None:
            raise PipelineError("no --model given and no project here", exit_code=ExitCode.USAGE)
        model = str(paths.models_dir / task)
    if model.startswith("models:/"):
        from pipeline import tracking  # noqa: PLC0415 (MLflow: only for a registry URI)

        tracking.use_store(paths.root if paths else Path.cwd())
        bundle = load_bundle(model)
        return bundle, tracking.registry_version(model)
    return load_bundle(model), "local"


def configs_folder(paths: ProjectPaths | None) -> Path:
    """The project's configs/, or outside a project the configs installed beside the package."""
    return paths.configs if paths else Path(str(files("pipeline"))).parent / "configs"


def build_context(
    *, model: str | None, task: str, input_format_name: str, source_file: str, explain: bool, top_k: int
) -> ScoringContext:
    """Everything scoring needs, loaded once: the model (hash-checked), the input format, the rules."""
    try:
        paths: ProjectPaths | None = ProjectPaths.discover()
    except PipelineError:
        paths = None  # outside the project: the model and the configs installed beside the package suffice
    configs = configs_folder(paths)
    contract = load_contract(configs / "cohort_schema.yaml")
    scales = load_scale_conversions(configs / "scale_conversions.yaml")
    bundle, version = resolve_model(model, task, paths)
    for note in bundle.legacy_notes():  # here, not in load_bundle: once per run, not once per Dask worker
        log.warning("model %s %s", bundle.info.registered_model_name, note)
    spec = input_format(input_format_name, configs, paths, contract)
    rules = rules_from_tabular_spec(spec, constants={"cohort": "scoring_input"}, resolve_duplicates=False)
    return ScoringContext(
        bundle=bundle, spec=spec, rules=rules, contract=contract, scales=scales, source_file=source_file,
        explain=explain, top_k=top_k, model_version=version,
    )  # fmt: skip
