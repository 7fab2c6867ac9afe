"""The explanation's figures: pure functions from an :class:`Explanation` to a matplotlib figure (saved by
:mod:`pipeline.figures`)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import shap

from pipeline.explain.types import (
    DEPENDENCE_BINS,
    LOG_ODDS,
    ROLE_EFFECT,
    ROLE_EXCLUDED,
    ROLE_NOISE,
    ROLE_NOT_COVERED,
    WATERFALL_MAX_DISPLAY,
    Explanation,
)
from pipeline.figures import new_figure


def _title(result: Explanation) -> str:
    return f"{result.task}: {result.candidate} champion"


def _display_matrix(result: Explanation) -> np.ndarray:
    """Feature values per canonical column for colouring: numbers and 0/1 flags; categories NaN (drawn grey)."""
    matrix = np.full(result.values.shape, np.nan)
    for j, column in enumerate(result.spec.columns):
        if column.kind != "categorical":
            matrix[:, j] = result.features[column.name].to_numpy(dtype="float64")
    return matrix


def _display_text(result: Explanation, row: int) -> np.ndarray:
    """A patient's values as a reader sees them: numbers to one decimal, yes/no, category levels, 'missing'."""
    texts = []
    features = result.features.iloc[row]
    for column in result.spec.columns:
        if column.kind == "categorical":
            hot = [level for level in column.levels if features[f"{column.name}={level}"] == 1]
            texts.append(hot[0] if hot else "missing")
            continue
        value = float(features[column.name])
        if math.isnan(value):
            texts.append("missing")
        elif column.kind == "binary":
            texts.append("yes" if value == 1 else "no")
        else:
            texts.append(f"{value:.1f}".removesuffix(".0"))
    return np.array(texts, dtype=object)


def _shap_explanation(result: Explanation, rows: np.ndarray) -> Any:
    return shap.Explanation(
        values=result.values.to_numpy()[rows],
        base_values=result.base_value[rows],
        data=_display_matrix(result)[rows],
        feature_names=list(result.values.columns),
    )


def importance_figure(result: Explanation) -> Any:
    """Mean |SHAP| per canonical feature over every test row (shap's bar plot)."""
    n_features = result.values.shape[1]
    figure = new_figure(7.5, 0.32 * n_features + 1.6)
    axes = figure.subplots()
    everyone = np.arange(len(result.values))
    shap.plots.bar(_shap_explanation(result, everyone), max_display=n_features + 1, ax=axes, show=False)
    axes.set_xlabel(f"mean |{LOG_ODDS}| per patient")
    axes.set_title(f"{_title(result)}: global importance, {len(everyone)} test patients", fontsize=11)
    return figure


def beeswarm_figure(result: Explanation) -> Any:
    """Every sampled patient's SHAP value per feature, coloured by the feature's value (shap's beeswarm)."""
    n_features = result.values.shape[1]
    figure = new_figure(8.0, 0.36 * n_features + 1.8)
    axes = figure.subplots()
    explanation = _shap_explanation(result, result.sample_rows)
    # shap's beeswarm jitters with NumPy's global generator: seed it for byte-identical figures, then restore it
    state = np.random.get_state()  # noqa: NPY002
    np.random.seed(result.seed % 2**32)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            # categories are drawn grey through an all-NaN colour column, which NumPy warns about
            warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
            shap.plots.beeswarm(
                explanation, max_display=n_features, ax=axes, show=False, plot_size=None,
                color_bar_label="feature value (grey: category or missing)",
            )  # fmt: skip
    finally:
        np.random.set_state(state)  # noqa: NPY002
    axes.set_xlabel(f"{LOG_ODDS}: > 0 raises the predicted probability of response")
    axes.set_title(f"{_title(result)}: {len(result.sample_rows)} test patients", fontsize=11)
    return figure


def _planted_text(result: Explanation, feature: str) -> str | None:
    """What the planted truth says about ``feature``, for the corner of its dependence plot."""
    if result.truth is None or result.fidelity is None:
        return None
    role = result.fidelity.roles.set_index("feature").loc[feature, "fidelity_role"]
    if role == ROLE_EFFECT:
        terms = [t for t in result.truth.terms if feature in t.features and t.coefficient != 0]
        return "planted log-odds: " + "; ".join(f"{t.name} {t.coefficient:+g}" for t in terms)
    return {
        ROLE_NOISE: "planted: no effect (noise feature)",
        ROLE_EXCLUDED: "left out of the fidelity checks (explain.fidelity_exclude)",
        ROLE_NOT_COVERED: "no planted coefficient (outside the planted truth)",
    }[role]


def dependence_figure(result: Explanation, feature: str) -> Any:
    """SHAP value against the feature's value on the sampled rows; missing values in their own strip."""
    column = next(c for c in result.spec.columns if c.name == feature)
    rows = result.sample_rows
    shap_values = result.values[feature].to_numpy()[rows]
    rng = np.random.default_rng(result.seed)  # jitter only; seeded so the figure is reproducible
    figure = new_figure(6.5, 4.4)
    if column.kind == "numeric":
        x = result.features[feature].to_numpy(dtype="float64")[rows]
        known = ~np.isnan(x)
        if (~known).any():
            axes, missing_axes = figure.subplots(1, 2, sharey=True, width_ratios=[6, 1])
            missing_axes.scatter(rng.uniform(-0.3, 0.3, (~known).sum()), shap_values[~known], s=6, alpha=0.4)
            missing_axes.set(xlim=(-1, 1), xticks=[0], xticklabels=[f"missing\n(n={(~known).sum()})"])
        else:
            axes = figure.subplots()
        axes.scatter(x[known], shap_values[known], s=6, alpha=0.4, label="patient")
        if known.sum() >= DEPENDENCE_BINS:
            bins = np.array_split(np.argsort(x[known], kind="stable"), DEPENDENCE_BINS)
            centres = [x[known][b].mean() for b in bins]
            means = [shap_values[known][b].mean() for b in bins]
            axes.plot(centres, means, color="C3", marker="o", linewidth=1.5, label="mean per decile of the value")
            axes.legend(fontsize=7, loc="best")
        axes.set_xlabel(f"{feature} ({column.unit})" if column.unit else feature)
    else:
        axes = figure.subplots()
        levels = list(column.levels) if column.kind == "categorical" else ["no", "yes"]
        if column.kind == "categorical":
            matrix = result.features[[f"{feature}={level}" for level in levels]].to_numpy()[rows]
            code = np.where(np.isnan(matrix).any(axis=1), -1, np.nanargmax(np.nan_to_num(matrix, nan=0.0), axis=1))
        else:
            flag = result.features[feature].to_numpy(dtype="float64")[rows]
            code = np.where(np.isnan(flag), -1, np.nan_to_num(flag, nan=0.0)).astype(int)
        if (code == -1).any():
            levels.append("missing")
            code = np.where(code == -1, len(levels) - 1, code)
        for position in range(len(levels)):
            at = code == position
            axes.scatter(position + rng.uniform(-0.3, 0.3, at.sum()), shap_values[at], s=6, alpha=0.4, color="C0")
            if at.any():
                axes.hlines(shap_values[at].mean(), position - 0.35, position + 0.35, color="C3", linewidth=2)
        counts = [int((code == position).sum()) for position in range(len(levels))]
        # long level names (intranasal_esketamine) would run into each other on one line
        ticks = [f"{level.replace('_', chr(10))}\n(n={n})" for level, n in zip(levels, counts, strict=True)]
        axes.set_xticks(range(len(levels)), ticks, fontsize=8)
        axes.set_xlabel(f"{feature} (red: mean per level)")
    axes.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_ylabel(LOG_ODDS)
    axes.set_title(f"{_title(result)}: dependence on {feature}, {len(rows)} test patients", fontsize=10)
    planted = _planted_text(result, feature)
    if planted:
        axes.text(0.01, 0.99, planted, transform=axes.transAxes, va="top", fontsize=7, color="dimgrey")
    return figure


def waterfall_figure(result: Explanation, row: int) -> Any:
    """One test patient's SHAP values from the base value to their log-odds (shap's waterfall), by row number."""
    figure = plt.figure()
    explanation = shap.Explanation(
        values=result.values.to_numpy()[row],
        base_values=float(result.base_value[row]),
        data=_display_text(result, row),
        feature_names=list(result.values.columns),
    )
    shap.plots.waterfall(explanation, max_display=WATERFALL_MAX_DISPLAY, show=False)
    figure = plt.gcf()
    calibration = result.report["calibration"]["calibration"]
    probability = f"predicted probability of response {result.probability[row]:.2f}" + (
        f" (after {calibration} calibration)" if calibration != "none" else ""
    )
    figure.suptitle(
        f"{_title(result)}: test row {row}, {probability}\n"
        f"{LOG_ODDS}; E[f(X)] = base value, f(x) = this patient's log-odds before any calibration",
        fontsize=10,
    )
    return figure


def fidelity_figure(result: Explanation) -> Any:
    """Planted vs model mean |SHAP| per compared feature, planted effects first: the check a scientist makes first."""
    assert result.fidelity is not None  # only drawn with a truth
    roles = result.fidelity.roles
    compared = roles[roles["fidelity_role"].isin([ROLE_EFFECT, ROLE_NOISE])]
    # planted effects by planted size, then noise by model size: a faithful model shows two matching columns of
    # dots above and near-zero grey dots below
    compared = compared.assign(is_noise=compared["fidelity_role"] == ROLE_NOISE).sort_values(
        ["is_noise", "planted_mean_abs_shap", "mean_abs_shap"], ascending=[True, False, False], kind="stable"
    )
    metrics = result.fidelity.metrics
    # the truth on the same test patients when the generator wrote it, else the planted (whole-cohort) importance
    reference_column = (
        "true_mean_abs_contribution" if "true_mean_abs_contribution" in compared else "planted_mean_abs_shap"
    )
    figure = new_figure(7.0, 0.3 * len(compared) + 1.8)
    axes = figure.subplots()
    position = np.arange(len(compared))[::-1]
    noise = compared["is_noise"].to_numpy()
    axes.hlines(position, 0, compared["mean_abs_shap"], color=np.where(noise, "lightgrey", "lightsteelblue"))
    axes.scatter(compared["mean_abs_shap"], position, color=np.where(noise, "grey", "C0"), zorder=3,
                 label="model (test split)")  # fmt: skip
    axes.scatter(compared[reference_column], position, facecolors="none", edgecolors="black", zorder=4,
                 label="true contributions (generator)")  # fmt: skip
    names = compared["feature"].tolist()
    labels = [f"{name} (noise)" if is_noise else name for name, is_noise in zip(names, noise, strict=True)]
    axes.set_yticks(position, labels, fontsize=8)
    axes.set_xlim(left=0)
    axes.set_xlabel(f"mean |{LOG_ODDS}|")
    reference = result.fidelity.report["reference"]
    patient_level = (
        f"patient r median {metrics['patient_correlation_median']:.2f}, rank rho {metrics['rank_spearman_true']:.2f}, "
        if "patient_correlation_median" in metrics
        else ""
    )
    axes.set_title(
        f"{_title(result)}\nfidelity to the planted truth ({reference}): {patient_level}"
        f"signs {metrics['sign_agree']}/{metrics['sign_checked']}, "
        f"noise share {metrics.get('noise_share', math.nan):.2f}",
        fontsize=9,
    )
    axes.legend(fontsize=8, loc="lower right")
    return figure


def figures(result: Explanation) -> dict[str, Any]:
    """Figure file name -> a function drawing it (drawn one at a time, so memory holds one figure)."""
    drawers: dict[str, Any] = {
        "importance_bar.png": lambda: importance_figure(result),
        "beeswarm.png": lambda: beeswarm_figure(result),
    }
    if result.fidelity is not None:
        drawers["fidelity.png"] = lambda: fidelity_figure(result)
    for feature in result.dependence_features:
        drawers[f"dependence_{feature}.png"] = lambda feature=feature: dependence_figure(result, feature)
    for row in result.example_rows:
        drawers[f"waterfall_row_{int(row)}.png"] = lambda row=int(row): waterfall_figure(result, row)
    return drawers
