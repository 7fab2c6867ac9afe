"""TRD ketamine/esketamine response prediction: DVC stages, MLflow registry, batch scoring."""

__version__ = "0.1.0"
