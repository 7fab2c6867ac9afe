"""MLflow "model from code" entry point: MLflow stores this file in the model and runs it to load the pyfunc.

Storing the model as code plus a skops file (instead of a cloudpickled Python object) keeps pickle out of
every model artifact. The pyfunc class lives here, not in :mod:`pipeline.modelling.bundle`, so that the scorer,
which loads the skops file directly, does not pay for importing MLflow. A model saved by an earlier release stores
its own copy of the old entry point (``model_code.py``, importing ``pipeline.model``): retrain it to load it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from pipeline.features import FeatureSpec
from pipeline.modelling.bundle import OUTPUT_COLUMN, ModelInfo, load_estimator, predict_proba


class ResponseModel(PythonModel):
    """The pyfunc: float64 features in, ``p_response`` out. Loaded from code, so no pickle is involved."""

    def load_context(self, context: Any) -> None:
        info = ModelInfo.model_validate_json(Path(context.artifacts["model_info"]).read_text(encoding="utf-8"))
        self.feature_spec = FeatureSpec.load(Path(context.artifacts["feature_spec"]))
        self.estimator = load_estimator(Path(context.artifacts["estimator"]), info.estimator_sha256)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        names = self.feature_spec.feature_names
        missing = [name for name in names if name not in frame.columns]
        if missing:
            # the signature marks every column optional (a value may be missing), so MLflow lets a missing column
            # through; a column is still required, empty or not. INVALID_PARAMETER_VALUE: a 400 from a server.
            raise MlflowException(
                f"the input lacks {len(missing)} of the model's {len(names)} feature column(s): "
                f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}. The pyfunc takes the float64 feature "
                "matrix (one-hot columns such as route=iv_racemic), not the clinic export: build it with "
                "`trd features INPUT -o features.csv` (a column may be empty where values are missing).",
                error_code=INVALID_PARAMETER_VALUE,
            )
        features = frame[names].astype("float64")
        return pd.DataFrame({OUTPUT_COLUMN: predict_proba(self.estimator, features)}, index=features.index)


mlflow.models.set_model(ResponseModel())
