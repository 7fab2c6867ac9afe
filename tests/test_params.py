from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError, ExitCode
from pipeline.params import (
    BaseParams,
    load_section,
    parse_section,
    read_params_file,
    section_model,
    validate_params,
)
from tests.conftest import REPO_ROOT


def test_repository_params_have_a_valid_base_section() -> None:
    raw = read_params_file(REPO_ROOT / "params.yaml")
    assert parse_section(BaseParams, raw, "base", "params.yaml").seed >= 0


def test_bad_value_names_the_param_and_the_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_section(BaseParams, {"base": {"seed": -3}}, "base", "params.yaml")
    assert "base.seed" in str(info.value)
    assert "-3" in str(info.value)
    assert info.value.exit_code == ExitCode.CONFIG


def test_unknown_key_and_missing_section_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"base\.sede"):
        parse_section(BaseParams, {"base": {"seed": 1, "sede": 2}}, "base", "params.yaml")
    with pytest.raises(ConfigError, match="missing section 'base'"):
        parse_section(BaseParams, {}, "base", "params.yaml")


def test_unreadable_params_file(tmp_path: Path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("base: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_section(BaseParams, "base", broken)
    with pytest.raises(ConfigError, match="not found"):
        load_section(BaseParams, "base", tmp_path / "absent.yaml")


def test_every_section_of_the_repository_params_validates_against_its_model() -> None:
    parsed = validate_params(REPO_ROOT / "params.yaml")
    assert set(parsed) == set(read_params_file(REPO_ROOT / "params.yaml"))  # no section without a model
    for section, model in parsed.items():
        assert isinstance(model, section_model(section)), section


def test_an_unknown_section_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO_ROOT / "params.yaml").read_text(encoding="utf-8") + "\ntrian:\n  cv_folds: 5\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trian'\]") as info:
        validate_params(params_file)
    assert "train" in str(info.value)
    with pytest.raises(ConfigError, match="unknown params section 'trian'"):
        section_model("trian")
