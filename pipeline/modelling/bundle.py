"""The model bundle: an MLflow pyfunc model directory with no pickle in it.

Layout (``models/<task>/`` and every registered version)::

    MLmodel, python_env.yaml, requirements.txt, input_example.json   written by MLflow
    pyfunc.py                                                        the pyfunc, stored as code
    artifacts/estimator.skops                                        the fitted scikit-learn/XGBoost estimator
    artifacts/feature_spec.json                                      how canonical columns become features
    artifacts/model_info.json                                        task, candidate, calibration, hashes, bands,
                                                                     scoring rule, training ranges
    artifacts/manifest.json                                          SHA-256 of every other file in artifacts/

The estimator is stored with skops and loaded with an explicit list of trusted types; anything else in the
file is refused. Its SHA-256 is recorded in model_info.json and checked before every load. The pyfunc takes
the all-float64 feature matrix and returns one column, ``p_response``.

Integrity: :func:`load_bundle` checks every file the scorer reads against the manifest (an edited, missing or
extra file in ``artifacts/`` is refused, naming it); the manifest's own SHA-256 identifies the whole model (the
scorer prints it, the training run records it in MLflow). MLflow copies ``artifacts/`` into every registry
version, so ``models:/`` URIs are checked the same way. Models saved before manifests (``bundle_format`` 1)
still load: refusing them would stop every registered version until it is retrained, and their estimator,
the file that computes the scores, is still hash-checked; the scorer warns that the rest is not. A model that
records ``bundle_format`` 2 but has no manifest is refused, so deleting the manifest does not switch the
check off.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import skops.io as sio
import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from pipeline.errors import ModelError
from pipeline.features import FALLBACK_SCORING_RULE, FeatureSpec, ScoringRule
from pipeline.tasks import TaskOutcome, TaskPopulation

# Types skops must be told to trust for our candidates, beyond its own safe defaults. Nothing else loads.
TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
    "sklearn.calibration._CalibratedClassifier",  # models saved before pipeline.modelling.calibration
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    # this package's own estimators: plain attributes (numbers, arrays, lists, fitted scikit-learn/XGBoost parts)
    "pipeline.modelling.calibration.CalibratedModel",
    "pipeline.modelling.design.SplineDesign",
)
ESTIMATOR_FILE = "estimator.skops"
FEATURE_SPEC_FILE = "feature_spec.json"
MODEL_INFO_FILE = "model_info.json"
MANIFEST_FILE = "manifest.json"
# the artifacts every bundle stores, by their name in MLflow's artifacts mapping (saved and logged alike)
ARTIFACT_FILES = {
    "estimator": ESTIMATOR_FILE,
    "feature_spec": FEATURE_SPEC_FILE,
    "model_info": MODEL_INFO_FILE,
    "manifest": MANIFEST_FILE,
}
# 1: before manifests, scoring rules and training ranges; 2: with them
BUNDLE_FORMAT = 2
# MLflow "models from code" copies this file into the model under its own name and runs it to load the pyfunc
MODEL_CODE = Path(__file__).with_name("pyfunc.py")
OUTPUT_COLUMN = "p_response"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle", ".sav")


class RiskBand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    upper: float  # the band holds probabilities below this (the last band's upper is 1.0 inclusive)


class ModelInfo(BaseModel):
    """What a scorer and a reviewer need to know about a bundle, stored beside the estimator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    target: str
    candidate: str
    calibration: str
    estimator_sha256: str
    risk_bands: tuple[RiskBand, ...]
    training_data_sha256: str
    n_train: int
    registered_model_name: str
    package_version: str
    # new fields need defaults: model_info.json files saved before them must still validate
    bundle_format: int = 1
    scoring_rule: ScoringRule | None = None  # None: saved before rules; the scorer uses FALLBACK_SCORING_RULE
    training_ranges: dict[str, tuple[float, float]] | None = None  # numeric predictor -> training [min, max]
    outcome: TaskOutcome | None = None  # None: saved before outcome kinds, a response model
    population: TaskPopulation | None = None  # None: every patient (pipeline/tasks.py population_mask)

    @model_validator(mode="after")
    def _ranges(self) -> ModelInfo:
        for name, (low, high) in (self.training_ranges or {}).items():
            if not low <= high:
                raise ValueError(f"training_ranges.{name}: min {low} above max {high}")
        return self


class Manifest(BaseModel):
    """artifacts/manifest.json: the SHA-256 of every other file in the model's artifacts folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Literal["sha256"] = "sha256"
    files: dict[str, str]

    @model_validator(mode="after")
    def _plain_names(self) -> Manifest:
        for name in self.files:
            if Path(name).name != name or name in (".", "..", MANIFEST_FILE):
                raise ValueError(f"'{name}' is not a file name inside artifacts/")
        return self


def pip_requirements() -> list[str]:
    """Pinned requirements of the pyfunc, read from this environment (MLflow's inference is slow and noisy)."""
    pins = []
    for package in ("mlflow", "scikit-learn", "xgboost-cpu", "skops", "pandas", "numpy", "pydantic", "pyyaml"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical_skops(raw: bytes) -> bytes:
    """Make a skops archive depend only on the model: skops names nodes and array files by ``id()`` (memory
    addresses), so we renumber both in schema order and write the zip with fixed timestamps."""
    with zipfile.ZipFile(io.BytesIO(raw)) as source:
        schema = json.loads(source.read("schema.json"))
        contents = {name: source.read(name) for name in source.namelist() if name != "schema.json"}
    node_ids: dict[int, int] = {}
    files: dict[str, str] = {}

    def renumber(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "__id__" and isinstance(value, int):
                    out[key] = node_ids.setdefault(value, len(node_ids) + 1)
                elif key == "file" and isinstance(value, str) and value in contents:
                    suffix = Path(value).suffix
                    out[key] = files.setdefault(value, f"{len(files) + 1:04d}{suffix}")
                else:
                    out[key] = renumber(value)
            return out
        if isinstance(node, list):
            return [renumber(item) for item in node]
        return node

    canonical = renumber(schema)
    if set(files) != set(contents):
        raise ModelError("unexpected skops archive layout (unreferenced files); cannot store it reproducibly")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
        entries = {"schema.json": json.dumps(canonical, indent=2).encode()} | {
            files[name]: data for name, data in contents.items()
        }
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            target.writestr(info, entries[name])
    return buffer.getvalue()


def dump_estimator(estimator: Any, path: Path) -> str:
    """Write the estimator with skops, canonicalised so that equal models give equal bytes."""
    raw = sio.dumps(estimator)
    untrusted = set(sio.get_untrusted_types(data=raw)) - set(TRUSTED_TYPES)
    if untrusted:
        raise ModelError(
            f"the estimator contains types outside the trusted list: {sorted(untrusted)}",
            hint="add them to pipeline.modelling.bundle.TRUSTED_TYPES only after checking they are safe to load",
        )
    Path(path).write_bytes(_canonical_skops(raw))
    return sha256_file(path)


def feature_signature(feature_names: list[str]) -> Any:
    """All-float64 input signature with every feature optional (any clinical value may be missing)."""
    # MLflow takes seconds to import; the scorer loads bundles without it, so only saving/logging imports it
    from mlflow.models import ModelSignature  # noqa: PLC0415
    from mlflow.types import ColSpec, Schema  # noqa: PLC0415

    return ModelSignature(
        inputs=Schema([ColSpec("double", name, required=False) for name in feature_names]),
        outputs=Schema([ColSpec("double", OUTPUT_COLUMN)]),
    )


def load_estimator(path: Path, expected_sha256: str) -> Any:
    """Check the recorded hash and the types in the file, then load; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("estimator file missing from the model", file=path, hint="re-create the model (dvc repro)")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelError(
            f"estimator hash {actual[:12]}… does not match the recorded {expected_sha256[:12]}…",
            file=path,
            hint="the model file was changed after training; restore it (dvc checkout) or retrain",
        )
    try:
        untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
    except Exception as exc:  # skops raises several types for a broken archive
        raise ModelError(f"not a readable skops file ({exc})", file=path) from None
    if untrusted:
        raise ModelError(f"refusing to load untrusted types {sorted(untrusted)}", file=path)
    return sio.load(path, trusted=list(TRUSTED_TYPES))


def predict_proba(estimator: Any, features: pd.DataFrame) -> np.ndarray:
    """Probability of response, as float64."""
    return np.asarray(estimator.predict_proba(features)[:, 1], dtype="float64")


@dataclass(frozen=True)
class Bundle:
    """A loaded model: what the evaluate, explain and score code paths use."""

    path: Path
    estimator: Any
    feature_spec: FeatureSpec
    info: ModelInfo
    manifest_sha256: str | None = None  # None: a model saved before manifests

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return predict_proba(self.estimator, features[self.feature_spec.feature_names])

    @property
    def scoring_rule(self) -> ScoringRule:
        return self.info.scoring_rule or FALLBACK_SCORING_RULE

    def legacy_notes(self) -> list[str]:
        """What this model lacks because an earlier version of the pipeline saved it (for one warning each)."""
        notes = []
        if self.manifest_sha256 is None:
            notes.append(
                "was saved before model manifests: only its estimator is hash-checked, not model_info.json or "
                "feature_spec.json; retrain it to get a manifest"
            )
        if self.info.scoring_rule is None:
            limit = FALLBACK_SCORING_RULE.max_missing(len(self.feature_spec.input_columns))
            notes.append(
                f"stores no minimum-data rule: rows with more than {limit} of its "
                f"{len(self.feature_spec.input_columns)} predictors missing are rejected (insufficient_data); "
                "retrain it to apply the task's rule"
            )
        if self.info.training_ranges is None:
            notes.append("stores no training ranges: outside_training_range is left missing (unknown, not 'none')")
        return notes


def write_manifest(folder: Path) -> str:
    """Write ``folder``/manifest.json over every other file in ``folder``; return the manifest's SHA-256."""
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    text = Manifest(files=files).model_dump_json(indent=2) + "\n"
    (folder / MANIFEST_FILE).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_manifest(artifacts: Path) -> str:
    """Check every file of ``artifacts`` against its manifest (same names, same SHA-256); return the manifest's
    SHA-256. Raises ModelError naming the first edited, missing or extra file."""
    path = artifacts / MANIFEST_FILE
    try:
        raw = path.read_bytes()
        manifest = Manifest.model_validate_json(raw)
    except OSError as exc:
        raise ModelError(f"the model manifest cannot be read ({exc.strerror})", file=path) from None
    except ValueError:
        raise ModelError(
            "the model manifest is not valid", file=path, hint="restore the model folder (dvc checkout) or retrain"
        ) from None
    present = {p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    restore = "restore the model folder (dvc checkout, or download the registry version again) or retrain"
    for name in sorted(set(manifest.files) - present):
        raise ModelError("a file listed in the model manifest is missing", file=artifacts / name, hint=restore)
    for name in sorted(present - set(manifest.files)):
        raise ModelError(
            "a file that is not in the model manifest was added to the model", file=artifacts / name,
            hint=f"remove it; if the model folder was changed otherwise, {restore}",
        )  # fmt: skip
    for name, expected in sorted(manifest.files.items()):
        actual = sha256_file(artifacts / name)
        if actual != expected:
            raise ModelError(
                f"SHA-256 {actual[:12]}… does not match the recorded {expected[:12]}… (model manifest)",
                file=artifacts / name, hint=f"the file was changed after training; {restore}",
            )  # fmt: skip
    return hashlib.sha256(raw).hexdigest()


def write_artifacts(folder: Path, estimator: Any, feature_spec: FeatureSpec, info_fields: dict[str, Any]) -> dict:
    """Write the artifacts into ``folder``, the manifest last; return the artifacts mapping for mlflow.pyfunc."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = dump_estimator(estimator, folder / ESTIMATOR_FILE)
    feature_spec.save(folder / FEATURE_SPEC_FILE)
    info = ModelInfo.model_validate({"bundle_format": BUNDLE_FORMAT, **info_fields, "estimator_sha256": digest})
    (folder / MODEL_INFO_FILE).write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")
    write_manifest(folder)
    return {key: str(folder / name) for key, name in ARTIFACT_FILES.items()}


def normalise_mlmodel(model_dir: Path) -> None:
    """Drop the per-save random id and timestamp and the absolute code path, so equal models are equal bytes."""
    mlmodel = model_dir / "MLmodel"
    meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    meta.pop("utc_time_created", None)
    meta.pop("model_uuid", None)
    pyfunc = meta.get("flavors", {}).get("python_function", {})
    for artifact in (pyfunc.get("artifacts") or {}).values():
        artifact.pop("uri", None)  # where the file was copied from; loading uses the relative 'path'
    if pyfunc.get("model_code_path"):
        pyfunc["model_code_path"] = Path(pyfunc["model_code_path"]).name
    # MLflow measured the folder with the absolute paths above; measure the files that matter instead
    meta["model_size_bytes"] = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file() and p != mlmodel)
    mlmodel.write_text(yaml.safe_dump(meta, sort_keys=True), encoding="utf-8")


def save_bundle(
    destination: Path,
    *,
    estimator: Any,
    feature_spec: FeatureSpec,
    info_fields: dict[str, Any],
    signature: Any,
    input_example: pd.DataFrame,
) -> None:
    """Save an MLflow model directory at ``destination``, replacing it atomically."""
    import mlflow.pyfunc  # noqa: PLC0415 (slow import, only needed when saving)

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.") as tmp:
        staging = Path(tmp)
        artifacts = write_artifacts(staging / "src", estimator, feature_spec, info_fields)
        mlflow.pyfunc.save_model(
            str(staging / "model"),
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )
        normalise_mlmodel(staging / "model")
        if destination.exists():
            shutil.rmtree(destination)
        (staging / "model").rename(destination)


def log_saved_model(model_dir: Path, registered_name: str) -> str:
    """Log the bundle saved at ``model_dir`` to the active MLflow run and register it; return the version.

    The same artifact files (byte for byte) and the same code are logged, so the registry version and
    ``models/<task>`` hold the same model.
    """
    import mlflow.models  # noqa: PLC0415 (slow import, only needed when logging)
    import mlflow.pyfunc  # noqa: PLC0415

    artifacts_dir = Path(model_dir) / "artifacts"
    verify_manifest(artifacts_dir)  # what is registered is what was saved, manifest included
    saved = mlflow.models.Model.load(str(model_dir))
    # JSON turns 46.0 into 46; the signature is all-double
    example = pd.read_json(Path(model_dir) / "input_example.json", orient="split").astype("float64")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={key: str(artifacts_dir / name) for key, name in ARTIFACT_FILES.items()},
        signature=saved.signature,
        input_example=example,
        registered_model_name=registered_name,
        pip_requirements=pip_requirements(),
    )
    return str(info.registered_model_version)


def load_bundle(location: str | Path) -> Bundle:
    """Load ``models/<task>`` (a folder) or a registry URI such as ``models:/trd-acute@champion``."""
    text = str(location)
    if text.startswith(("models:/", "runs:/")):
        import mlflow.artifacts  # noqa: PLC0415 (slow import; a model folder is loaded without MLflow)

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        except Exception as exc:  # MLflow raises several types for unknown names/aliases
            raise ModelError(f"cannot resolve {text} in the MLflow registry ({exc})") from None
    else:
        local = Path(text)
    pickled = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise ModelError(
            f"refusing a model that contains pickle files: {pickled}",
            file=local,
            hint="pickle can run arbitrary code when loaded; use a model trained by this pipeline (skops)",
        )
    artifacts = local / "artifacts"
    # every file read below is checked first; a model without a manifest is checked after its info is read
    manifest_sha256 = verify_manifest(artifacts) if (artifacts / MANIFEST_FILE).is_file() else None
    info_path = artifacts / MODEL_INFO_FILE
    if not info_path.is_file():
        raise ModelError(
            "not a model of this pipeline (no artifacts/model_info.json)",
            file=local,
            hint="give models/<task> or models:/trd-<task>@champion",
        )
    try:
        info = ModelInfo.model_validate_json(info_path.read_text(encoding="utf-8"))
        feature_spec = FeatureSpec.load(artifacts / FEATURE_SPEC_FILE)
    except (ValueError, OSError) as exc:
        raise ModelError(f"model metadata unreadable ({exc})", file=info_path) from None
    numeric = {c.name for c in feature_spec.columns if c.kind == "numeric"}
    unknown = sorted(
        set(info.scoring_rule.required_predictors if info.scoring_rule else ()) - set(feature_spec.input_columns)
        | set(info.training_ranges or ()) - numeric
    )
    if unknown:  # the scorer would silently skip a required predictor it cannot find
        raise ModelError(
            f"the scoring rule or training ranges name columns the model does not have as (numeric) predictors: "
            f"{unknown}", file=info_path, hint="retrain the model",
        )  # fmt: skip
    if manifest_sha256 is None and info.bundle_format >= BUNDLE_FORMAT:
        raise ModelError(
            "the model manifest is missing (this model was saved with one)", file=artifacts / MANIFEST_FILE,
            hint="restore the model folder (dvc checkout, or download the registry version again) or retrain",
        )  # fmt: skip
    estimator = load_estimator(artifacts / ESTIMATOR_FILE, info.estimator_sha256)
    return Bundle(
        path=local, estimator=estimator, feature_spec=feature_spec, info=info, manifest_sha256=manifest_sha256
    )


def risk_band(probabilities: np.ndarray, bands: tuple[RiskBand, ...]) -> np.ndarray:
    """Name of the band each probability falls in (bands ordered by their upper bound)."""
    uppers = np.array([b.upper for b in bands[:-1]], dtype="float64")
    names = np.array([b.name for b in bands], dtype=object)
    return names[np.searchsorted(uppers, probabilities, side="right")]


def model_summary(bundle: Bundle) -> dict[str, Any]:
    return json.loads(bundle.info.model_dump_json())
