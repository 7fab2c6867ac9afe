"""Depression-scale ranges and conversions onto MADRS, read from configs/scale_conversions.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.params import format_errors

ScaleName = Literal["madrs", "hamd17", "qids_sr16"]


class LinearConversion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    to: ScaleName
    slope: float
    intercept: float
    source: str


class ScaleConversions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Literal["madrs"]
    ranges: dict[ScaleName, tuple[float, float]]
    conversions: dict[ScaleName, LinearConversion]

    @model_validator(mode="after")
    def _reaches_target(self) -> ScaleConversions:
        for scale in self.ranges:
            seen = {scale}
            current = scale
            while current != self.target:
                if current not in self.conversions:
                    raise ValueError(f"no conversion path from {scale} to {self.target}")
                current = self.conversions[current].to
                if current in seen:
                    raise ValueError(f"conversion cycle through {current}")
                seen.add(current)
        return self

    def to_madrs(self, values: np.ndarray, scale: str) -> np.ndarray:
        """Convert totals recorded on ``scale`` onto MADRS by chaining the linear conversions."""
        out = np.asarray(values, dtype="float64")
        current = scale
        while current != self.target:
            step = self.conversions[current]  # type: ignore[index]
            out = step.slope * out + step.intercept
            current = step.to
        return out

    def madrs_to(self, values: np.ndarray, scale: str) -> np.ndarray:
        """Inverse of :meth:`to_madrs` (used by the synthetic generator to record other scales)."""
        path = []
        current = scale
        while current != self.target:
            path.append(self.conversions[current])  # type: ignore[index]
            current = self.conversions[current].to  # type: ignore[index]
        out = np.asarray(values, dtype="float64")
        for step in reversed(path):
            out = (out - step.intercept) / step.slope
        return out


def load_scale_conversions(path: Path) -> ScaleConversions:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return ScaleConversions.model_validate(raw)
    except FileNotFoundError:
        raise ConfigError("scale conversion file not found", file=path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path) from None
    except ValidationError as exc:
        raise ConfigError(format_errors(exc), file=path) from None
