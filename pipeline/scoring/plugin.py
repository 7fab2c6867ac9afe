"""The model on every Dask worker.

The client loads the model (hash-checked) and ships the bundle's artifact files to every worker in a
``WorkerPlugin``. The plugin's ``setup`` runs once per worker (also on a worker that joins or restarts during the
job): it writes the files to the worker's local folder, loads them with
:func:`pipeline.modelling.bundle.load_bundle` (so the estimator's SHA-256 is checked on that worker, and pickle
files are refused there too) and checks that the hash is the one the client loaded. Tasks take the loaded bundle
from the plugin, so the model is loaded once per worker, not once per partition. Workers need no access to the
project, the model folder or the MLflow registry.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client, WorkerPlugin, get_worker

from pipeline.contract import CohortContract
from pipeline.errors import ModelError
from pipeline.harmonise import HarmoniseRules
from pipeline.modelling.bundle import Bundle, load_bundle
from pipeline.scales import ScaleConversions
from pipeline.scoring.context import ScoringContext
from pipeline.sources.spec import TabularSourceSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextTemplate:
    """A :class:`ScoringContext` without its model and per-file state: what the client ships to workers."""

    spec: TabularSourceSpec
    rules: HarmoniseRules
    contract: CohortContract
    scales: ScaleConversions
    explain: bool
    top_k: int
    model_version: str

    @classmethod
    def of(cls, ctx: ScoringContext) -> ContextTemplate:
        return cls(ctx.spec, ctx.rules, ctx.contract, ctx.scales, ctx.explain, ctx.top_k, ctx.model_version)

    def context(self, bundle: Bundle, source_file: str) -> ScoringContext:
        # a fresh SeenIds per partition: duplicates within a partition are found by score_frame, across
        # partitions by the second pass (pipeline.scoring.dedupe)
        return ScoringContext(
            bundle=bundle, spec=self.spec, rules=self.rules, contract=self.contract, scales=self.scales,
            source_file=source_file, explain=self.explain, top_k=self.top_k, model_version=self.model_version,
        )  # fmt: skip


class ScoringWorkerPlugin(WorkerPlugin):
    """Loads and hash-checks the model once per worker; tasks read ``bundle`` from here."""

    def __init__(self, *, artifacts: dict[str, bytes], expected_sha256: str, template: ContextTemplate) -> None:
        self.artifacts = artifacts
        self.expected_sha256 = expected_sha256
        self.template = template
        self.bundle: Bundle | None = None
        self.load_id = ""
        self.folder: str | None = None

    def setup(self, worker: Any) -> None:
        folder = Path(tempfile.mkdtemp(prefix="trd-model-", dir=worker.local_directory))
        self.folder = str(folder)
        try:
            (folder / "artifacts").mkdir()
            for name, data in self.artifacts.items():
                (folder / "artifacts" / name).write_bytes(data)
            bundle = load_bundle(folder)  # checks the estimator's SHA-256 against model_info.json, here
            if bundle.info.estimator_sha256 != self.expected_sha256:
                raise ModelError(
                    f"worker {worker.address}: model hash {bundle.info.estimator_sha256[:12]}… is not the "
                    f"{self.expected_sha256[:12]}… the client loaded",
                    hint="the model changed during the job; run it again",
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.bundle = bundle
        self.load_id = uuid.uuid4().hex
        log.info("worker %s loaded model %s… (load %s)", worker.address, self.expected_sha256[:12], self.load_id)

    def teardown(self, worker: Any) -> None:
        self.bundle = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def plugin_for(ctx: ScoringContext) -> ScoringWorkerPlugin:
    """The plugin that carries ``ctx``'s model (its artifact files, as bytes) and settings to the workers."""
    artifacts_dir = ctx.bundle.path / "artifacts"
    artifacts = {p.name: p.read_bytes() for p in sorted(artifacts_dir.iterdir()) if p.is_file()}
    return ScoringWorkerPlugin(
        artifacts=artifacts, expected_sha256=ctx.bundle.info.estimator_sha256, template=ContextTemplate.of(ctx)
    )


@contextmanager
def model_on_workers(client: Client, plugin: ScoringWorkerPlugin) -> Iterator[str]:
    """Register ``plugin`` on every worker (raising the first worker's error) and yield its name."""
    name = f"trd-score-{plugin.expected_sha256[:12]}-{uuid.uuid4().hex[:8]}"
    try:
        client.register_plugin(plugin, name=name)
        yield name
    finally:
        with contextlib.suppress(Exception):  # the workers may already be gone (interrupt, cluster shutdown)
            client.unregister_worker_plugin(name)


def loaded_plugin(name: str) -> tuple[Any, ScoringWorkerPlugin]:
    worker = get_worker()
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, ScoringWorkerPlugin) or plugin.bundle is None:
        raise ModelError(
            f"the model is not loaded on worker {worker.address}", hint="see the worker's log for the load error"
        )
    return worker, plugin
