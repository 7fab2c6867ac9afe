"""Readings: what an interval says, in words, never beyond it. Pure functions of the gathered inputs.

The card states no result of its own in numbers in prose: these phrases word where an interval lies relative to
its null value, and the numbers stay in the tables beside them.
"""

from __future__ import annotations

from pipeline.report.format import finite, interval_reading
from pipeline.report.inputs import CardInputs


def discrimination(inputs: CardInputs) -> str:
    m, split, vocab = inputs.metrics, f"the {inputs.development_name} test split", inputs.task_spec.outcome
    return interval_reading(
        m.get("test.auroc_lower"),
        m.get("test.auroc_upper"),
        0.5,
        below=f"the champion ranks the patients of {split} worse than chance (its AUROC interval lies below 0.5)",
        inside=f"the champion cannot be distinguished from chance on {split} (its AUROC interval includes 0.5)",
        above=f"the champion ranks {vocab.events} above {vocab.non_events} better than chance on {split} (its AUROC "
        "interval lies above 0.5)",
        missing="the test AUROC has no interval, so it cannot be interpreted",
    )


def oracle(inputs: CardInputs) -> str:
    """Against the predictors-only reference (what these predictors allow) when there is one, else the
    generating probability."""
    m = inputs.metrics
    if m.get("gap_predictors") is not None:
        return interval_reading(
            m.get("gap_predictors.auroc_lower"),
            m.get("gap_predictors.auroc_upper"),
            0.0,
            below="the champion ranks patients less well than the predictors-only reference (the best probability "
            "these predictors allow): the paired interval of the AUROC difference lies below 0, so the predictors "
            "hold information this model misses",
            inside="the champion cannot be distinguished from the predictors-only reference (the best probability "
            "these predictors allow): the paired interval of the AUROC difference includes 0, so little is left to "
            "gain from these predictors",
            above="the champion ranks patients better than the predictors-only reference beyond noise: possible only "
            "through information the reference lacks (cleaned labels differ from the generator's for a few patients, "
            "and only patients with a known outcome are scored) or through leakage",
            missing="the difference from the predictors-only reference has no interval",
        )
    if m.get("gap") is None:
        reason = inputs.evaluation.get("oracle.reason") or "the oracle was unavailable"
        if not inputs.synthetic_development and inputs.held_out:  # the generator knows nothing of this cohort
            reason = f"{inputs.development_name} has no synthetic truth"
        return f"no comparison with the oracle: {reason}"
    return interval_reading(
        m.get("gap.auroc_lower"),
        m.get("gap.auroc_upper"),
        0.0,
        below="the champion ranks patients less well than the generating probability (which also knows the site): "
        "the paired interval of the AUROC difference lies below 0",
        inside="the champion cannot be distinguished from the generating probability: the paired interval of the "
        "AUROC difference includes 0",
        above="the champion ranks patients better than the generating probability beyond noise, which only leakage "
        "can explain",
        missing="the difference from the oracle has no interval",
    )


def internal(inputs: CardInputs) -> str:
    """What the optimism-corrected figures say, in words, and how the held-out split compares."""
    m = inputs.metrics
    if m.get("internal_validation.auroc") is None:
        return "no internal validation of the whole development sample is recorded"
    slope = interval_reading(
        m.get("internal_validation.calibration_slope.corrected_lower"),
        m.get("internal_validation.calibration_slope.corrected_upper"),
        1.0,
        below="its calibration slope interval lies below 1 (predictions too extreme once optimism is removed)",
        inside="its calibration slope interval includes 1",
        above="its calibration slope interval lies above 1 (predictions too moderate)",
        missing="its calibration slope has no interval",
    )
    corrected = m.get("internal_validation.auroc.corrected")
    lower, upper = m.get("test.auroc_lower"), m.get("test.auroc_upper")
    agreement = (
        "the held-out AUROC interval contains the optimism-corrected AUROC"
        if all(finite(v) for v in (corrected, lower, upper)) and float(lower) <= float(corrected) <= float(upper)
        else "the held-out AUROC interval does not contain the optimism-corrected AUROC: one held-out split is noisy, "
        "and the bootstrap may under-correct a flexible model"
    )
    corrected_lower = m.get("internal_validation.auroc.corrected_lower")
    above = finite(corrected_lower) and float(corrected_lower) > 0.5
    return (
        f"the optimism-corrected AUROC interval {'lies above 0.5' if above else 'includes 0.5'}; {slope}; {agreement}"
    )


def calibration(inputs: CardInputs) -> str:
    m, rate = inputs.metrics, inputs.task_spec.outcome.rate
    slope = interval_reading(
        m.get("test.calibration_slope_lower"),
        m.get("test.calibration_slope_upper"),
        1.0,
        below="the calibration slope interval lies below 1: predictions are too extreme (over-fitting)",
        inside="the calibration slope interval includes 1: no evidence of over- or under-fitting",
        above="the calibration slope interval lies above 1: predictions are too moderate (under-fitting)",
        missing="the calibration slope has no interval",
    )
    in_the_large = interval_reading(
        m.get("test.calibration_in_the_large_lower"),
        m.get("test.calibration_in_the_large_upper"),
        0.0,
        below=f"calibration-in-the-large lies below 0: on average the model over-predicts the {rate}",
        inside="calibration-in-the-large includes 0: the average predicted probability matches the observed rate",
        above=f"calibration-in-the-large lies above 0: on average the model under-predicts the {rate}",
        missing="calibration-in-the-large has no interval",
    )
    return f"{slope}; {in_the_large}"


def external(inputs: CardInputs) -> str:
    report = inputs.external_report()
    if not report.get("available"):
        return f"no external validation for this task ({report.get('reason', 'not run')})"
    return interval_reading(
        inputs.metrics.get("external.auroc_lower"),
        inputs.metrics.get("external.auroc_upper"),
        0.5,
        below="on the real trial patients the model ranks worse than chance (the AUROC interval lies below 0.5)",
        inside="the real cohort neither supports nor refutes the model: its AUROC interval includes 0.5",
        above="on the real trial patients the AUROC interval lies above 0.5, consistent with better-than-chance "
        "ranking; with so few events the size of the effect is uncertain",
        missing="the external AUROC has no interval (too few events or non-events), so it cannot be interpreted",
    )


def all_readings(inputs: CardInputs) -> dict[str, str]:
    """Every reading the templates show, each a phrase (templates capitalise it where a sentence starts)."""
    return {
        "internal": internal(inputs),
        "discrimination": discrimination(inputs),
        "oracle": oracle(inputs),
        "calibration": calibration(inputs),
        "external": external(inputs),
    }
