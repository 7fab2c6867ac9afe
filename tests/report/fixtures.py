"""Fabricated inputs of the report stage (a tiny project with every upstream output) and the checker that
compares ``card_data.json`` with the files its facts name."""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pipeline.features import FeatureSpec
from pipeline.params import read_params_file
from pipeline.paths import ProjectPaths
from pipeline.report.card_data import build_card_data
from pipeline.report.inputs import EVALUATION_FIGURES, EXPLAIN_FIGURES, CardInputs, gather_inputs
from pipeline.report.render import render_markdown
from pipeline.tasks import TasksParams, task_predictors

TASK = "acute"
SHA = "a" * 64
PATIENT_IDS = ("syn-000123", "syn-004567", "sub-MOA999")
# facts without a file behind them: computed ones, and the registry rule (the card holds no store-specific value)
UNSOURCED_KINDS = frozenset({"computed", "MLflow registry (pipeline/tracking.py)"})


def unsourced_kinds(result: dict) -> set[str]:
    """The kinds of source behind the facts `check_card_data` could not compare with a file."""
    return {source.split(":")[0].split(",")[0] for source in result["unsourced"]}


FILE_SOURCE = re.compile(r"^(?P<path>[^#\s]+)#(?P<key>\S+)$")
TOLERANCE = 1e-12  # facts are copied, not recomputed: only float round-off may differ


def tiny_png(shade: int) -> bytes:
    """A valid 1x1 RGB PNG (distinct bytes per shade)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixel = zlib.compress(bytes([0, shade, 255 - shade, 128]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel) + chunk(b"IEND", b"")


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def _performance(rng: np.random.Generator, n: int, events: int) -> dict[str, float]:
    out: dict[str, float] = {"n": n, "events": events, "prevalence": events / n}
    for name, centre in (
        ("auroc", 0.68), ("auprc", 0.55), ("brier", 0.22), ("scaled_brier", 0.1),
        ("calibration_in_the_large", 0.03), ("calibration_slope", 0.97),
    ):  # fmt: skip
        estimate = centre + rng.uniform(-0.02, 0.02)
        out |= {name: estimate, f"{name}_lower": estimate - 0.03, f"{name}_upper": estimate + 0.03}
    out |= {"mean_predicted": 0.41, "observed_minus_expected": -0.0123, "ece": 0.0271, "recalibration_intercept": 0.01}
    return out


def fabricate(root: Path, contract, *, external: bool = True, explain: bool = True) -> None:
    rng = np.random.default_rng(5)
    params = read_params_file(root / "params.yaml")
    task = TasksParams.model_validate(params["tasks"]).get(TASK)
    spec = FeatureSpec.from_columns(TASK, task.target, task_predictors(task, contract))
    artifacts = root / "models" / TASK / "artifacts"
    artifacts.mkdir(parents=True)
    spec.save(artifacts / "feature_spec.json")
    _write_json(
        artifacts / "model_info.json",
        {
            "task": TASK, "target": task.target, "candidate": "logreg", "calibration": "none", "estimator_sha256": SHA,
            "risk_bands": [{"name": "low", "upper": 0.3}, {"name": "high", "upper": 1.0}],
            "training_data_sha256": "b" * 64, "n_train": 900, "registered_model_name": f"trd-{TASK}",
            "package_version": "0.1.0",
        },
    )  # fmt: skip
    (root / "dvc.yaml").write_text("stages: {}\n")
    _write_json(
        root / "reports/cleaning.json",
        {
            "sources": {
                "synthetic": {
                    "rows_in": 1250, "rows_kept": 1230, "quarantined_by_reason": {"duplicate_record": 20},
                    "missing_by_column": {"age": 11, "bmi": 7, task.target: 30},
                    "outcomes": {task.target: {"known": 1200, "positive": 480}},
                },
                "ds005917": {
                    "rows_in": 58, "rows_kept": 33, "quarantined_by_reason": {"ineligible": 25},
                    "missing_by_column": {"age": 1, "crp_mg_l": 33},
                    "outcomes": {task.target: {"known": 27, "positive": 6}},
                },
            }
        },
    )  # fmt: skip
    _write_json(
        root / "data/raw/synthetic/planted_effects.json",
        {
            "n_patients": 1250, "effect_scale": 1.0,
            "outcomes": {task.target: {"target_rate": 0.4, "realised_rate": 0.397, "oracle_auroc": 0.7034}},
        },
    )  # fmt: skip
    _write_json(
        root / f"data/processed/{TASK}/split.json",
        {"train": {"n": 900, "events": 360}, "test": {"n": 300, "events": 120}},
    )
    # patient ids live in data/ only; the report never reads these files, and the card must not show them
    pd.DataFrame({"patient_id": list(PATIENT_IDS)}).to_parquet(root / f"data/processed/{TASK}/test.parquet")

    candidates = {}
    for name, auc in (("logreg", 0.6912), ("xgboost", 0.6841)):
        candidates[name] = {
            "cv_auroc": auc, "cv_auroc_lower": auc - 0.02, "cv_auroc_upper": auc + 0.02, "cv_log_loss": 0.6377,
            "cv_brier": 0.2233, "cv_calibration_slope": 1.04, "cv_calibration_in_the_large": -0.0021,
            "calibration": "none",
            "best_params": {"model__C": 0.03} if name == "logreg" else {"max_depth": 3, "learning_rate": 0.1},
        }  # fmt: skip
    internal = {
        name: {"apparent": value + 0.02, "optimism": 0.0213, "corrected": value, "corrected_lower": value - 0.04,
               "corrected_upper": value + 0.04}
        for name, value in (("auroc", 0.6712), ("calibration_slope", 0.9634), ("calibration_in_the_large", -0.0123),
                            ("brier", 0.2277))
    } | {"method": "Harrell", "repetitions": 200, "repetitions_used": 199, "repetitions_failed": 1,
         "confidence_level": 0.95, "n": 900, "events": 360}  # fmt: skip
    selection = {
        "metric": "log_loss", "rule": "one_se", "se_multiplier": 1.0, "simplicity_order": ["logreg", "xgboost"],
        "best_by_metric": "xgboost", "champion": "logreg",
        "candidates": {
            "logreg": {"mean_loss": 0.6391, "margin": 0.0014, "margin_se": 0.0019, "margin_in_se": 0.7368,
                       "eligible": True, "simplicity_rank": 1},
            "xgboost": {"mean_loss": 0.6377, "margin": 0.0, "margin_se": 0.0, "margin_in_se": 0.0, "eligible": True,
                        "simplicity_rank": 2},
        },
    }  # fmt: skip
    _write_json(
        root / f"reports/{TASK}/cv_metrics.json",
        {"task": TASK, "champion": "logreg", "selection": selection, "n_train": 900, "events_train": 360,
         "candidates": candidates, "internal_validation": internal},
    )  # fmt: skip

    evaluation = root / f"reports/{TASK}/evaluation"
    test = _performance(rng, 300, 120)
    test["candidates"] = {
        name: {**_performance(rng, 300, 120), "oracle_gap_auroc": -0.013, "oracle_gap_auroc_lower": -0.04,
               "oracle_gap_auroc_upper": 0.012, "predictors_gap_auroc": -0.0087,
               "predictors_gap_auroc_lower": -0.031, "predictors_gap_auroc_upper": 0.0142}
        for name in candidates
    }  # fmt: skip
    payload: dict[str, Any] = {
        "test": test,
        "internal_validation": {k: v for k, v in internal.items() if k not in ("method", "confidence_level",
                                                                             "repetitions_failed")},
        "oracle": _performance(rng, 300, 120),
        "oracle_predictors": _performance(rng, 300, 120),
        "gap": {"auroc": -0.0113, "auroc_lower": -0.0251, "auroc_upper": 0.0036, "auroc_share_positive": 0.06,
                "brier": 0.002, "brier_lower": -0.0018, "brier_upper": 0.0059},
        "gap_predictors": {"auroc": -0.0071, "auroc_lower": -0.0199, "auroc_upper": 0.0061,
                           "auroc_share_positive": 0.13, "brier": 0.0011, "brier_lower": -0.0021,
                           "brier_upper": 0.0042},
        "labels": {"n": 300, "agree": 0.9667, "disagree": 10},
    }  # fmt: skip
    report_json: dict[str, Any] = {
        "champion": {"candidate": "logreg", "calibration": "none", "estimator_sha256": SHA},
        "intervals": {"level": 0.95, "discrimination": "percentile bootstrap", "brier": "percentile bootstrap",
                      "calibration_in_the_large_and_slope": "Wald", "internal_validation": "location-shifted"},
        "oracle": {"available": True, "column": "p_response_acute",
                   "leakage_check": {"passed": True, "rule": "stop if a model beats the oracle"}},
        "oracle_predictors": {"available": True, "column": "p_response_acute_predictors"},
        "subgroups": {"min_cell": 10, "suppressed_rows": 2},
    }  # fmt: skip
    if external:
        payload["external"] = {
            "n": 27, "events": 6, "auroc": 0.3968, "auroc_lower": 0.1746, "auroc_upper": 0.627,
            "observed_rate": 0.2222, "observed_rate_lower": 0.1061, "observed_rate_upper": 0.4076,
            "auroc_se": 0.1312, "auroc_bootstrap_lower": 0.1522, "auroc_bootstrap_upper": 0.6508,
            "auroc_loo_min": 0.3412, "auroc_loo_max": 0.4667,
            "mean_predicted": 0.5464, "calibration_in_the_large": -1.449, "calibration_in_the_large_lower": -2.36,
            "calibration_in_the_large_upper": -0.54, "calibration_slope": -2.03, "calibration_slope_lower": -7.7,
            "calibration_slope_upper": 3.66, "features_entirely_missing": 10, "features_total": 17,
            "spearman_rho": -0.2863, "spearman_lower": -0.6061, "spearman_upper": 0.1131, "spearman_n": 27,
            "negative_control": {"n": 26, "events": 1, "auroc": 0.08, "auroc_lower": None, "auroc_upper": None,
                                 "spearman_rho": 0.1177, "spearman_lower": -0.2839, "spearman_upper": 0.4841},
        }  # fmt: skip
        report_json["external_validation"] = {
            "available": True, "features_entirely_missing": ["crp_mg_l"],
            "negative_control": {"outcome": "response_placebo_acute", "auroc_interval_note": "no interval: few events"},
            "missing_value_handling": {"description": "median imputation with indicators"},
            "limitations": "External check on 27 real patients with 6 responders.",
        }  # fmt: skip
    else:
        report_json["external_validation"] = {"available": False, "reason": "ds005917 does not record the target"}
    _write_json(evaluation / "metrics.json", payload)
    _write_json(evaluation / "evaluation.json", report_json)
    pd.DataFrame(
        {"threshold": [0.2, 0.4], "n": 300, "tp": [110, 80], "fp": [150, 60], "tn": [30, 120], "fn": [10, 40],
         "flagged": [0.8667, 0.4667], "sensitivity": [0.9167, 0.6667], "specificity": [0.1667, 0.6667],
         "ppv": [0.4231, 0.5714], "npv": [0.75, 0.75], "nne": [2.3636, 1.75], "net_benefit": [0.2333, 0.1]}
    ).to_csv(evaluation / "thresholds.csv", index=False)  # fmt: skip
    pd.DataFrame(
        {"group": ["overall", "sex", "sex", "site"], "level": ["all", "F", "M", "tiny"], "n": [300, 170, 130, None],
         "events": [120, 70, 50, None], "event_rate": [0.4, 0.4118, 0.3846, None],
         "mean_predicted": [0.41, 0.42, 0.40, None], "auroc": [0.68, 0.671, 0.702, None],
         "o_minus_e": [-0.01, -0.0082, -0.0154, None], "o_e_ratio": [0.9756, 0.98, 0.96, None],
         "suppressed": [False, False, False, True], "suppression_reason": [None, None, None, "n<10"]}
    ).to_csv(evaluation / "subgroups.csv", index=False)  # fmt: skip
    thresholds = np.round(np.arange(0.05, 0.81, 0.01), 2)
    (evaluation / "plots").mkdir(parents=True)
    pd.DataFrame(
        {"threshold": thresholds, "net_benefit_model": 0.3 - 0.45 * thresholds,
         "net_benefit_treat_all": 0.4 - 0.6 * thresholds / (1 - thresholds), "net_benefit_treat_none": 0.0}
    ).to_csv(evaluation / "plots/decision_curve.csv", index=False)  # fmt: skip
    (evaluation / "figures").mkdir()
    for shade, name in enumerate(EVALUATION_FIGURES):
        (evaluation / "figures" / name).write_bytes(tiny_png(10 * shade))

    if explain:
        folder = root / f"reports/{TASK}/explain"
        _write_json(
            folder / "fidelity.json",
            {"n_explained": 300, "additivity": {"max_abs_error": 2.1e-7},
             "fidelity": {"n_features": 16, "n_planted": 11, "n_noise": 5, "patient_correlation_median": 0.8123,
                          "patient_correlation_min": 0.1134, "rank_spearman_true": 0.7455, "noise_share": 0.0412,
                          "patient_correlation": {"route": 0.9512, "age": 0.1134},
                          "sign_checked": 11, "sign_agree": 10, "sign_agreement": 0.9091, "noise_separation": 0.96}},
        )  # fmt: skip
        _write_json(
            folder / "explanation.json",
            {"method": "exact linear SHAP", "scale": "log-odds", "aggregation": "levels summed",
             "calibration": {"description": "no calibrator"}, "champion": {"estimator_sha256": SHA},
             "fidelity": {"reference": "exact", "reference_note": "exactly linear"}},
        )  # fmt: skip
        pd.DataFrame(
            {"rank": [1, 2, 3], "feature": ["route", "age", "sex"], "kind": ["categorical", "numeric", "categorical"],
             "unit": [None, "years", None], "mean_abs_shap": [0.3012, 0.1234, 0.0021],
             "share_of_total": [0.7, 0.29, 0.01], "mean_shap": [0.0, -0.0001, 0.0],
             "fidelity_role": ["planted effect", "planted effect", "noise (planted 0)"],
             "planted_mean_abs_shap": [0.29, 0.05, 0.0], "planted_rank": [1, 2, 3],
             "true_mean_abs_contribution": [0.2811, 0.0532, 0.0]}
        ).to_csv(folder / "importance.csv", index=False)  # fmt: skip
        pd.DataFrame(
            {"feature": ["age", "route"], "level": [None, "oral"],
             "planted_terms": ["age_per_10y -0.05", "route_oral -0.5"], "expected_sign": [-1, -1],
             "observed": [-0.41, -0.22], "n_rows": [290, 40], "agrees": [True, False], "skipped": [None, None]}
        ).to_csv(folder / "sign_checks.csv", index=False)  # fmt: skip
        (folder / "figures").mkdir()
        for shade, name in enumerate(EXPLAIN_FIGURES):
            (folder / "figures" / name).write_bytes(tiny_png(200 + shade))
    (root / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {f"evaluate@{TASK}": {"outs": [
            {"path": f"reports/{TASK}/evaluation", "md5": "0123456789abcdef0123456789abcdef.dir"}]}}})
    )  # fmt: skip


def build(root: Path) -> tuple[dict[str, Any], str, CardInputs]:
    """card_data, its Markdown, and the gathered inputs, for the project at ``root``."""
    inputs = gather_inputs(ProjectPaths(root), TASK, read_params_file(root / "params.yaml"))
    card = build_card_data(inputs)
    return card, render_markdown(card), inputs


def facts(node: Any) -> list[dict[str, Any]]:
    """Every ``{value, source}`` fact in card_data, in document order."""
    if isinstance(node, dict):
        if "value" in node and "source" in node:
            return [node]
        return [f for child in node.values() for f in facts(child)]
    if isinstance(node, list):
        return [f for child in node for f in facts(child)]
    return []


def _load(path: Path) -> Any:
    if path.suffix == ".csv":
        return pd.read_csv(path).to_dict(orient="records")
    if path.suffix in (".yaml", ".yml"):
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return json.loads(path.read_text(encoding="utf-8"))


def _lookup(data: Any, key: str) -> Any:
    node = data
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def same(shown: Any, source: Any) -> bool:
    if _empty(shown) or _empty(source):
        return _empty(shown) and _empty(source)
    if isinstance(source, bool) or isinstance(shown, bool) or isinstance(source, str):
        return shown == source
    if isinstance(source, int | float):
        return isinstance(shown, int | float) and abs(float(shown) - float(source)) <= TOLERANCE
    return shown == source


def check_card_data(card: dict[str, Any], root: Path) -> dict[str, Any]:
    """Compare every fact whose source is ``<file>#<key>`` with that file; list the others by their source."""
    cache: dict[str, Any] = {}
    checked, unsourced = 0, []
    for fact in facts(card):
        match = FILE_SOURCE.match(str(fact["source"]))
        if not match or not (root / match["path"]).is_file():
            unsourced.append(fact["source"])
            continue
        if match["path"] not in cache:
            cache[match["path"]] = _load(root / match["path"])
        expected = _lookup(cache[match["path"]], match["key"])
        assert same(fact["value"], expected), f"{fact['source']}: card_data {fact['value']!r}, file {expected!r}"
        checked += 1
    return {"checked": checked, "unsourced": unsourced}
