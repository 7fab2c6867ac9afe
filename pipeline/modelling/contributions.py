"""Per-patient feature contributions (SHAP values on the log-odds scale), shared by the explain stage and
the scorer, so a clinician's "top drivers" and the reviewer's global importances come from one code path.

What is explained is the estimator that produces the score before any probability calibration:

* XGBoost: TreeSHAP through XGBoost's own ``pred_contribs`` (= ``shap.TreeExplainer``, docs/engineering.md §6);
* scikit-learn histogram gradient boosting: ``shap.TreeExplainer`` (path-dependent TreeSHAP);
* the logistic-regression pipelines: exact linear SHAP. After the design step and standard scaling the
  training mean of every transformed column is 0, so the interventional SHAP value against the training data is
  ``coef * z``; imputed values, missingness indicators and spline terms are credited to the clinical feature they
  belong to. A declared product ``u * v`` (``logreg_spline``, :mod:`pipeline.modelling.design`) is shared between
  its two features by the exact Shapley split of a two-feature term:
  ``phi_u = c/2 * [(u * mean(v) - mean(uv)) + (u * v - mean(u) * v)]`` and symmetrically for ``v``.

When the champion is wrapped in a calibrator (:class:`pipeline.modelling.calibration.CalibratedModel`, or scikit-learn's
``CalibratedClassifierCV`` in models saved before it), the calibrator is a monotone map of the explained model's
log-odds: it changes the probability scale, not the ranking of patients nor the direction in which a feature
pushes. Contributions are therefore reported on the explained model's log-odds (margin) scale, and every figure
says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

from pipeline.features import FeatureSpec
from pipeline.modelling.calibration import CalibratedModel
from pipeline.modelling.design import PRODUCT, SplineDesign

SCALE_NOTE = "SHAP values on the log-odds (margin) scale of the explained model"


@dataclass(frozen=True)
class Explained:
    """Contributions per canonical column (one-hot levels and missingness indicators summed)."""

    values: pd.DataFrame  # rows x canonical columns, log-odds
    base_value: np.ndarray  # per row (constant for tree and linear models)
    margin: np.ndarray  # the explained model's log-odds output: base_value + values.sum(axis=1)
    method: str  # how the values were computed, for reports


def explained_estimator(estimator: Any) -> tuple[Any, str]:
    """The estimator whose log-odds are explained, and how it relates to the reported probability."""
    if isinstance(estimator, CalibratedModel):
        return estimator.estimator_, f"{estimator.method} calibration of the explained log-odds (monotone)"
    if isinstance(estimator, CalibratedClassifierCV):
        if len(estimator.calibrated_classifiers_) != 1:
            # ensemble=True averages one calibrated model per fold: no single log-odds produces the score
            raise TypeError(
                f"no explanation path for a calibrated ensemble of {len(estimator.calibrated_classifiers_)} models "
                "(CalibratedClassifierCV(ensemble=True)); the pipeline trains with ensemble=False"
            )
        inner = estimator.calibrated_classifiers_[0].estimator
        return inner, f"{estimator.method} calibration (monotone) applied to the explained model's output"
    return estimator, "no calibration: the probability is the sigmoid of the explained log-odds"


def _linear_contributions(pipeline: Pipeline, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if isinstance(pipeline[0], SplineDesign):
        return _design_contributions(pipeline, X)
    transform, model = pipeline[:-1], pipeline[-1]
    Z = np.asarray(transform.transform(X), dtype="float64")
    names = list(transform.get_feature_names_out(list(X.columns)))
    coef = model.coef_.ravel()
    values = Z * coef  # the scaler centres every column at its training mean, so E_train[z] = 0
    base = np.full(len(X), float(model.intercept_[0]))
    return values, base, [_source_feature(name, X.columns) for name in names]


def _design_contributions(pipeline: Pipeline, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Exact SHAP of design -> scale -> logistic: one column per input feature, products split (Shapley)."""
    design, scaler, model = pipeline[0], pipeline[1], pipeline[-1]
    D = design.transform(X)
    weight = model.coef_.ravel() / scaler.scale_  # log-odds per unit of each design column
    centred = (D - scaler.mean_) * weight
    values = np.zeros((len(X), X.shape[1]))
    imputed = np.where(np.isnan(X.to_numpy(dtype="float64")), design.medians_, X.to_numpy(dtype="float64"))
    for j, term in enumerate(design.terms_):
        if term[0] != PRODUCT:
            values[:, term[1]] += centred[:, j]
            continue
        a, b = term[1], term[2]
        u, v = imputed[:, a], imputed[:, b]
        mean_u, mean_v, mean_uv = design.means_[a], design.means_[b], scaler.mean_[j]
        values[:, a] += weight[j] * 0.5 * ((u * mean_v - mean_uv) + (u * v - mean_u * v))
        values[:, b] += weight[j] * 0.5 * ((mean_u * v - mean_uv) + (u * v - u * mean_v))
    base = np.full(len(X), float(model.intercept_[0]))
    return values, base, list(X.columns)


def _source_feature(transformed: str, inputs: pd.Index) -> str:
    """Map an imputer output name (``x`` or ``missingindicator_x``) back to its input feature."""
    if transformed in inputs:
        return transformed
    prefix = "missingindicator_"
    if transformed.startswith(prefix) and transformed[len(prefix) :] in inputs:
        return transformed[len(prefix) :]
    raise ValueError(f"cannot map transformed feature '{transformed}' to an input feature")


def _tree_contributions(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    if type(model).__name__ == "XGBClassifier":
        import xgboost  # noqa: PLC0415 (only XGBoost models need it; the scorer of others never loads it)

        contribs = model.get_booster().predict(
            xgboost.DMatrix(X, missing=np.nan, feature_names=list(X.columns)), pred_contribs=True
        )
        return contribs[:, :-1].astype("float64"), contribs[:, -1].astype("float64"), "xgboost pred_contribs"
    if isinstance(model, HistGradientBoostingClassifier):
        import shap  # noqa: PLC0415 (slow import, numba; only this model type needs it, not the scorer)

        explainer = shap.TreeExplainer(model)
        values = np.asarray(explainer.shap_values(X), dtype="float64")
        base = np.full(len(X), float(np.ravel(explainer.expected_value)[0]))
        return values, base, "shap.TreeExplainer (path-dependent)"
    raise TypeError(f"no explanation path for {type(model).__name__}")


def explain(estimator: Any, X: pd.DataFrame, spec: FeatureSpec) -> Explained:
    """SHAP contributions of every row, aggregated onto the task's canonical columns."""
    model, calibration_note = explained_estimator(estimator)
    X = X[spec.feature_names]
    if isinstance(model, Pipeline):
        values, base, sources = _linear_contributions(model, X)
        method = "exact linear SHAP (interventional, training background)"
    else:
        values, base, method = _tree_contributions(model, X)
        sources = list(X.columns)
    to_column = spec.feature_to_column()
    columns = [c.name for c in spec.columns]
    aggregated = np.zeros((len(X), len(columns)), dtype="float64")
    index = {name: i for i, name in enumerate(columns)}
    for j, feature in enumerate(sources):
        aggregated[:, index[to_column[feature]]] += values[:, j]
    frame = pd.DataFrame(aggregated, index=X.index, columns=columns)
    return Explained(
        values=frame,
        base_value=base,
        margin=base + aggregated.sum(axis=1),
        method=f"{method}; {calibration_note}",
    )


def model_margin(estimator: Any, X: pd.DataFrame) -> np.ndarray:
    """The explained model's own log-odds output, to check additivity against."""
    model, _ = explained_estimator(estimator)
    if type(model).__name__ == "XGBClassifier":
        return np.asarray(model.predict(X, output_margin=True), dtype="float64")
    return np.asarray(model.decision_function(X), dtype="float64")


def top_drivers(explained: Explained, cohort: pd.DataFrame, spec: FeatureSpec, k: int) -> pd.DataFrame:
    """The ``k`` largest contributions per row, as readable text and as feature/contribution columns.

    Vectorised per feature rather than per row, because the scorer explains millions of rows: each phrase
    ("bmi 31.2 kg/m2 raises the probability") is built once per distinct value shown, and the rows' texts are
    joined by Arrow.
    """
    values = explained.values.to_numpy()
    k = min(k, values.shape[1])
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    columns = np.asarray(explained.values.columns)
    contribution = np.take_along_axis(values, order, axis=1)
    units = {c.name: c.unit for c in spec.columns}
    cohort = cohort.reset_index(drop=True)
    phrases: list[str] = []  # every distinct "feature value unit" phrase needed
    phrase_of = np.zeros(order.shape, dtype="int64")  # (row, rank) -> index into phrases
    for j in np.unique(order):
        feature = columns[j]
        hit = order == j  # a feature is at most one rank of a row
        rows, _ = np.nonzero(hit)
        codes, uniques = _distinct(cohort[feature].iloc[rows])
        shown = [*_display(uniques), _display(uniques.iloc[:0].reindex([0])).iloc[0]]  # the last: missing
        phrase_of[hit] = len(phrases) + np.where(codes >= 0, codes, len(uniques))
        phrases += [f"{feature.replace('_', ' ')} {value}{_unit(units.get(feature))}" for value in shown]
    directions = (" raises the probability", " lowers the probability")
    directed = pa.array([p + d for p in phrases for d in directions], type=pa.string())
    directed_of = 2 * phrase_of + (contribution < 0)
    out: dict[str, Any] = {}
    feature_names = pa.array(columns.tolist(), type=pa.string())
    for rank in range(k):
        out[f"driver_{rank + 1}_feature"] = _text(pc.take(feature_names, pa.array(order[:, rank])))
        out[f"driver_{rank + 1}_contribution"] = np.round(contribution[:, rank], 4)
    ranks = [pc.take(directed, pa.array(directed_of[:, rank])) for rank in range(k)]
    text = pc.binary_join_element_wise(*ranks, "; ") if k else pa.array([""] * len(order), type=pa.string())
    out["drivers"] = _text(text)
    return pd.DataFrame(out, index=explained.values.index)


def _text(strings: Any) -> Any:
    """Arrow strings as the column pandas itself makes of Python strings, without building the Python strings:
    its Arrow-backed ``str`` dtype (pandas 3) wraps the Arrow data; otherwise an object array."""
    dtype = pd.Series(["text"]).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return pd.array(strings.cast(pa.large_string()), dtype=dtype)
    return strings.to_numpy(zero_copy_only=False)


def _distinct(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Each value's position among the distinct values (-1: missing) and those values, in the same dtype.

    Floats are told apart by their bits, so that 0.0 and -0.0 (shown as "0.0" and "-0.0") stay apart.
    """
    if values.dtype == np.dtype("float64"):
        x = values.to_numpy()
        codes, bits = pd.factorize(x.view("int64"))
        codes[np.isnan(x)] = -1
        return codes, pd.Series(bits.view("float64"))
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes, pd.Series(uniques, dtype=values.dtype)


def _display(values: pd.Series) -> pd.Series:
    """Values as a clinician reads them: one decimal for numbers, yes/no for flags, 'missing' for gaps."""
    if pd.api.types.is_bool_dtype(values.dtype):
        shown = values.map({True: "yes", False: "no"}).astype("string")
    elif pd.api.types.is_float_dtype(values.dtype):
        shown = values.round(1).astype("string")
    else:
        shown = values.astype("string")
    return shown.fillna("missing").reset_index(drop=True)


def _unit(unit: str | None) -> str:
    return f" {unit}" if unit and unit not in ("count", "percent") else ""
