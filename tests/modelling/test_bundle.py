"""The model bundle's manifest: every file the scorer reads is hash-checked at load, locally and from the registry."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.contract import CohortContract
from pipeline.errors import ExitCode, ModelError
from pipeline.modelling.bundle import (
    ESTIMATOR_FILE,
    FEATURE_SPEC_FILE,
    MANIFEST_FILE,
    MODEL_INFO_FILE,
    load_bundle,
    log_saved_model,
    write_manifest,
)
from tests.scoring.helpers import canonical_rows, invoke, save_test_model, write


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, contract: CohortContract) -> Path:
    def logit(X: pd.DataFrame) -> pd.Series:
        return 0.08 * (X["bmi"] - 28)

    return save_test_model(contract, tmp_path_factory.mktemp("model") / "acute", logit)


@pytest.fixture
def copy(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def score_with(model: Path, folder: Path, contract: CohortContract) -> tuple[int, str]:
    source = write(canonical_rows(contract, 5), folder / "in.csv")
    return invoke("score", str(source), "-o", str(folder / "out.csv"), "--model", str(model))


def test_the_manifest_covers_every_artifact_and_its_hash_is_printed(model_dir, tmp_path, contract) -> None:
    artifacts = model_dir / "artifacts"
    manifest = json.loads((artifacts / MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == sorted([ESTIMATOR_FILE, FEATURE_SPEC_FILE, MODEL_INFO_FILE])
    bundle = load_bundle(model_dir)
    assert bundle.manifest_sha256 == hashlib.sha256((artifacts / MANIFEST_FILE).read_bytes()).hexdigest()
    assert bundle.info.bundle_format == 2
    assert bundle.legacy_notes() == []
    code, text = score_with(model_dir, tmp_path, contract)
    assert code == 0, text
    assert f"model manifest sha256 {bundle.manifest_sha256}" in text


def _edit_json(path: Path) -> None:
    data = json.loads(path.read_text())
    if "risk_bands" in data:
        data["risk_bands"][0]["upper"] = 0.1  # a plausible edit that validates: only the hash can catch it
    else:
        data["columns"] = data["columns"][::-1]
    path.write_text(json.dumps(data, indent=2) + "\n")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "edit"),
    [(ESTIMATOR_FILE, _flip_byte), (FEATURE_SPEC_FILE, _edit_json), (MODEL_INFO_FILE, _edit_json)],
)
def test_an_edited_file_is_refused_naming_it(copy, tmp_path, contract, name, edit) -> None:
    edit(copy / "artifacts" / name)
    code, text = score_with(copy, tmp_path, contract)
    assert code == ExitCode.MODEL, text
    assert f"artifacts/{name}" in text
    assert "does not match the recorded" in text
    assert not (tmp_path / "out.csv").exists()


def test_a_missing_file_is_refused_naming_it(copy, tmp_path, contract) -> None:
    (copy / "artifacts" / FEATURE_SPEC_FILE).unlink()
    code, text = score_with(copy, tmp_path, contract)
    assert code == ExitCode.MODEL
    assert f"artifacts/{FEATURE_SPEC_FILE}" in text
    assert "missing" in text


@pytest.mark.parametrize("extra", ["risk_bands.json", "sub/notes.txt"])
def test_an_added_file_is_refused_naming_it(copy, tmp_path, contract, extra) -> None:
    added = copy / "artifacts" / extra
    added.parent.mkdir(exist_ok=True)
    added.write_text("{}")
    code, text = score_with(copy, tmp_path, contract)
    assert code == ExitCode.MODEL
    assert f"artifacts/{extra}" in text
    assert "not in the model manifest" in text


def test_a_broken_or_deleted_manifest_is_refused(copy) -> None:
    manifest = copy / "artifacts" / MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"files"', '"filez"'))
    with pytest.raises(ModelError, match="manifest is not valid") as error:
        load_bundle(copy)
    assert error.value.exit_code == ExitCode.MODEL
    assert MANIFEST_FILE in str(error.value)
    # deleting the manifest does not switch the check off: model_info.json says the model had one
    manifest.unlink()
    with pytest.raises(ModelError, match="manifest is missing"):
        load_bundle(copy)


def test_a_manifest_may_not_point_outside_the_artifacts(copy) -> None:
    manifest = copy / "artifacts" / MANIFEST_FILE
    data = json.loads(manifest.read_text())
    data["files"]["../MLmodel"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="manifest is not valid"):
        load_bundle(copy)


def test_a_model_saved_before_manifests_loads_with_notes(copy) -> None:
    info_path = copy / "artifacts" / MODEL_INFO_FILE
    info = json.loads(info_path.read_text())
    for key in ("bundle_format", "scoring_rule", "training_ranges"):
        del info[key]
    info_path.write_text(json.dumps(info))
    (copy / "artifacts" / MANIFEST_FILE).unlink()
    bundle = load_bundle(copy)
    assert bundle.manifest_sha256 is None
    assert bundle.scoring_rule.max_missing_fraction == 0.5
    assert bundle.scoring_rule.required_predictors == ()
    assert len(bundle.legacy_notes()) == 3
    # its estimator is still hash-checked against model_info.json
    _flip_byte(copy / "artifacts" / ESTIMATOR_FILE)
    with pytest.raises(ModelError, match="does not match the recorded"):
        load_bundle(copy)


def test_unknown_model_info_keys_are_still_refused(copy) -> None:
    info_path = copy / "artifacts" / MODEL_INFO_FILE
    info = json.loads(info_path.read_text())
    info["bundle_format"] = 1
    info["favourite_colour"] = "blue"
    info_path.write_text(json.dumps(info))
    (copy / "artifacts" / MANIFEST_FILE).unlink()
    with pytest.raises(ModelError, match="favourite_colour"):
        load_bundle(copy)


def test_a_rule_naming_a_column_the_model_lacks_is_refused(copy) -> None:
    """Not by the manifest (the file may be consistent): the scorer would skip a required predictor it cannot find."""
    info_path = copy / "artifacts" / MODEL_INFO_FILE
    info = json.loads(info_path.read_text())
    info["scoring_rule"]["required_predictors"] = ["madrs_24h"]
    info_path.write_text(json.dumps(info))
    write_manifest(copy / "artifacts")
    with pytest.raises(ModelError, match="madrs_24h"):
        load_bundle(copy)


def test_the_registry_version_carries_and_checks_the_manifest(model_dir, tmp_path, mlflow_store) -> None:
    import mlflow
    import mlflow.artifacts

    mlflow.set_experiment("manifest")
    with mlflow.start_run():
        version = log_saved_model(model_dir, registered_name="trd-acute")
    local = load_bundle(model_dir)
    registry = load_bundle(f"models:/trd-acute/{version}")
    assert registry.manifest_sha256 == local.manifest_sha256
    downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/trd-acute/{version}"))
    assert sorted(p.name for p in (downloaded / "artifacts").iterdir()) == sorted(
        [ESTIMATOR_FILE, FEATURE_SPEC_FILE, MODEL_INFO_FILE, MANIFEST_FILE]
    )
