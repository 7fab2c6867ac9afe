"""The depression-scale registry, read from configs/scale_conversions.yaml: every scale the project knows.

Each scale has its valid range, its response rule and remission threshold, and, where a published linking exists,
a linear conversion towards MADRS. Everything that names scales derives from this one file: the source-config
checks (pipeline/sources/check.py), the levels of ``madrs_source_scale`` (pipeline/contract.py), harmonisation's
range checks, conversions and outcome rules (pipeline/harmonise.py), and the synthetic generator's recorded scores.
Adding a scale is a config edit with its citations, no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.params import format_errors

ScaleKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
Citation = Annotated[str, Field(min_length=10)]  # the published source itself: authors, year, title or DOI


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinearConversion(_Frozen):
    """``to = slope * score + intercept``: one step towards MADRS."""

    to: ScaleKey
    slope: float = Field(gt=0)  # positive: a higher score is always more severe
    intercept: float
    source: Citation


class ResponseRule(_Frozen):
    """Response: the score drops by at least ``min_reduction`` (a fraction) from baseline."""

    min_reduction: float = Field(gt=0, le=1)
    source: Citation


class RemissionRule(_Frozen):
    """Remission: the score is at most ``at_most``, or strictly below ``below`` (as the source defines it)."""

    at_most: float | None = None
    below: float | None = None
    source: Citation

    @model_validator(mode="after")
    def _one_threshold(self) -> RemissionRule:
        if (self.at_most is None) == (self.below is None):
            raise ValueError("give exactly one of 'at_most' (score <= value) or 'below' (score < value)")
        return self

    def met(self, scores: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return scores <= self.at_most if self.at_most is not None else scores < self.below


class Scale(_Frozen):
    label: str = Field(min_length=1)  # as clinicians write it (messages, reports)
    range: tuple[float, float]
    range_source: Citation
    response: ResponseRule
    remission: RemissionRule
    conversion: LinearConversion | None = None  # None: no published linking to MADRS (scores are not converted)

    @model_validator(mode="after")
    def _range_ordered(self) -> Scale:
        if self.range[0] >= self.range[1]:
            raise ValueError(f"range {list(self.range)}: the minimum must be below the maximum")
        return self


class ScaleConversions(_Frozen):
    """The registry. ``target`` is the scale the cohort's ``madrs_*`` columns hold (MADRS)."""

    target: ScaleKey
    scales: dict[ScaleKey, Scale] = Field(min_length=1)

    @model_validator(mode="after")
    def _paths_are_sound(self) -> ScaleConversions:
        if self.target not in self.scales:
            raise ValueError(f"target '{self.target}' is not among scales {sorted(self.scales)}")
        if self.scales[self.target].conversion is not None:
            raise ValueError(f"the target scale '{self.target}' cannot have a conversion")
        for name, scale in self.scales.items():
            if scale.conversion is not None and scale.conversion.to not in self.scales:
                raise ValueError(f"scales.{name}.conversion.to: '{scale.conversion.to}' is not a scale here")
        for name in self.scales:  # a chain of conversions must end at the target or at a scale without one
            seen = {name}
            current = self.scales[name].conversion
            while current is not None:
                if current.to in seen:
                    raise ValueError(f"conversion cycle through {current.to}")
                seen.add(current.to)
                current = self.scales[current.to].conversion
        return self

    @property
    def names(self) -> list[str]:
        return list(self.scales)

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        return {name: scale.range for name, scale in self.scales.items()}

    def _path(self, scale: str) -> list[LinearConversion] | None:
        """The conversions from ``scale`` to the target, in order; None when there is no path."""
        path: list[LinearConversion] = []
        current = scale
        while current != self.target:
            step = self.scales[current].conversion
            if step is None:
                return None
            path.append(step)
            current = step.to
        return path

    def convertible(self, scale: str) -> bool:
        """Whether scores on ``scale`` can be put on the target scale (the target itself included)."""
        return self._path(scale) is not None

    def to_madrs(self, values: np.ndarray, scale: str) -> np.ndarray:
        """Convert totals recorded on ``scale`` onto MADRS by chaining the linear conversions."""
        path = self._path(scale)
        if path is None:
            raise ValueError(f"{scale} has no conversion to {self.target}")
        out = np.asarray(values, dtype="float64")
        for step in path:
            out = step.slope * out + step.intercept
        return out

    def madrs_to(self, values: np.ndarray, scale: str) -> np.ndarray:
        """Inverse of :meth:`to_madrs` (used by the synthetic generator to record other scales)."""
        path = self._path(scale)
        if path is None:
            raise ValueError(f"{scale} has no conversion to {self.target}")
        out = np.asarray(values, dtype="float64")
        for step in reversed(path):
            out = (out - step.intercept) / step.slope
        return out


def load_scale_conversions(path: Path) -> ScaleConversions:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return ScaleConversions.model_validate(raw)
    except FileNotFoundError:
        raise ConfigError(
            "scale registry not found", file=path, hint="restore configs/scale_conversions.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=path) from None
    except ValidationError as exc:
        raise ConfigError(format_errors(exc), file=path) from None
