"""Stage ``explain@<task>``: SHAP explanations of a task's champion that a clinician can read and a scientist
can check against the truth planted in the synthetic cohort.

What is explained is the model that produces the score (:mod:`pipeline.contributions`, the same code path as
``trd score --explain``): XGBoost through its own TreeSHAP (``pred_contribs``), scikit-learn histogram gradient
boosting through ``shap.TreeExplainer``, the logistic-regression pipeline exactly (``coef * z`` after scaling).
Values are on the explained model's log-odds (margin) scale and are credited to the canonical clinical columns
(one-hot levels and missingness indicators summed), so a reader sees ``route``, never ``route=oral``. A
calibrated champion is explained before its calibrator; ``explanation.json`` says what the calibrator does to
the log-odds (for a sigmoid calibrator reading the log-odds: a slope and an intercept, so a value can be read on
the calibrated scale by one multiplication).

Checks that the explanations are right:

1. **Additivity**, for every test row: base value + SHAP values = the model's own margin. A violation stops the
   stage before anything is written (a wrong explanation is worse than none).
2. **Fidelity to the planted truth** (synthetic cohort), reported as metrics. The generator knows every
   patient's true contribution per feature to the true log-odds (its exact SHAP value,
   ``data/raw/synthetic/true_contributions.parquet``), so the champion's SHAP values are compared with it patient
   by patient on the same log-odds scale: per planted feature, the correlation across test patients between the
   SHAP value and the true contribution; over planted features only, the rank agreement of mean |SHAP| with mean
   |true contribution|; and the share of the model's total mean |SHAP| that lands on features with no planted
   effect (noise). Also: the sign of each planted predictor's dependence (value vs SHAP for numbers and flags,
   each level against the reference level for categories) and where the noise features rank. Only features the
   planted truth covers are compared: features outside it (the first-dose markers of ``course_early``) and
   features listed in ``explain.fidelity_exclude`` are reported, not scored. The reference is exact when the
   outcome's log-odds are exactly linear in the planted terms and the model sees no feature outside them;
   otherwise (``course_early``, whose model also sees the 24-h MADRS) it is approximate, and
   ``explanation.json`` says so.

Outputs: ``reports/<task>/explain/`` (fidelity.json = DVC metrics, explanation.json, importance.csv,
sign_checks.csv, figures/*.png; identifier-free: example patients are named by their 0-based row number in the
test split) is logged to the task's MLflow training run. ``data/explanations/<task>/shap.parquet`` holds every
test patient's values with ``patient_id`` and stays under ``data/``: it is never logged to MLflow.

Pure core: :func:`explain_task`. ``main`` reads params and files, writes both folders (each replaced as a
whole) and logs to MLflow when the training run can be found.

Layout: :mod:`.types` (params, constants, :class:`~.types.Explanation`) -> :mod:`.fidelity` and :mod:`.core`
(pure analysis; the planted truth is parsed by :mod:`pipeline.synthesize.planted`) -> :mod:`.plots` (pure figures)
-> :mod:`.main` (the thin stage: read, call the core, write, log to MLflow).
"""

from pipeline.explain.types import PARAMS_USED

__all__ = ["PARAMS_USED"]
