"""The few headline numbers per task that dvc.yaml declares as its only DVC metrics.

``dvc exp show`` and ``dvc metrics show`` print every number of every declared metrics file; the full
``metrics.json`` and ``fidelity.json`` hold hundreds (intervals, candidates, counts), which no terminal shows.
These files hold a handful, nested under the task name so that each column name (``acute.auc``) is unique
across tasks and DVC prints it without a file prefix. Everything else stays in the plain JSON outputs.

Keys (a key is left out when its number does not exist for the task, e.g. no external cohort):

- ``auc``: champion's test AUROC; ``slope``: its test calibration slope
- ``auc_opt``: optimism-corrected (Harrell bootstrap) AUROC of the training procedure
- ``gap``: champion AUROC minus the oracle's (the generating probability) on the same test patients
- ``ext_auc``: AUROC on the external cohort
- ``shap_r`` (explain): median over planted features of the patient-level correlation between SHAP values and
  the true contributions
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

EVALUATION_FILE = "headline.json"
EXPLAIN_FILE = "headline.json"

# key -> path into evaluate's metrics.json
EVALUATION_KEYS: dict[str, tuple[str, ...]] = {
    "auc": ("test", "auroc"),
    "slope": ("test", "calibration_slope"),
    "auc_opt": ("internal_validation", "auroc", "corrected"),
    "gap": ("gap", "auroc"),
    "ext_auc": ("external", "auroc"),
}
# key -> path into explain's fidelity.json
EXPLAIN_KEYS: dict[str, tuple[str, ...]] = {
    "shap_r": ("fidelity", "patient_correlation_median"),
}
DIGITS = 4  # what a human compares in a table; the full precision stays in metrics.json


def _lookup(tree: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        return None
    return round(float(node), DIGITS)


def headline(task: str, metrics: Mapping[str, Any], keys: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """``{task: {key: number}}`` for the keys whose number exists and is finite."""
    numbers = {key: _lookup(metrics, path) for key, path in keys.items()}
    return {task: {key: value for key, value in numbers.items() if value is not None}}


def evaluation_headline(task: str, metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    return headline(task, metrics, EVALUATION_KEYS)


def explain_headline(task: str, metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    return headline(task, metrics, EXPLAIN_KEYS)
