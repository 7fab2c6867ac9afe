"""Stage ``evaluate@<task>``: validate a task's models the way clinical prediction models are validated.

What is measured, all with :mod:`pipeline.metrics`:

1. **Held-out test split** (the champion and every candidate): AUROC and AUPRC with seeded bootstrap intervals,
   Brier and scaled Brier, calibration-in-the-large (log-odds intercept with the slope fixed to 1, and observed −
   expected on the risk scale), calibration slope with the recalibration intercept, ECE, a binned calibration
   curve with Wilson intervals; for the champion also a threshold table (sensitivity, specificity, PPV, NPV, NNE,
   net benefit) and a decision curve against treat-all and treat-none.
2. **Two references from the synthetic ground truth**, scored on the same test patients and against the same
   (cleaned, complete-case) labels as the model: the *generating probability* (``evaluate.oracle``: the true
   P(outcome | predictors and site), the ceiling of the data-generating process) and the *predictors-only
   probability* (``evaluate.oracle_predictors``: the site marginalised, the best any model of the task's own
   predictors can reach). Neither is the exact optimum for the scored labels: cleaning changes a few labels
   (their agreement with the generator's outcome is reported) and only patients with a known outcome are scored.
   A model that beats the generating probability beyond noise (the lower bound of the paired bootstrap interval of
   model AUROC − its AUROC above 0) can only be reading information it should not have, so the stage stops with a
   :class:`~pipeline.errors.PipelineError` rather than publish leaked performance.
3. **Internal validation** of the champion on all the training data (Harrell's bootstrap optimism correction,
   computed by the train stage and copied from ``reports/<task>/cv_metrics.json`` so it sits beside the test
   split's figures).
4. **Subgroups** (sex, age band, route, site, psychotherapy): n, event rate, AUROC, O − E and ratios to overall,
   with small-cell suppression.
5. **External validation** on the real NIMH cohort (ds005917) for tasks whose target it records: discrimination,
   rank correlation with the continuous MADRS change, calibration-in-the-large, and the saline period as a
   negative control, with a plain-text statement of what 27 patients can and cannot show.

Pure core: :func:`evaluate_task` (frames, models and typed params in, an :class:`Evaluation` out) and the
functions it calls. ``main`` reads params and files, writes ``reports/<task>/evaluation/`` (one folder, replaced
atomically) and logs metrics and figures to the task's MLflow training run when it can find it.

Intervals: percentile bootstrap seeded from ``base.seed`` (the same resamples for every model, so comparisons
are paired). Discrimination metrics resample events and non-events separately (every resample keeps both
classes); Brier-type metrics resample patients as a whole, so their intervals include the sampling variability
of the prevalence that calibration depends on. Calibration intercept and slope get Wald intervals from the
model-based standard errors of the recalibration fit (Van Calster et al. 2019), which, unlike a
prevalence-stratified bootstrap, reflect the uncertainty in the observed event rate.

Layout: :mod:`.types` (params, constants, :class:`~.types.Evaluation`) -> :mod:`.performance` and :mod:`.external`
(pure analysis) -> :mod:`.core` (:func:`~.core.evaluate_task`) -> :mod:`.plots` (pure figures) -> :mod:`.main` (the thin
stage: read, call the core, write, log to MLflow).
"""

from pipeline.evaluate.types import PARAMS_USED

__all__ = ["PARAMS_USED"]
