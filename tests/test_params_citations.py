"""configs/params_citations.yaml covers params.yaml and survives `dvc exp run -S` (issue 16)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.params_citations import CITATIONS_FILE, Evidence, load_citations, numeric_leaves, problems, resolves
from tests.conftest import REPO_ROOT

PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
CITATIONS = load_citations(REPO_ROOT / CITATIONS_FILE)
LITERATURE = REPO_ROOT / "docs/literature.md"


def test_every_numeric_synthesize_value_is_cited_and_every_entry_names_a_param() -> None:
    assert problems(PARAMS, CITATIONS) == []


def test_a_renamed_param_or_a_new_uncited_value_is_reported() -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["synthesize"]["cohort"]["share_female"] = params["synthesize"]["cohort"].pop("female")
    found = problems(params, CITATIONS)
    assert "synthesize.cohort.female: names no param in params.yaml (renamed or removed?)" in found
    assert "synthesize.cohort.share_female: no citation entry covers this value" in found


def test_paths_name_list_items_by_name_pair_or_index() -> None:
    params = {"s": {"sites": [{"name": "a", "share": 0.5}], "corr": [["x", "y", 0.3]], "v": [0.1, 0.2]}}
    assert resolves(params, "s.sites.a.share")
    assert resolves(params, "s.corr.x~y")
    assert resolves(params, "s.v.1")
    assert not resolves(params, "s.sites.b")
    assert not resolves(params, "s.corr.y~x")
    assert not resolves(params, "s.v.2")
    leaves = set(numeric_leaves(params["s"], ("s",)))
    assert leaves == {("s", "sites", "a", "share"), ("s", "corr", "x~y", "2"), ("s", "v", "0"), ("s", "v", "1")}


def test_booleans_and_text_are_not_numeric_values() -> None:
    assert list(numeric_leaves({"flag": True, "name": "x", "date": "2023-01-01"})) == []


def test_an_entry_covers_everything_under_its_path() -> None:
    params = {"synthesize": {"dose": {"iv": {0.5: 0.6, 1.0: 0.4}}}}
    cited = {"synthesize.dose.iv": CITATIONS["synthesize.n_patients"]}
    assert problems(params, cited) == []
    assert problems(params, {}) == [
        "synthesize.dose.iv.0.5: no citation entry covers this value",
        "synthesize.dose.iv.1.0: no citation entry covers this value",
    ]


def test_entries_are_well_formed() -> None:
    assert {c.evidence for c in CITATIONS.values()} <= set(Evidence)
    assert all(c.cite is None or c.cite.startswith("lit §") for c in CITATIONS.values())


def test_a_malformed_entry_is_a_config_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "citations.yaml"
    bad.write_text("synthesize.n_patients: {cite: 'lit §8a', evidence: X}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"synthesize\.n_patients\.evidence") as caught:
        load_citations(bad)
    assert str(bad) in str(caught.value)


def test_params_yaml_keeps_no_citation_in_its_comments() -> None:
    # the citations file is the single source: a citation left in a comment would be lost by `dvc exp run -S`
    text = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    assert not re.findall(r"lit §|literature\.md|\((?:R|C|E)(?:[;,)]|\s)", text)


def test_every_cited_section_exists_in_the_literature_notes() -> None:
    headings = set(re.findall(r"^#+\s*(\d+[a-z]?)\.", LITERATURE.read_text(encoding="utf-8"), flags=re.MULTILINE))
    cited = {s for c in CITATIONS.values() if c.cite for s in re.findall(r"§(\d+[a-z]?)", c.cite)}
    assert cited - headings == set()


def test_dvc_set_param_rewrites_params_yaml_but_leaves_every_citation(tmp_path: Path) -> None:
    """`dvc exp run -S` applies its overrides with dvc.utils.hydra.apply_overrides; run that very writer."""
    pytest.importorskip("hydra")
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", params)
    (tmp_path / "configs").mkdir()
    citations = tmp_path / CITATIONS_FILE
    shutil.copy(REPO_ROOT / CITATIONS_FILE, citations)
    before = citations.read_bytes()

    apply_overrides(params, ["train.cv_folds=3", "synthesize.effect_scale=1.5"])

    rewritten = yaml.safe_load(params.read_text(encoding="utf-8"))
    assert rewritten["train"]["cv_folds"] == 3
    # DVC rewrites the whole file (reflowed; comments on list items such as sites and correlations dropped)
    assert params.read_bytes() != (REPO_ROOT / "params.yaml").read_bytes()
    assert citations.read_bytes() == before
    assert problems(rewritten, load_citations(citations)) == []
