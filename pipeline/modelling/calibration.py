"""Probability calibration: one implementation for choosing a calibrator in cross-validation and for the model
that is shipped, so the metrics the selection and the registry gate read are those of the deployed calibrator.

Every calibrator reads the classifier's log-odds, ``logit(p)`` (for every candidate exactly its margin, up to the
clip at :data:`PROB_EPS`), and is fitted on out-of-fold predictions:

* ``sigmoid``: logistic recalibration by maximum likelihood, ``p' = sigmoid(slope * logit(p) + intercept)``, a
  linear map of the log-odds (Platt scaling without Platt's label smoothing);
* ``isotonic``: a non-decreasing step-and-ramp function of the log-odds (linear interpolation between the fitted
  points, clipped beyond them);
* ``none``: the identity.

:class:`CalibratedModel` is the shipped estimator: the candidate refitted on the whole training split and the
calibrator fitted on that candidate's out-of-fold probabilities from the same shuffled, stratified folds the
selection used. It stores only numbers and the fitted candidate, so skops loads it from the trusted-types list
(``pipeline.modelling.bundle.TRUSTED_TYPES``), and SHAP explains its ``estimator_`` with the calibrator as a
monotone map of the explained log-odds (``pipeline.modelling.contributions``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict

CalibrationName = Literal["none", "sigmoid", "isotonic"]
PROB_EPS = 1e-6
# maximum likelihood in practice: a penalty this weak moves the fitted slope by far less than its standard error
_UNPENALISED_C = 1e6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype="float64"), PROB_EPS, 1 - PROB_EPS)
    return np.log(p / (1 - p))


def fit_calibrator(method: str, p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The calibrator of ``method`` fitted on probabilities ``p`` and outcomes ``y``, as plain numbers."""
    if method == "none":
        return {"method": "none"}
    z = logit(p)[:, None]
    if method == "sigmoid":
        model = LogisticRegression(C=_UNPENALISED_C, max_iter=1000).fit(z, y)
        return {"method": "sigmoid", "slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(z[:, 0], y)
        return {
            "method": "isotonic",
            "x": np.asarray(iso.X_thresholds_, dtype="float64"),
            "y": np.asarray(iso.y_thresholds_, dtype="float64"),
        }
    raise ValueError(f"unknown calibration method '{method}'")


def apply_calibrator(calibrator: dict[str, Any], p: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (clipped to [PROB_EPS, 1 - PROB_EPS] so log loss stays finite)."""
    method = calibrator["method"]
    p = np.asarray(p, dtype="float64")
    if method == "none":
        out = p
    elif method == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-(calibrator["slope"] * logit(p) + calibrator["intercept"])))
    elif method == "isotonic":
        out = np.interp(logit(p), calibrator["x"], calibrator["y"])  # clips beyond the ends, as out_of_bounds
    else:
        raise ValueError(f"unknown calibration method '{method}'")
    return np.clip(out, PROB_EPS, 1 - PROB_EPS)


def calibrate(method: str, p_fit: np.ndarray, y_fit: np.ndarray, p_apply: np.ndarray) -> np.ndarray:
    """Fit on (p_fit, y_fit), apply to p_apply: what cross-validation of a calibrator does per fold."""
    return apply_calibrator(fit_calibrator(method, p_fit, y_fit), p_apply)


def folds(n_splits: int, seed: int, *, grouped: bool = False) -> StratifiedKFold | StratifiedGroupKFold:
    """The shuffled, stratified folds of every cross-validation in training (grouped: a bootstrap sample's
    copies of one patient stay in one fold, so out-of-fold predictions never see the patient they predict)."""
    if grouped:
        return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def out_of_fold(
    estimator: BaseEstimator, X: Any, y: np.ndarray, *, n_splits: int, seed: int, groups: np.ndarray | None = None,
    n_jobs: int = 1,
) -> np.ndarray:  # fmt: skip
    """Out-of-fold P(y = 1) of ``estimator`` over :func:`folds`."""
    splitter = folds(n_splits, seed, grouped=groups is not None)
    predicted = cross_val_predict(
        clone(estimator), X, y, groups=groups, cv=splitter, method="predict_proba", n_jobs=n_jobs
    )
    return predicted[:, 1]


class CalibratedModel(ClassifierMixin, BaseEstimator):
    """A classifier refitted on all the data and a calibrator of its log-odds fitted out of fold.

    ``fit`` computes the out-of-fold probabilities over :func:`folds` (``cv_folds``, ``seed``) unless they are
    given (the train stage passes the ones its selection already computed, from the same folds), fits the
    calibrator on them, then refits ``estimator`` on everything.
    """

    def __init__(self, estimator: Any = None, method: str = "sigmoid", cv_folds: int = 5, seed: int = 0) -> None:
        self.estimator = estimator
        self.method = method
        self.cv_folds = cv_folds
        self.seed = seed

    def fit(
        self, X: Any, y: np.ndarray, *, oof: np.ndarray | None = None, groups: np.ndarray | None = None,
        n_jobs: int = 1,
    ) -> CalibratedModel:  # fmt: skip
        y = np.asarray(y)
        if oof is None:
            oof = out_of_fold(
                self.estimator, X, y, n_splits=self.cv_folds, seed=self.seed, groups=groups, n_jobs=n_jobs
            )
        self.set_calibrator(fit_calibrator(self.method, oof, y))
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.classes_ = np.asarray(self.estimator_.classes_)
        return self

    def set_calibrator(self, calibrator: dict[str, Any]) -> None:
        # plain attributes (floats and float arrays), so the stored model holds no extra object types
        self.calibrator_method_ = str(calibrator["method"])
        self.calibrator_slope_ = float(calibrator.get("slope", 1.0))
        self.calibrator_intercept_ = float(calibrator.get("intercept", 0.0))
        self.calibrator_x_ = np.asarray(calibrator.get("x", np.empty(0)), dtype="float64")
        self.calibrator_y_ = np.asarray(calibrator.get("y", np.empty(0)), dtype="float64")

    @property
    def calibrator(self) -> dict[str, Any]:
        """The fitted calibrator in :func:`fit_calibrator`'s form."""
        if self.calibrator_method_ == "sigmoid":
            return {"method": "sigmoid", "slope": self.calibrator_slope_, "intercept": self.calibrator_intercept_}
        if self.calibrator_method_ == "isotonic":
            return {"method": "isotonic", "x": self.calibrator_x_, "y": self.calibrator_y_}
        return {"method": "none"}

    def predict_proba(self, X: Any) -> np.ndarray:
        p = apply_calibrator(self.calibrator, self.estimator_.predict_proba(X)[:, 1])
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
