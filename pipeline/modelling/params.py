"""The ``train`` section of params.yaml: candidates, selection rule, gate, risk bands, internal validation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.modelling.calibration import CalibrationName
from pipeline.params import Frozen
from pipeline.protocol import SampleSizeParams

CandidateName = Literal["logreg", "logreg_spline", "xgboost", "hist_gb"]
SelectionMetric = Literal["log_loss", "brier"]
SelectionRule = Literal["best", "one_se"]
# the metrics internal validation corrects for optimism (risk scale)
VALIDATED_METRICS = ("auroc", "calibration_slope", "calibration_in_the_large", "brier")


class CandidateParams(Frozen):
    search_iterations: int = Field(ge=1, le=500, description="Random-search budget (whole grid if smaller).")
    grid: dict[str, list[float | int | str]] = Field(min_length=1)
    interactions: list[tuple[str, str]] = Field(
        default_factory=list, description="logreg_spline only: pairs of canonical features whose products enter."
    )


class GateParams(Frozen):
    min_cv_auroc_lower: float = Field(ge=0.0, le=1.0, description="Lower 95 % bound of the CV AUROC.")
    calibration_slope: tuple[float, float] = Field(description="Allowed range of the CV calibration slope.")

    @model_validator(mode="after")
    def _ordered(self) -> GateParams:
        if not self.calibration_slope[0] < self.calibration_slope[1]:
            raise ValueError("calibration_slope must be [low, high] with low < high")
        return self


class RiskBandParams(Frozen):
    name: str
    upper: float = Field(gt=0.0, le=1.0)


class SelectionParams(Frozen):
    """How the champion is chosen from the candidates' cross-validated predictions (declared before any test data)."""

    metric: SelectionMetric = Field(description="Per-patient loss of the calibrated out-of-fold predictions.")
    rule: SelectionRule = Field(description="best: lowest mean loss; one_se: simplest within se_multiplier SE.")
    se_multiplier: float = Field(default=1.0, ge=0.0, le=5.0, description="Width of the tie band, in paired SEs.")
    simplicity_order: list[CandidateName] = Field(min_length=1, description="Simplest first; ties go to the first.")

    @model_validator(mode="after")
    def _distinct(self) -> SelectionParams:
        if len(set(self.simplicity_order)) != len(self.simplicity_order):
            raise ValueError("simplicity_order lists a candidate twice")
        return self


class InternalValidationParams(Frozen):
    bootstrap_repetitions: int = Field(ge=20, le=2000, description="Harrell bootstrap refits of the champion.")
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0)


class TrainParams(Frozen):
    cv_folds: int = Field(ge=2, le=20)
    selection: SelectionParams
    calibration_methods: list[CalibrationName] = Field(min_length=1)
    cv_bootstrap_repetitions: int = Field(ge=50, le=10000, description="For the CV AUROC interval (gate).")
    n_jobs: int = Field(ge=1, le=64)
    candidates: dict[CandidateName, CandidateParams] = Field(min_length=1)
    internal_validation: InternalValidationParams
    sample_size: SampleSizeParams = Field(default_factory=SampleSizeParams)
    # a cross-validation fold with fewer events (or non-events) than this gives no usable calibration or AUROC:
    # a small cohort gets fewer folds, down to 2, and is refused below that
    min_fold_events: int = Field(default=3, ge=1, le=50)
    gate: GateParams
    risk_bands: list[RiskBandParams] = Field(min_length=1)

    @model_validator(mode="after")
    def _bands(self) -> TrainParams:
        uppers = [b.upper for b in self.risk_bands]
        if uppers != sorted(uppers) or len(set(uppers)) != len(uppers) or uppers[-1] != 1.0:
            raise ValueError("risk_bands must have increasing 'upper' values ending at 1.0")
        return self

    @model_validator(mode="after")
    def _selection(self) -> TrainParams:
        unordered = sorted(set(self.candidates) - set(self.selection.simplicity_order))
        if unordered:
            raise ValueError(f"selection.simplicity_order must list every candidate (missing: {unordered})")
        with_pairs = sorted(n for n, c in self.candidates.items() if c.interactions and n != "logreg_spline")
        if with_pairs:
            raise ValueError(f"only logreg_spline takes interactions (not {with_pairs})")
        return self
