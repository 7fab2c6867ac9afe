"""Everything the card is made of, read before anything is computed: the task's params, the schema, the source
configs, the outputs of every upstream stage, the MLflow registry entry of the bundle and the ``dvc.lock`` hashes
(never the current git HEAD or a run id: the card must not change when they do).

Paths come from :class:`pipeline.paths.ProjectPaths`, the registry and ``dvc.lock`` from :mod:`pipeline.tracking`.
A stage cannot depend on ``dvc.lock`` (it changes when the stage runs), so the hashes are read at run time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import Field

from pipeline import tracking
from pipeline.contract import CohortContract, ColumnSpec, load_contract
from pipeline.errors import PipelineError
from pipeline.features import FeatureSpec
from pipeline.modelling.params import TrainParams
from pipeline.params import Frozen, parse_section
from pipeline.paths import ProjectPaths
from pipeline.report.format import finite, lookup
from pipeline.split import SplitParams
from pipeline.tasks import TasksParams, TaskSpec

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
CHAMPION_ALIAS = tracking.CHAMPION_ALIAS
EXTERNAL_COHORT = "ds005917"  # the public cohort whose source config the card cites
SYNTHETIC = "synthetic"  # the generator's cohort: the only development data with a planted truth
PLANTED_EFFECTS = "data/raw/synthetic/planted_effects.json"
# the evaluate and explain figures embedded in the card, in reading order (others in those folders are left out:
# waterfall plots show single patients, dependence plots are many)
EVALUATION_FIGURES = ("roc.png", "calibration.png", "precision_recall.png", "decision_curve.png")
EXPLAIN_FIGURES = ("importance_bar.png", "beeswarm.png", "fidelity.png")
# the stages upstream of a task's card whose dvc.lock hashes the provenance section lists
LOCKED_STAGES = ("synthesize", "fetch", "clean", "split@{task}", "train@{task}", "evaluate@{task}", "explain@{task}")


class ReportParams(Frozen):
    """The ``report`` section of params.yaml."""

    anticipated_c: float | None = Field(
        default=None,
        gt=0.5,
        lt=1.0,
        description="Anticipated C statistic for the Riley sample-size criteria; null = the champion's CV AUROC.",
    )


@dataclass(frozen=True)
class Sourced:
    """A parsed input and its path relative to the project root (what the card cites).

    A CSV file is held as its list of records, so ``<path>#<row>.<column>`` is a dotted key like any other.
    """

    path: str
    data: Any

    def get(self, key: str) -> Any:
        return lookup(self.data, key)


@dataclass(frozen=True)
class RegistryInfo:
    """The MLflow registry entry of the bundle, found by its estimator hash, or why it was not found."""

    name: str
    version: str | None = None
    champion_version: str | None = None  # the version the `champion` alias points to, if any
    run_id: str | None = None
    gate: str | None = None  # "passed" or "refused" (version tag written by the train stage)
    gate_reasons: str | None = None
    reason: str | None = None  # why nothing was found

    @property
    def found(self) -> bool:
        return self.version is not None

    @property
    def holds_champion(self) -> bool:
        return self.found and self.champion_version == self.version


@dataclass(frozen=True)
class ExplainInputs:
    fidelity: Sourced  # fidelity.json
    explanation: Sourced  # explanation.json
    importance: Sourced  # importance.csv
    signs: Sourced | None  # sign_checks.csv; absent without a planted truth
    figures: dict[str, str]  # file name -> path relative to the card's folder


@dataclass(frozen=True)
class CardInputs:
    task: str
    task_spec: TaskSpec
    split: SplitParams
    train: TrainParams
    params: ReportParams
    raw_params: dict[str, Any]  # params.yaml as read: the card cites the keys it shows
    contract: CohortContract
    sources: dict[str, Sourced]  # configs/sources/<name>.yaml
    cleaning: Sourced
    planted: Sourced | None
    split_counts: Sourced
    model_info: Sourced
    feature_spec: FeatureSpec
    feature_spec_path: str
    cv: Sourced
    metrics: Sourced  # evaluation/metrics.json
    evaluation: Sourced  # evaluation/evaluation.json
    thresholds: Sourced  # evaluation/thresholds.csv
    subgroups: Sourced  # evaluation/subgroups.csv
    decision_curve: Sourced  # evaluation/plots/decision_curve.csv
    figures: dict[str, str]  # evaluation figures: name -> path relative to the card's folder
    explain: ExplainInputs | None
    registry: RegistryInfo
    lock: tuple[tuple[str, str, str], ...]  # (stage, output, md5) from dvc.lock

    @property
    def registered_name(self) -> str:
        return str(self.model_info.data["registered_model_name"])

    @property
    def champion(self) -> str:
        return str(self.model_info.data["candidate"])

    @property
    def level(self) -> float:
        """The confidence level of every test-split and external interval (checked present on gathering)."""
        return float(self.evaluation.get("intervals.level"))

    @property
    def params_file(self) -> Sourced:
        return Sourced(PARAMS_FILE, self.raw_params)

    @property
    def target(self) -> ColumnSpec:
        return self.contract.column(self.task_spec.target)

    def external_report(self) -> dict[str, Any]:
        return self.evaluation.get("external_validation") or {}

    @property
    def development(self) -> tuple[str, ...]:
        """The development cohort(s): what the train stage recorded, else split.training_cohort."""
        recorded = self.cv.get("protocol.development_cohorts")
        return tuple(recorded) if recorded else self.split.cohorts

    @property
    def synthetic_development(self) -> bool:
        """Developed on the synthetic cohort alone (the only development data with a known truth)."""
        return self.development == (SYNTHETIC,)

    @property
    def development_name(self) -> str:
        """How the card names the development data: 'synthetic', or the cohort names ('clinic_a + clinic_b')."""
        return " + ".join(self.development)

    @property
    def held_out(self) -> bool:
        """A test split exists (none under the small-cohort protocol)."""
        return bool(self.split_counts.get("test.n"))

    @property
    def underpowered(self) -> bool:
        """Trained below the Riley minimum with train.sample_size.override."""
        return bool(self.cv.get("protocol.underpowered"))


def _missing(path: Path, what: str) -> PipelineError:
    return PipelineError(f"{what} not found", file=path, hint="run the stages before the report (dvc repro)")


def read_json(root: Path, relative: str, what: str) -> Sourced:
    path = root / relative
    if not path.is_file():
        raise _missing(path, what)
    try:
        return Sourced(relative, json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise PipelineError(f"{what} is not valid JSON ({exc})", file=path) from None


def read_csv(root: Path, relative: str, what: str) -> Sourced:
    path = root / relative
    if not path.is_file():
        raise _missing(path, what)
    frame = pd.read_csv(path)  # an empty cell is NaN, shown as NA
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return Sourced(relative, records)


def read_figures(root: Path, folder: str, names: tuple[str, ...], card_folder: str) -> dict[str, str]:
    relative = Path(folder).relative_to(card_folder).as_posix()
    return {name: f"{relative}/{name}" for name in names if (root / folder / name).is_file()}


def registry_info(root: Path, registered_name: str, estimator_sha256: str) -> RegistryInfo:
    """The newest registered version whose ``estimator_sha256`` tag matches; a missing store never fails the stage."""
    uri = tracking.tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return RegistryInfo(registered_name, reason="no MLflow store was reachable")
    try:
        tracking.use_store(root)
        version = tracking.find_model_version(registered_name, estimator_sha256)
        if version is None:
            return RegistryInfo(registered_name, reason="no registered version carries this estimator's SHA-256")
        client = MlflowClient()
        # search results carry no aliases: read them from the registered model
        champion = (client.get_registered_model(registered_name).aliases or {}).get(CHAMPION_ALIAS)
        return RegistryInfo(
            name=registered_name,
            version=str(version.version),
            champion_version=None if champion is None else str(champion),
            run_id=version.run_id or None,
            gate=version.tags.get("gate"),
            gate_reasons=version.tags.get("gate_reasons"),
        )
    except (MlflowException, OSError) as exc:
        log.warning("MLflow registry lookup for %s failed: %s", registered_name, exc)
        return RegistryInfo(registered_name, reason="the MLflow registry could not be queried")


def read_explain(root: Path, folder: str, card_folder: str) -> ExplainInputs | None:
    if not (root / folder / "fidelity.json").is_file():
        return None
    signs = f"{folder}/sign_checks.csv"
    return ExplainInputs(
        fidelity=read_json(root, f"{folder}/fidelity.json", "explanation fidelity"),
        explanation=read_json(root, f"{folder}/explanation.json", "explanation report"),
        importance=read_csv(root, f"{folder}/importance.csv", "SHAP importance table"),
        signs=read_csv(root, signs, "SHAP sign checks") if (root / signs).is_file() else None,
        figures=read_figures(root, f"{folder}/figures", EXPLAIN_FIGURES, card_folder),
    )


def gather_inputs(paths: ProjectPaths, task_name: str, raw_params: dict[str, Any]) -> CardInputs:
    """Read every input of the card (files, registry, git, dvc.lock) into one typed structure."""
    root = paths.root
    sources = {
        path.stem: Sourced(path.relative_to(root).as_posix(), yaml.safe_load(path.read_text(encoding="utf-8")))
        for path in sorted(paths.sources_dir.glob("*.yaml"))
    }
    card_folder = f"reports/{task_name}"
    evaluation = f"{card_folder}/evaluation"
    artifacts = f"models/{task_name}/artifacts"
    feature_spec_path = f"{artifacts}/feature_spec.json"
    if not (root / feature_spec_path).is_file():
        raise _missing(root / feature_spec_path, "feature spec")
    model_info = read_json(root, f"{artifacts}/model_info.json", "model info")
    inputs = CardInputs(
        task=task_name,
        task_spec=parse_section(TasksParams, raw_params, "tasks", PARAMS_FILE).get(task_name),
        split=parse_section(SplitParams, raw_params, "split", PARAMS_FILE),
        train=parse_section(TrainParams, raw_params, "train", PARAMS_FILE),
        params=parse_section(ReportParams, raw_params, "report", PARAMS_FILE),
        raw_params=raw_params,
        contract=load_contract(paths.cohort_schema),
        sources=sources,
        cleaning=read_json(root, "reports/cleaning.json", "cleaning report"),
        planted=read_json(root, PLANTED_EFFECTS, "planted effects") if (root / PLANTED_EFFECTS).is_file() else None,
        split_counts=read_json(root, f"data/processed/{task_name}/split.json", "split counts"),
        model_info=model_info,
        feature_spec=FeatureSpec.load(root / feature_spec_path),
        feature_spec_path=feature_spec_path,
        cv=read_json(root, f"{card_folder}/cv_metrics.json", "cross-validation metrics"),
        metrics=read_json(root, f"{evaluation}/metrics.json", "evaluation metrics"),
        evaluation=read_json(root, f"{evaluation}/evaluation.json", "evaluation report"),
        thresholds=read_csv(root, f"{evaluation}/thresholds.csv", "threshold table"),
        subgroups=read_csv(root, f"{evaluation}/subgroups.csv", "subgroup table"),
        decision_curve=read_csv(root, f"{evaluation}/plots/decision_curve.csv", "decision curve"),
        figures=read_figures(root, f"{evaluation}/figures", EVALUATION_FIGURES, card_folder),
        explain=read_explain(root, f"{card_folder}/explain", card_folder),
        registry=registry_info(root, str(model_info.data["registered_model_name"]), model_info.get("estimator_sha256")),
        lock=tuple(tracking.dvc_lock_outs(root, [s.format(task=task_name) for s in LOCKED_STAGES])),
    )
    check_consistency(inputs)
    return inputs


def check_consistency(inputs: CardInputs) -> None:
    """The files must describe one model: a card mixing two training runs would be worse than none."""
    sha = inputs.model_info.get("estimator_sha256")
    hint = "re-run the pipeline (dvc repro) so every output comes from the same training run"
    if inputs.evaluation.get("champion.estimator_sha256") != sha:
        raise PipelineError(
            "the evaluation describes another model than models/<task> (estimator hashes differ)", hint=hint
        )
    if inputs.explain is not None and inputs.explain.explanation.get("champion.estimator_sha256") not in (None, sha):
        raise PipelineError(
            "the explanations describe another model than models/<task> (estimator hashes differ)", hint=hint
        )
    if not finite(inputs.evaluation.get("intervals.level")):
        raise PipelineError("evaluation.json records no interval level (intervals.level)", hint=hint)
    if inputs.cv.get("champion") != inputs.champion:
        raise PipelineError("cv_metrics.json names another champion than the saved model", hint=hint)
    if inputs.task_spec.target != inputs.feature_spec.target:
        raise PipelineError("the saved model predicts another target than the task's", hint=hint)
