"""The design matrix of the ``logreg_spline`` candidate: smooth terms and a few declared pairwise interactions
for an L2 logistic model, the classical clinical-prediction way (Harrell, Regression Modeling Strategies, §2.4).

Per input feature column (the float64 features of :mod:`pipeline.features`), after median imputation:

* every column enters linearly;
* a continuous column (more than two distinct training values) also gets restricted cubic spline terms with
  knots at Harrell's quantiles of its distinct training values (linear beyond the outer knots, so scores far out
  of the training range extrapolate linearly rather than wildly);
* a continuous column with a point mass at its minimum (at least ``spike_share`` of the rows, e.g. "no
  benzodiazepine") gets an indicator of being above it, so the jump from "none" to "some" need not be smoothed;
* a column with missing values in training gets a missingness indicator;
* each declared interaction ``(a, b)`` of canonical features adds the products of their columns (a category
  contributes each one-hot level), e.g. ``route x age`` or ``madrs_24h x madrs_baseline``.

Every output column is credited to one input column (linear, spline, spike, missing) or to two (a product);
``terms_`` records which, so :mod:`pipeline.modelling.contributions` computes exact SHAP values. The object holds only
numbers, strings and lists, so skops stores and loads it without pickle (``pipeline.modelling.bundle.TRUSTED_TYPES``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from pipeline.features import LEVEL_SEPARATOR

# Harrell's default knot quantiles (RMS, table 2.3) by number of knots
KNOT_QUANTILES: dict[int, tuple[float, ...]] = {
    3: (0.10, 0.50, 0.90),
    4: (0.05, 0.35, 0.65, 0.95),
    5: (0.05, 0.275, 0.50, 0.725, 0.95),
}
LINEAR, SPLINE, SPIKE, MISSING, PRODUCT = "linear", "spline", "spike", "missing", "product"


def rcs_basis(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Restricted cubic spline terms (k knots -> k - 2 columns), scaled by the squared knot range; linear beyond
    the outer knots (Harrell's parametrisation, the linear term excluded)."""
    k = len(knots)
    t_last, t_prev = knots[-1], knots[-2]
    scale = (knots[-1] - knots[0]) ** 2
    out = np.empty((len(x), k - 2))
    for j in range(k - 2):
        out[:, j] = (
            np.maximum(x - knots[j], 0.0) ** 3
            - np.maximum(x - t_prev, 0.0) ** 3 * (t_last - knots[j]) / (t_last - t_prev)
            + np.maximum(x - t_last, 0.0) ** 3 * (t_prev - knots[j]) / (t_last - t_prev)
        ) / scale
    return out


def columns_of(feature: str, names: list[str]) -> list[int]:
    """Positions of a canonical feature's columns: the column itself, or its one-hot levels."""
    return [i for i, name in enumerate(names) if name == feature or name.startswith(f"{feature}{LEVEL_SEPARATOR}")]


class SplineDesign(TransformerMixin, BaseEstimator):
    """Linear, spline, point-mass, missingness and declared-product columns (see the module docstring)."""

    def __init__(self, n_knots: int = 4, spike_share: float = 0.2, interactions: Any = ()) -> None:
        self.n_knots = n_knots
        self.spike_share = spike_share
        self.interactions = interactions

    def fit(self, X: pd.DataFrame, y: Any = None) -> SplineDesign:
        if self.n_knots not in KNOT_QUANTILES:
            raise ValueError(f"n_knots must be one of {sorted(KNOT_QUANTILES)}")
        values = np.asarray(X, dtype="float64")
        names = [str(c) for c in X.columns] if hasattr(X, "columns") else [f"x{i}" for i in range(values.shape[1])]
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = len(names)
        observed = ~np.isnan(values)
        with np.errstate(all="ignore"):
            medians = np.where(observed.any(axis=0), np.nanmedian(np.where(observed, values, np.nan), axis=0), 0.0)
        self.medians_ = np.nan_to_num(medians, nan=0.0)
        imputed = np.where(observed, values, self.medians_)
        self.means_ = imputed.mean(axis=0)  # of the imputed columns: what a product's SHAP values are centred on
        terms: list[list[Any]] = []
        knots: list[list[float]] = []
        spikes: list[float] = []
        for i, name in enumerate(names):
            terms.append([LINEAR, i])
            column = values[observed[:, i], i]
            distinct = np.unique(column)
            if LEVEL_SEPARATOR in name or distinct.size <= 2:
                continue
            low = distinct[0]
            if np.mean(column == low) >= self.spike_share:
                spikes.append(float(low))
                terms.append([SPIKE, i, len(spikes) - 1])
            # knots at quantiles of the distinct values, so a point mass cannot collapse them
            positions = np.unique(np.quantile(distinct, KNOT_QUANTILES[self.n_knots]))
            if positions.size >= 3:
                knots.append(positions.tolist())
                terms += [[SPLINE, i, len(knots) - 1, j] for j in range(positions.size - 2)]
        for i in np.flatnonzero(~observed.all(axis=0)):
            terms.append([MISSING, int(i)])
        pairs = []
        for a, b in self.interactions:
            left, right = columns_of(str(a), names), columns_of(str(b), names)
            if left and right:  # a pair whose features this task does not have is left out
                pairs.append([str(a), str(b)])
                terms += [[PRODUCT, i, j] for i in left for j in right]
        self.interactions_used_ = pairs
        self.knots_ = knots
        self.spikes_ = spikes
        self.terms_ = terms
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        values = np.asarray(X, dtype="float64")
        missing = np.isnan(values)
        imputed = np.where(missing, self.medians_, values)
        out = np.empty((len(values), len(self.terms_)))
        basis_cache: dict[int, np.ndarray] = {}
        for position, term in enumerate(self.terms_):
            kind, i = term[0], term[1]
            if kind == LINEAR:
                out[:, position] = imputed[:, i]
            elif kind == SPIKE:
                out[:, position] = imputed[:, i] > self.spikes_[term[2]]
            elif kind == SPLINE:
                if term[2] not in basis_cache:
                    basis_cache[term[2]] = rcs_basis(imputed[:, i], np.asarray(self.knots_[term[2]]))
                out[:, position] = basis_cache[term[2]][:, term[3]]
            elif kind == MISSING:
                out[:, position] = missing[:, i]
            else:
                out[:, position] = imputed[:, i] * imputed[:, term[2]]
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = list(self.feature_names_in_)
        labels = []
        for term in self.terms_:
            kind, i = term[0], term[1]
            if kind == LINEAR:
                labels.append(names[i])
            elif kind == SPIKE:
                labels.append(f"{names[i]}>{self.spikes_[term[2]]:g}")
            elif kind == SPLINE:
                labels.append(f"{names[i]}_rcs{term[3] + 1}")
            elif kind == MISSING:
                labels.append(f"missingindicator_{names[i]}")
            else:
                labels.append(f"{names[i]}*{names[term[2]]}")
        return np.asarray(labels, dtype=object)

    def sources(self) -> list[tuple[int, ...]]:
        """Per output column, the input column(s) it is computed from (two for a product)."""
        return [(t[1], t[2]) if t[0] == PRODUCT else (t[1],) for t in self.terms_]
