"""Evaluation metrics for clinical prediction models with a binary outcome.

Pure functions: arrays or frames in, floats, frozen dataclasses or DataFrames out. No I/O, no global state; every
random step takes an explicit seed. The evaluate stage and the model card use these functions; the definitions
follow the clinical-prediction literature rather than the machine-learning defaults where the two differ.

Conventions used throughout
---------------------------
* ``y`` is the observed outcome coded 0/1 (1 = response); ``p`` is the predicted probability of ``y = 1``.
* Bad input (different lengths, missing values, a non-binary outcome, a probability outside [0, 1]) raises
  :class:`~pipeline.errors.PipelineError` naming the argument and the first offending position. Bad settings
  (``n_bins``, ``level``, thresholds, ``min_cell``…) raise :class:`~pipeline.errors.ConfigError`.
* A metric that is *undefined* for valid data (AUROC when one class is absent, PPV when nobody is flagged, a
  calibration slope when the recalibration model has no finite maximum-likelihood estimate) is ``NaN``, never an
  error, so that a bootstrap or a subgroup table can count and skip it.
* Logit-based quantities clip probabilities to ``[PROB_CLIP, 1 - PROB_CLIP]`` (1e-6, logits ±13.8) before taking
  logits: a prediction of exactly 0 or 1 would otherwise give an infinite logit, and one such patient could
  dominate the recalibration fit. Metrics on the probability scale (Brier, O − E, ECE, net benefit) are unclipped.
* A patient is *flagged* (test positive) at threshold ``t`` when ``p >= t``.

References
----------
* Steyerberg EW, Vickers AJ, Cook NR, et al. Assessing the performance of prediction models: a framework for
  traditional and novel measures. Epidemiology 2010;21:128-38.
* Van Calster B, McLernon DJ, van Smeden M, et al. Calibration: the Achilles heel of predictive analytics.
  BMC Med 2019;17:230. (Calibration intercept with logit(p) as offset; slope from logit P(y=1) = a + b·logit(p).)
* Vickers AJ, Elkin EB. Decision curve analysis. Med Decis Making 2006;26:565-74. (Net benefit.)
* Riley RD, Ensor J, Snell KIE, et al. Calculating the sample size required for developing a clinical prediction
  model. BMJ 2020;368:m441; Riley RD, Snell KIE, Ensor J, et al. Stat Med 2019;38:1276-96 (Part II).
* Riley RD, Van Calster B, Collins GS. A note on estimating the Cox-Snell R² from a reported C statistic (AUROC)
  to inform sample size calculations for developing a prediction model with a binary outcome. Stat Med
  2021;40:859-64.
* Wilson EB. Probable inference, the law of succession, and statistical inference. JASA 1927;22:209-12.
* Bonett DG, Wright TA. Sample size requirements for estimating Pearson, Kendall and Spearman correlations.
  Psychometrika 2000;65:23-8. (Standard error of Fisher's z for Spearman's rho.)
* Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement. BMJ 2024;385:e078378.

Modules
-------
* :mod:`.inputs`: input checks, array helpers, types, ``PROB_CLIP``;
* :mod:`.discrimination`: AUROC, AUPRC, Brier and scaled Brier; DeLong's interval for few events;
* :mod:`.calibration`: O − E, logistic recalibration (intercept, slope), calibration curve, ECE, Wilson intervals;
* :mod:`.utility`: threshold table, net benefit, decision curve;
* :mod:`.bootstrap`: single and paired percentile bootstrap;
* :mod:`.summary`: headline metrics and the subgroup (fairness) table;
* :mod:`.external`: Spearman's rho against a continuous outcome;
* Riley et al. minimum development sample size: re-exported from :mod:`pipeline.sample_size` (the train gate owns it).

Everything public is re-exported here, so ``from pipeline import metrics; metrics.auroc(...)`` works as before.
"""

from pipeline.metrics.bootstrap import BootstrapCI, PairedBootstrapCI, bootstrap_ci, paired_bootstrap_difference
from pipeline.metrics.calibration import (
    LogisticRecalibration,
    calibration_curve,
    calibration_in_the_large,
    calibration_slope,
    expected_calibration_error,
    logistic_recalibration,
    observed_minus_expected,
    wilson_ci,
)
from pipeline.metrics.discrimination import DeLongCI, auprc, auroc, brier_score, delong_ci, scaled_brier_score
from pipeline.metrics.external import CorrelationCI, spearman_ci
from pipeline.metrics.inputs import PROB_CLIP, BinStrategy, FloatArray, Metric
from pipeline.metrics.summary import DEFAULT_MIN_CELL, performance_summary, subgroup_table
from pipeline.metrics.utility import decision_curve, net_benefit, threshold_table
from pipeline.sample_size import RileySampleSize, r2_cox_snell_from_c_statistic, riley_sample_size

__all__ = [
    "DEFAULT_MIN_CELL",
    "PROB_CLIP",
    "BinStrategy",
    "BootstrapCI",
    "CorrelationCI",
    "DeLongCI",
    "FloatArray",
    "LogisticRecalibration",
    "Metric",
    "PairedBootstrapCI",
    "RileySampleSize",
    "auprc",
    "auroc",
    "bootstrap_ci",
    "brier_score",
    "calibration_curve",
    "calibration_in_the_large",
    "calibration_slope",
    "decision_curve",
    "delong_ci",
    "expected_calibration_error",
    "logistic_recalibration",
    "net_benefit",
    "observed_minus_expected",
    "paired_bootstrap_difference",
    "performance_summary",
    "r2_cox_snell_from_c_statistic",
    "riley_sample_size",
    "scaled_brier_score",
    "spearman_ci",
    "subgroup_table",
    "threshold_table",
    "wilson_ci",
]
