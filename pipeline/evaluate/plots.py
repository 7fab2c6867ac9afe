"""The evaluation's figures: pure functions from an :class:`Evaluation` to a matplotlib figure (saved by
:mod:`pipeline.figures`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.evaluate.types import CHAMPION, ORACLE, Evaluation
from pipeline.figures import new_figure

# one colour per series, the same in every figure: the champion red, the oracle black (dashed), treat-all blue,
# the other candidates from the rest of the default cycle (never the champion's)
CHAMPION_COLOUR = "C3"
OTHER_COLOURS = ("C1", "C2", "C4", "C5", "C6", "C8", "C9")


def ci_label(numbers: dict[str, Any], key: str) -> str:
    estimate, lower, upper = (numbers.get(k) for k in (key, f"{key}_lower", f"{key}_upper"))
    if estimate is None or not math.isfinite(estimate):
        return "n/a"
    if lower is None or upper is None or not (math.isfinite(lower) and math.isfinite(upper)):
        return f"{estimate:.3f}"
    return f"{estimate:.3f} [{lower:.3f}, {upper:.3f}]"


def _title(evaluation: Evaluation) -> str:
    test = evaluation.metrics["test"]
    champion = evaluation.report["champion"]["candidate"]
    return f"{evaluation.task}: {champion} (champion), test split n={test['n']}, events={test['events']}"


def calibration_figure(evaluation: Evaluation) -> Any:
    """Binned observed vs predicted with Wilson intervals, the ideal diagonal, and the risk distribution below."""
    test = evaluation.metrics["test"]
    curve = evaluation.calibration_curves
    curve = curve[curve["model"] == CHAMPION]
    figure = new_figure(5.5, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[4, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="ideal")
    top.errorbar(
        curve["mean_predicted"], curve["observed"],
        yerr=[curve["observed"] - curve["ci_lower"], curve["ci_upper"] - curve["observed"]],
        fmt="o-", color=CHAMPION_COLOUR, capsize=3, label="champion (95 % Wilson CI per bin)",
    )  # fmt: skip
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed response rate", title=_title(evaluation))
    top.text(
        0.02, 0.97,
        f"calibration-in-the-large {ci_label(test, 'calibration_in_the_large')}\n"
        f"calibration slope {ci_label(test, 'calibration_slope')}\nECE {test['ece']:.3f}",
        transform=top.transAxes, va="top", fontsize=8,
    )  # fmt: skip
    top.legend(loc="lower right", fontsize=8)
    bins = np.linspace(0, 1, 41)
    bottom.hist(evaluation.champion_p[evaluation.y == 0], bins=bins, alpha=0.6, label="non-responders")
    bottom.hist(evaluation.champion_p[evaluation.y == 1], bins=bins, alpha=0.6, label="responders")
    bottom.set(xlabel="predicted probability of response", ylabel="patients")
    bottom.legend(fontsize=7)
    return figure


def roc_figure(evaluation: Evaluation) -> Any:
    """The champion's ROC curve, the other candidates', and the oracle's as the reachable ceiling."""
    test, oracle = evaluation.metrics["test"], evaluation.metrics.get("oracle")
    champion = evaluation.report["champion"]["candidate"]
    figure = new_figure()
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    others = [n for n in evaluation.curves["roc"] if n not in (CHAMPION, ORACLE, champion)]  # champion: no duplicate
    for name, colour in zip(others, OTHER_COLOURS, strict=False):
        points = evaluation.curves["roc"][name]
        label = f"{name}: {ci_label(test['candidates'][name], 'auroc')}"
        axes.plot(points["fpr"], points["tpr"], color=colour, linewidth=0.8, alpha=0.6, label=label)
    if oracle is not None:
        points = evaluation.curves["roc"][ORACLE]
        label = f"generating probability (oracle; knows the site): {ci_label(oracle, 'auroc')}"
        axes.plot(points["fpr"], points["tpr"], color="black", linestyle="--", label=label)
    points = evaluation.curves["roc"][CHAMPION]
    label = f"champion ({champion}): {ci_label(test, 'auroc')}"
    axes.plot(points["fpr"], points["tpr"], color=CHAMPION_COLOUR, linewidth=2, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="1 − specificity", ylabel="sensitivity", title=_title(evaluation))
    axes.legend(loc="lower right", fontsize=7, title="AUROC [95 % CI]", title_fontsize=7)
    return figure


def precision_recall_figure(evaluation: Evaluation) -> Any:
    """The champion's precision-recall curve against the oracle's and the no-skill line (the prevalence)."""
    test, oracle = evaluation.metrics["test"], evaluation.metrics.get("oracle")
    champion = evaluation.report["champion"]["candidate"]
    figure = new_figure()
    axes = figure.subplots()
    prevalence = float(evaluation.y.mean())
    axes.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"no skill (prevalence {prevalence:.2f})")
    if oracle is not None:
        points = evaluation.curves["precision_recall"][ORACLE]
        label = f"oracle: {ci_label(oracle, 'auprc')}"
        axes.plot(points["recall"], points["precision"], color="black", linestyle="--", label=label)
    points = evaluation.curves["precision_recall"][CHAMPION]
    label = f"champion ({champion}): {ci_label(test, 'auprc')}"
    axes.plot(points["recall"], points["precision"], color=CHAMPION_COLOUR, linewidth=2, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    axes.set_title(_title(evaluation))
    axes.legend(loc="upper right", fontsize=7, title="AUPRC [95 % CI]", title_fontsize=7)
    return figure


def decision_curve_figure(evaluation: Evaluation) -> Any:
    """Net benefit over the declared threshold range; treat-all falls steeply, so the y axis is clipped."""
    champion = evaluation.report["champion"]["candidate"]
    figure = new_figure(6.0, 4.5)
    axes = figure.subplots()
    curve = evaluation.decision_curves[CHAMPION]
    axes.plot(curve["threshold"], curve["net_benefit_treat_none"], color="grey", linewidth=1, label="treat none")
    axes.plot(curve["threshold"], curve["net_benefit_treat_all"], color="C0", linewidth=1, label="treat all")
    if ORACLE in evaluation.decision_curves:
        oracle_curve = evaluation.decision_curves[ORACLE]
        axes.plot(oracle_curve["threshold"], oracle_curve["net_benefit_model"], color="black", linestyle="--",
                  label="oracle")  # fmt: skip
    axes.plot(
        curve["threshold"],
        curve["net_benefit_model"],
        color=CHAMPION_COLOUR,
        linewidth=2,
        label=f"champion ({champion})",
    )
    prevalence = float(evaluation.y.mean())
    axes.set(
        ylim=(-0.05, max(prevalence, 0.05) * 1.1),
        xlabel="threshold probability",
        ylabel="net benefit (true responders per patient)",
        title=_title(evaluation),
    )
    axes.legend(fontsize=8)
    return figure


FIGURES = {
    "calibration.png": calibration_figure,
    "roc.png": roc_figure,
    "precision_recall.png": precision_recall_figure,
    "decision_curve.png": decision_curve_figure,
}
