"""The scale registry (configs/scale_conversions.yaml): one place for every scale, from which the contract's
``madrs_source_scale`` levels, the source-config checks and the outcome rules derive; a broken entry is refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.contract import load_contract
from pipeline.errors import ConfigError
from pipeline.outcomes import REMISSION_MAX_MADRS, RESPONSE_FRACTION
from pipeline.scales import ScaleConversions, load_scale_conversions
from pipeline.sources.check import load_tabular_spec
from tests.conftest import REPO_ROOT

REGISTRY = REPO_ROOT / "configs" / "scale_conversions.yaml"


def test_every_scale_has_its_rules_and_sources(scales: ScaleConversions) -> None:
    assert scales.names == ["madrs", "hamd17", "qids_sr16", "phq9"]
    for scale in scales.scales.values():
        assert all((scale.range_source, scale.response.source, scale.remission.source))
    assert [name for name in scales.names if not scales.convertible(name)] == ["phq9"]


def test_madrs_rules_agree_with_what_the_generator_plants(scales: ScaleConversions) -> None:
    madrs = scales.scales["madrs"]
    assert 1 - madrs.response.min_reduction == RESPONSE_FRACTION
    assert madrs.remission.at_most == REMISSION_MAX_MADRS


def test_the_contract_s_scale_levels_are_the_registry_s(contract, scales: ScaleConversions) -> None:
    assert contract.column("madrs_source_scale").levels == tuple(scales.names)


def test_conversions_chain_and_invert(scales: ScaleConversions) -> None:
    qids = np.array([0.0, 10.0, 27.0])
    madrs = scales.to_madrs(qids, "qids_sr16")
    assert madrs == pytest.approx(1.315 * (1.254 * qids + 0.45) - 0.25)
    assert scales.madrs_to(madrs, "qids_sr16") == pytest.approx(qids)
    with pytest.raises(ValueError, match="phq9 has no conversion to madrs"):
        scales.to_madrs(qids, "phq9")


def test_remission_below_is_strict_and_at_most_is_not(scales: ScaleConversions) -> None:
    assert scales.scales["phq9"].remission.met(np.array([4.0, 5.0])).tolist() == [True, False]
    assert scales.scales["madrs"].remission.met(np.array([10.0, 11.0])).tolist() == [True, False]


def _variant(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    change(raw)
    path = tmp_path / "scale_conversions.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["scales"]["phq9"].pop("range_source"), "scales.phq9.range_source: Field required"),
        (lambda r: r["scales"]["phq9"]["remission"].pop("source"), "scales.phq9.remission.source: Field required"),
        (
            lambda r: r["scales"]["phq9"]["remission"].update(at_most=4),
            "give exactly one of 'at_most' (score <= value) or 'below' (score < value)",
        ),
        (
            lambda r: r["scales"]["hamd17"]["conversion"].update(to="madrs2"),
            "scales.hamd17.conversion.to: 'madrs2' is not a scale here",
        ),
        (lambda r: r["scales"]["hamd17"]["conversion"].update(to="qids_sr16"), "conversion cycle through"),
        (lambda r: r.update(target="hamd17"), "the target scale 'hamd17' cannot have a conversion"),
        (lambda r: r["scales"]["phq9"].update(range=[27, 0]), "the minimum must be below the maximum"),
        (lambda r: r["scales"]["phq9"]["response"].update(min_reduction=1.5), "less than or equal to 1"),
    ],
)
def test_a_broken_registry_entry_is_refused(tmp_path: Path, change, message: str) -> None:
    path = _variant(tmp_path, change)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_scale_conversions(path)
    assert str(path) in str(info.value)


def test_a_new_scale_is_a_config_edit(tmp_path: Path) -> None:
    """BDI-II, with its conversion onto HAM-D17: a level of madrs_source_scale and usable by a source at once."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "configs", configs)
    raw = yaml.safe_load((configs / "scale_conversions.yaml").read_text(encoding="utf-8"))
    raw["scales"]["bdi2"] = {
        "label": "BDI-II",
        "range": [0, 63],
        "range_source": "Beck AT, Steer RA, Brown GK. BDI-II manual. 1996 (21 items x 0-3)",
        "response": {"min_reduction": 0.5, "source": "a cited response definition"},
        "remission": {"at_most": 13, "source": "a cited remission definition"},
        "conversion": {"to": "hamd17", "slope": 0.54, "intercept": 2.86, "source": "a cited linking study"},
    }
    (configs / "scale_conversions.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    assert "bdi2" in load_contract(configs / "cohort_schema.yaml").column("madrs_source_scale").levels
    source = yaml.safe_load((REPO_ROOT / "tests/data/cohorts/kap_trial/kap_trial.yaml").read_text(encoding="utf-8"))
    source["depression_scores"]["scale"] = "bdi2"
    path = configs / "sources" / "kap_trial.yaml"
    path.write_text(yaml.safe_dump(source), encoding="utf-8")
    assert load_tabular_spec(path).depression_scores.scale == "bdi2"
    registry = load_scale_conversions(configs / "scale_conversions.yaml")
    assert registry.convertible("bdi2")


def test_a_missing_registry_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scale registry not found") as info:
        load_scale_conversions(tmp_path / "nope.yaml")
    assert info.value.hint == "restore configs/scale_conversions.yaml"
