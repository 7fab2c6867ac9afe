"""Input layouts: configs/sources/canonical.yaml is the contract's predictors as they are, checked against the
contract when loaded, and not a cohort; --format names any other tabular source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.contract import CohortContract, load_contract
from pipeline.errors import ConfigError, ExitCode, PipelineError
from pipeline.paths import ProjectPaths
from pipeline.scoring.layout import CANONICAL_FORMAT, input_format, load_canonical_format, required_columns
from pipeline.sources.spec import CategoricalMap, TabularSourceSpec
from tests.conftest import REPO_ROOT

CANONICAL = REPO_ROOT / "configs" / "sources" / "canonical.yaml"
BOOLEAN_CODES = {"true": ["1", "yes", "y", "true", "t"], "false": ["0", "no", "n", "false", "f"]}


def from_contract(contract: CohortContract) -> TabularSourceSpec:
    """The layout as the scorer built it in code before it was a file: every predictor under its own name, each
    level accepting its name and the contract's aliases, site as free text."""
    predictors = contract.with_role("baseline_predictor", "early_predictor")
    categorical = {
        c.name: CategoricalMap(canonical=c.name, codes=c.accepted_codes()) for c in predictors if c.dtype == "category"
    }
    categorical["site"] = CategoricalMap(canonical="site", passthrough=True)
    return TabularSourceSpec(
        name=CANONICAL_FORMAT, kind="tabular_export",
        description="Canonical cohort columns (configs/cohort_schema.yaml).",
        files={}, id_column="patient_id", duplicate_order=["file_order"],
        numeric={c.name: c.name for c in predictors if c.dtype in ("float", "int")}, categorical=categorical,
        boolean_codes=BOOLEAN_CODES, boolean={c.name: c.name for c in predictors if c.dtype == "bool"},
    )  # fmt: skip


def edited(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(CANONICAL.read_text(encoding="utf-8"))
    change(raw)
    path = tmp_path / "canonical.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_canonical_layout_is_the_contract_s_predictors_as_they_are(contract: CohortContract) -> None:
    assert load_canonical_format(CANONICAL, contract) == from_contract(contract)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw["numeric"].pop("crp_mg_l"), "crp_mg_l: missing; every predictor"),
        (lambda raw: raw["numeric"].update(age_years=raw["numeric"].pop("age")), "age_years: renamed to age"),
        (lambda raw: raw["numeric"].update(response_acute="response_acute"), "response_acute: not a predictor"),
        (lambda raw: raw["categorical"]["route"]["codes"].pop("oral"), "categorical.route.codes: levels"),
        (lambda raw: raw.update(name="clinic"), "the canonical layout is named 'canonical'"),
        (lambda raw: raw.update(duplicate_order=["updated_at"]), "duplicate_order: 'updated_at' needs"),
    ],
)
def test_a_canonical_layout_that_drifts_from_the_contract_is_refused(
    tmp_path, contract: CohortContract, change, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        load_canonical_format(edited(tmp_path, change), contract)
    assert error.value.exit_code == ExitCode.CONFIG
    assert "canonical.yaml" in str(error.value)


def test_an_outcome_in_the_canonical_layout_is_refused(tmp_path, contract: CohortContract) -> None:
    """An outcome as input would leak the future into a score: it is not a predictor, so it is refused."""
    path = edited(tmp_path, lambda raw: raw["boolean"].update(remission_acute="remission_acute"))
    with pytest.raises(ConfigError, match="remission_acute: not a predictor"):
        load_canonical_format(path, contract)


def test_the_canonical_layout_is_not_a_cohort() -> None:
    levels = load_contract(REPO_ROOT / "configs" / "cohort_schema.yaml").column("cohort").levels
    assert CANONICAL_FORMAT not in levels
    assert "scoring_input" in levels


def test_unknown_format_lists_every_layout_once(contract: CohortContract) -> None:
    paths = ProjectPaths(REPO_ROOT)
    with pytest.raises(PipelineError, match="unknown input format 'clinic'") as error:
        input_format("clinic", paths.configs, paths, contract)
    assert error.value.exit_code == ExitCode.USAGE
    assert "use one of: canonical, ds005917, synthetic" in str(error.value)


def test_required_columns_are_the_raw_names_of_the_needed_columns(contract: CohortContract) -> None:
    paths = ProjectPaths(REPO_ROOT)
    synthetic = input_format("synthetic", paths.configs, paths, contract)
    assert required_columns(synthetic, ["age", "bmi", "madrs_baseline"]) == [
        "patient_ref", "age_years", "bmi", "score_baseline", "scale",
    ]  # fmt: skip
    canonical = input_format(CANONICAL_FORMAT, paths.configs, paths, contract)
    assert required_columns(canonical, ["age", "madrs_baseline"]) == ["patient_id", "age", "madrs_baseline"]
