"""MLflow "model from code" entry point: MLflow stores this file in the model and runs it to load the pyfunc.

Storing the model as code plus a skops file (instead of a cloudpickled Python object) keeps pickle out of
every model artifact.
"""

import mlflow

from pipeline.model import ResponseModel

mlflow.models.set_model(ResponseModel())
