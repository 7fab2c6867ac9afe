"""Modelling: candidate estimators and their search, the selection rule, internal validation, calibration, the
spline design, SHAP contributions, the model bundle and its MLflow pyfunc.

Modules: :mod:`.params` (the ``train`` params), :mod:`.candidates`, :mod:`.selection`, :mod:`.validation`,
:mod:`.training` (the train stage's core), :mod:`.calibration`, :mod:`.design`, :mod:`.contributions`,
:mod:`.bundle` (save, load, verify), :mod:`.pyfunc` (the MLflow entry point, stored in every model as code).
Nothing is imported here, so the scorer loading a bundle does not pay for scikit-learn's search or MLflow.
"""
