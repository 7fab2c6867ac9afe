"""README "Developing a model on your own cohort", end to end in a throw-away git + DVC copy of the project: a copy of
the synthetic export registered as a second tabular source under another name (own patient ids, so no synthetic
truth) becomes the development cohort of `acute`; the synthetic-trained champion is validated on it first; the
real cohort (27 patients) stops at the sample-size gate, and with the override trains and is called underpowered.

Slow (several minutes: synthesize, fetch, clean and the acute chain three times under DVC): `make test-fast` skips it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.report.fixtures import check_card_data
from tests.test_adding_a_cohort import BIN, MIRROR, add_clean_dep, run
from tests.test_end_to_end import SMALL

pytestmark = pytest.mark.slow

COPY = "clinic_copy"  # the second tabular source: the synthetic export under another name, with its own ids


def set_params(root: Path, changes: dict[tuple[str, ...], object]) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for (*parents, key), value in changes.items():
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def registry(root: Path, env: dict[str, str]) -> dict[str, object]:
    """Registered model -> {versions, champion alias}, read from the project's MLflow store."""
    script = (
        "import json, mlflow\n"
        f"uri = 'sqlite:///{root / 'mlflow.db'}'\n"
        "client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)\n"
        "out = {}\n"
        "for m in client.search_registered_models():\n"
        "    versions = client.search_model_versions(f\"name = '{m.name}'\")\n"
        "    alias = m.aliases.get('champion')\n"
        "    out[m.name] = {'versions': sorted(int(v.version) for v in versions),\n"
        "                   'champion': int(alias) if alias is not None else None}\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(run([str(BIN / "python"), "-c", script], root, env).stdout.strip().splitlines()[-1])


def tables_have_rows(node: object) -> None:
    """Every table in card_data has rows."""
    if isinstance(node, dict):
        if node.get("kind") in ("keyed", "grid", "plain"):
            assert node["rows"], f"empty table with header {node['header']}"
        for child in node.values():
            tables_have_rows(child)
    elif isinstance(node, list):
        for child in node:
            tables_have_rows(child)


def card_data(root: Path) -> dict:
    return json.loads((root / "reports/acute/card_data.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, object]]:
    if not (MIRROR / "ds005917" / "participants.tsv").is_file():
        pytest.skip("no ds005917 mirror (set TRD_DATA_MIRROR or put ../shared/datasets beside the project)")
    import os

    root = tmp_path_factory.mktemp("own") / "project"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file() and not name.startswith("tests/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    # the end-to-end test's small params; ~960 training patients meet the Riley minimum only for a C of 0.8
    set_params(root, {**SMALL, ("train", "sample_size", "anticipated_c"): 0.8})
    (root / "dvc.lock").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TRD_PROJECT_ROOT"))}
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "own"), ("EMAIL", "own@localhost"))}  # fmt: skip
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "TRD_DATA_MIRROR": str(MIRROR), **identity}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        run(cmd, root, env)
    run([str(BIN / "dvc"), "repro", "synthesize"], root, env)
    # the clinic's export: the synthetic one with every patient renamed (no truth file knows these ids)
    export = pd.read_parquet(root / "data/raw/synthetic/export.parquet")
    export["patient_ref"] = "clin-" + export["patient_ref"].astype(str)
    (root / "exports" / COPY).mkdir(parents=True)
    export.to_parquet(root / "exports" / COPY / "export.parquet", index=False)
    config = yaml.safe_load((root / "configs/sources/synthetic.yaml").read_text())
    config |= {"name": COPY, "description": "A clinic's own export (a renamed copy of the synthetic one).",
               "files": {"export": f"exports/{COPY}/export.parquet"}}  # fmt: skip
    (root / "configs/sources" / f"{COPY}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    set_params(root, {("clean", "sources"): ["synthetic", "ds005917", COPY]})
    add_clean_dep(root, f"exports/{COPY}/export.parquet")
    # 1. the synthetic-trained champion, validated externally on every other cohort, the clinic's included
    run([str(BIN / "dvc"), "repro", "report@acute"], root, env)
    synthetic_metrics = json.loads((root / "reports/acute/evaluation/metrics.json").read_text())
    # 2. the clinic's cohort as the development cohort
    set_params(root, {("split", "training_cohort"): COPY})
    run([str(BIN / "dvc"), "repro", "report@acute"], root, env)
    return root, env, synthetic_metrics


def test_the_synthetic_champion_is_validated_on_the_clinic_cohort(project) -> None:
    _, _, synthetic_metrics = project
    clinic = synthetic_metrics["external_cohorts"][COPY]
    assert clinic["n"] > 1000
    # the same patients under other ids, scored by the model trained on their twins: clearly better than chance
    assert clinic["auroc_lower"] > 0.55
    assert synthetic_metrics["external"]["n"] == 27  # ds005917, as before
    assert "oracle" in synthetic_metrics


def test_the_clinic_model_has_its_own_registry_name(project) -> None:
    root, env, _ = project
    models = registry(root, env)
    assert models["trd-acute"]["versions"] == [1]
    assert models["trd-acute"]["champion"] == 1  # untouched by the clinic's model
    assert models[f"trd-acute-{COPY}"]["versions"] == [1]
    info = json.loads((root / "models/acute/artifacts/model_info.json").read_text())
    assert info["registered_model_name"] == f"trd-acute-{COPY}"


def test_the_clinic_model_is_evaluated_without_an_oracle_and_transported_back(project) -> None:
    root, _, _ = project
    metrics = json.loads((root / "reports/acute/evaluation/metrics.json").read_text())
    assert not {"oracle", "gap", "oracle_predictors", "gap_predictors"} & set(metrics)
    assert metrics["test"]["n"] > 200
    assert metrics["internal_validation"]["auroc"]["corrected"] > 0.55
    assert metrics["external"]["n"] == 27  # ds005917
    assert metrics["external_cohorts"]["synthetic"]["n"] > 1000  # the synthetic cohort, external to this model
    cv = json.loads((root / "reports/acute/cv_metrics.json").read_text())
    assert cv["protocol"]["development_cohorts"] == [COPY]
    assert cv["protocol"]["sample_size"]["passed"] is True


def test_explanations_keep_shap_summaries_and_drop_fidelity_with_a_reason(project) -> None:
    root, _, _ = project
    fidelity = json.loads((root / "reports/acute/explain/fidelity.json").read_text())
    assert "fidelity" not in fidelity
    assert fidelity["n_explained"] > 200
    explanation = json.loads((root / "reports/acute/explain/explanation.json").read_text())
    assert explanation["fidelity"]["available"] is False
    assert COPY in explanation["fidelity"]["reason"]
    importance = pd.read_csv(root / "reports/acute/explain/importance.csv")
    assert len(importance) > 10
    assert (root / "reports/acute/explain/figures/beeswarm.png").is_file()


def test_the_card_names_the_clinic_cohort_and_checks_out(project) -> None:
    root, _, _ = project
    markdown = (root / "reports/acute/model_card.md").read_text(encoding="utf-8")
    title = markdown.splitlines()[0]
    assert f"trd-acute-{COPY}" in title
    assert f"{COPY} development data" in title
    assert "synthetic development data" not in markdown
    assert "All development and test patients are **synthetic**" not in markdown
    assert "Developed and tested on synthetic patients" not in markdown
    assert "underpowered" not in markdown.lower()
    assert "external patients (synthetic)" in markdown
    tables_have_rows(card_data(root))
    assert check_card_data(card_data(root), root)["checked"] > 200


def test_the_real_cohort_stops_at_the_gate_and_trains_underpowered_with_the_override(project) -> None:
    root, env, _ = project
    set_params(root, {("split", "training_cohort"): "ds005917"})
    run([str(BIN / "dvc"), "repro", "split@acute"], root, env)
    split = json.loads((root / "data/processed/acute/split.json").read_text())
    assert (split["protocol"], split["train"]["n"], split["test"]["n"]) == ("small_cohort", 27, 0)
    # `python -m pipeline` from the project root runs the project's code (as dvc does), not the installed package
    stopped = subprocess.run(
        [str(BIN / "python"), "-m", "pipeline", "train", "acute"], cwd=root, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert stopped.returncode == 6, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    for number in (
        "27 patients",
        "6 of them with the outcome",
        "events per candidate parameter",
        "Riley et al. minimum",
    ):
        assert number in stopped.stderr
    assert "train.sample_size.override" in stopped.stderr
    set_params(root, {("train", "sample_size", "override"): True})
    run([str(BIN / "dvc"), "repro", "report@acute"], root, env)
    markdown = (root / "reports/acute/model_card.md").read_text(encoding="utf-8")
    assert "underpowered" in markdown.splitlines()[0]
    assert "**Underpowered.** Developed on 27 patients with 6 responders" in markdown
    tables_have_rows(card_data(root))
    check_card_data(card_data(root), root)
    models = registry(root, env)
    assert models["trd-acute-ds005917"]["champion"] is None  # an underpowered model never takes the alias
    assert models["trd-acute"]["champion"] == 1
