"""MLflow "model from code" entry point: MLflow stores this file in the model and runs it to load the pyfunc.

Storing the model as code plus a skops file (instead of a cloudpickled Python object) keeps pickle out of
every model artifact. The pyfunc class lives here, not in ``pipeline.model``, so that the scorer, which loads
the skops file directly, does not pay for importing MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipeline.features import FeatureSpec
from pipeline.model import OUTPUT_COLUMN, ModelInfo, load_estimator, predict_proba


class ResponseModel(PythonModel):
    """The pyfunc: float64 features in, ``p_response`` out. Loaded from code, so no pickle is involved."""

    def load_context(self, context: Any) -> None:
        info = ModelInfo.model_validate_json(Path(context.artifacts["model_info"]).read_text(encoding="utf-8"))
        self.feature_spec = FeatureSpec.load(Path(context.artifacts["feature_spec"]))
        self.estimator = load_estimator(Path(context.artifacts["estimator"]), info.estimator_sha256)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        features = pd.DataFrame(model_input)[self.feature_spec.feature_names].astype("float64")
        return pd.DataFrame({OUTPUT_COLUMN: predict_proba(self.estimator, features)}, index=features.index)


mlflow.models.set_model(ResponseModel())
