"""README "Adding a cohort", followed step by step in a throw-away git + DVC copy of the project: two cohorts in
layouts the project's own sources do not use (tests/data/cohorts/), added by configuration alone, through
`dvc repro clean`, their counts checked against values computed by hand (tests/data/cohorts/README.md).

Slow (about half a minute: synthesize, fetch and clean run under DVC): `make test-fast` skips it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_dvc_yaml import undeclared_source_files

pytestmark = pytest.mark.slow

MIRROR = Path(os.environ.get("TRD_DATA_MIRROR") or REPO_ROOT.parent / "shared" / "datasets")
BIN = Path(sys.executable).parent
COHORTS = REPO_ROOT / "tests" / "data" / "cohorts"
PLACEHOLDER = "/path/to/kap_trial.csv"  # where README's reader keeps the export


def walkthrough_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block in README's "Adding a cohort" steps, in order, unindented."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Adding a cohort", 1)[1].split("**Which cohorts train", 1)[0]
    blocks = re.findall(r"^( *)```(\w+)\n(.*?)^\1```$", section, flags=re.MULTILINE | re.DOTALL)
    return [(lang, "".join(line[len(indent) :] for line in text.splitlines(True))) for indent, lang, text in blocks]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def add_clean_dep(root: Path, dep: str) -> None:
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    dvc["stages"]["clean"]["deps"].append(dep)
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if not (MIRROR / "ds005917" / "participants.tsv").is_file():
        pytest.skip("no ds005917 mirror (set TRD_DATA_MIRROR or put ../shared/datasets beside the project)")
    root = tmp_path_factory.mktemp("cohorts") / "project"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file() and not name.startswith("tests/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synthesize"]["n_patients"] = 600  # clean is what is tested; the synthetic source only has to exist
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "TRD_PROJECT_ROOT"))}
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "cohorts"), ("EMAIL", "cohorts@localhost"))}  # fmt: skip
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "TRD_DATA_MIRROR": str(MIRROR), **identity}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        run(cmd, root, env)

    (_, version), (config_lang, config), (_, params_block), (_, dep_block), (run_lang, run_block) = walkthrough_blocks()
    # step 1: the README's commands, with the fixture standing in for the reader's export
    assert PLACEHOLDER in version
    run(["bash", "-euc", version.replace(PLACEHOLDER, str(COHORTS / "kap_trial" / "export.csv"))], root, env)
    # step 2: the README's config is the fixture's, word for word
    assert config_lang == "yaml"
    assert config == (COHORTS / "kap_trial" / "kap_trial.yaml").read_text(encoding="utf-8")
    (root / "configs" / "sources" / "kap_trial.yaml").write_text(config, encoding="utf-8")
    # step 3: the params entry and the dvc.yaml dependency
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["clean"]["sources"] = yaml.safe_load(params_block)["clean"]["sources"]
    add_clean_dep(root, yaml.safe_load(dep_block)[0])
    # the long-format cohort, the same way (its export left unversioned: a dependency is enough for DVC)
    shutil.copy(COHORTS / "esk_clinic" / "esk_clinic.yaml", root / "configs" / "sources" / "esk_clinic.yaml")
    (root / "exports" / "esk_clinic").mkdir(parents=True)
    shutil.copy(COHORTS / "esk_clinic" / "visits.csv", root / "exports" / "esk_clinic" / "visits.csv")
    params["clean"]["sources"].append("esk_clinic")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    add_clean_dep(root, "exports/esk_clinic/visits.csv")
    # step 4
    assert (run_lang, run_block.strip()) == ("bash", "dvc repro clean")
    run(["bash", "-euc", run_block], root, env)
    return root, env


def test_the_walkthrough_leaves_every_source_file_a_dependency_of_clean(project) -> None:
    root, _ = project
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["clean"]["sources"] == ["synthetic", "ds005917", "kap_trial", "esk_clinic"]
    assert undeclared_source_files(root, dvc, params) == []
    assert (root / "exports" / "kap_trial" / "export.csv.dvc").is_file()  # versioned by `dvc add`


def test_one_row_per_patient_on_a_scale_without_a_madrs_conversion(project) -> None:
    root, _ = project
    report = json.loads((root / "reports" / "cleaning.json").read_text())["sources"]["kap_trial"]
    assert (report["rows_in"], report["rows_kept"], report["rows_quarantined"]) == (8, 6, 2)
    assert report["quarantined_by_reason"] == {"impossible_value": 1, "unknown_code": 1}
    # response (drop >= 50 %), remission (< 5) and sustained response on PHQ-9 itself
    assert report["outcomes"] == {
        "response_end": {"known": 5, "positive": 4},
        "remission_end": {"known": 5, "positive": 1},
        "sustained_week8": {"known": 4, "positive": 3},
    }
    assert report["not_on_madrs"] == {"phq9": {"madrs_baseline": 6, "madrs_end": 5, "madrs_week8": 4}}
    assert report["raw_columns_unused"] == {"exports/kap_trial/export.csv": ["comments"]}
    assert "losses" not in report
    cohort = pd.read_parquet(root / "data" / "interim" / "cohort.parquet")
    trial = cohort[cohort["cohort"] == "kap_trial"].set_index("patient_id")
    assert sorted(trial.index) == ["1", "2", "3", "4", "5", "8"]
    assert set(trial["route"]) == {"iv_racemic"}  # the constants
    assert set(trial["dose"]) == {0.5}
    assert set(trial["n_sessions"]) == {6}
    assert set(trial["madrs_source_scale"]) == {"phq9"}
    assert trial["madrs_baseline"].isna().all()  # PHQ-9 points are never MADRS points
    assert trial.loc["4", "response_end"]  # PHQ-9 16 -> 8: a 50 % drop
    assert not trial.loc["4", "remission_end"]  # 8 is not < 5
    assert trial.loc["3", "remission_end"]  # PHQ-9 4 < 5
    assert trial["psychotherapy"].to_dict() == {
        "1": "structured_kap", "2": "none", "3": "structured_kap", "4": "none", "5": "structured_kap", "8": "none",
    }  # fmt: skip


def test_a_long_visit_table_is_pivoted_without_promoting_a_later_visit(project) -> None:
    root, _ = project
    report = json.loads((root / "reports" / "cleaning.json").read_text())["sources"]["esk_clinic"]
    assert (report["rows_in"], report["rows_kept"], report["rows_quarantined"]) == (7, 4, 3)  # patients
    assert report["quarantined_by_reason"] == {"impossible_value": 1, "inconsistent": 1, "missing_baseline": 1}
    assert report["adapter"]["visits"] == {
        "file": "exports/esk_clinic/visits.csv",
        "rows_in": 24,
        "dispositions": {
            "used": 13, "unmapped_visit": 2, "duplicate": 1, "conflict": 4, "missing_id": 1, "no_baseline": 3,
        },
        "unmapped_visits": {"SCR": 1, "W2": 1},
    }  # fmt: skip
    assert report["outcomes"] == {
        "response_end": {"known": 3, "positive": 2},
        "remission_end": {"known": 3, "positive": 0},
        "sustained_week8": {"known": 3, "positive": 2},
    }
    cohort = pd.read_parquet(root / "data" / "interim" / "cohort.parquet")
    clinic = cohort[cohort["cohort"] == "esk_clinic"].set_index("patient_id")
    assert sorted(clinic.index) == ["E01", "E04", "E05", "E06"]  # E02 (age 250 at D0) is not rebuilt from W4
    by_visit = ["madrs_baseline", "madrs_24h", "cadss_peak_first", "madrs_end", "madrs_week8"]
    assert clinic.loc["E01", by_visit].tolist() == [32.0, 20.0, 10.0, 14.0, 15.0]
    assert pd.isna(clinic.loc["E05", "madrs_week8"])  # two different W8 ratings: neither is used
    quarantine = pd.read_parquet(root / "data" / "interim" / "quarantine.parquet")
    patients = quarantine[quarantine["source"] == "esk_clinic"].set_index("patient_id")
    assert patients.loc["E02", "reason_code"] == "impossible_value"
    assert patients.loc["E03", "message"] == (
        "no row at a baseline visit (visit 'D0'); a later visit is never used as the baseline: its 2 row(s) "
        "(visits W4, W8) are not used"
    )
    rows = pd.read_parquet(root / "data" / "interim" / "quarantine_measurements.parquet")
    rows = rows[rows["source"] == "esk_clinic"]
    assert rows["reason_code"].value_counts().to_dict() == {"inconsistent": 4, "duplicate_record": 1, "missing_id": 1}


def test_every_row_is_accounted_for_and_editing_an_export_reruns_clean(project) -> None:
    root, env = project
    report = json.loads((root / "reports" / "cleaning.json").read_text())
    cohort = pd.read_parquet(root / "data" / "interim" / "cohort.parquet")
    quarantine = pd.read_parquet(root / "data" / "interim" / "quarantine.parquet")
    for name, source in report["sources"].items():
        assert source["rows_in"] == source["rows_kept"] + source["rows_quarantined"], name
    assert len(cohort) + len(quarantine) == report["total"]["rows_in"]
    assert "clean" not in run([str(BIN / "dvc"), "status", "clean"], root, env).stdout
    export = root / "exports" / "esk_clinic" / "visits.csv"
    export.write_text(export.read_text().replace("E06,W2", "E06,W4"))
    assert "exports/esk_clinic/visits.csv" in run([str(BIN / "dvc"), "status", "clean"], root, env).stdout
