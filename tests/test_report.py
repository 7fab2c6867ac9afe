"""Report stage: every number in the model card is parsed back from the Markdown and compared with the file it
names; the card follows its inputs, carries no patient identifier, renders to well-formed self-contained HTML,
is byte-stable, finds (or honestly misses) its MLflow registry entry, and dvc.yaml declares what it reads."""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline import metrics, report, tracking
from pipeline.errors import PipelineError
from pipeline.features import FeatureSpec
from pipeline.params import read_params_file
from pipeline.tasks import TasksParams, task_predictors
from tests.conftest import REPO_ROOT

TASK = "acute"
SHA = "a" * 64
NA = "–"
PATIENT_IDS = ("syn-000123", "syn-004567", "sub-MOA999")
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
INTERVAL = re.compile(r"^\[(-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)\]$")
ROW_SOURCE = re.compile(r"^(?P<path>[^#\s]+)#(?P<key>\S+)(?: \[#(?P<lower>\S+), #(?P<upper>\S+)\])?$")
CSV_SOURCE = re.compile(r"^Source: `(?P<path>[^`]+\.csv)` \(rows in file order; columns (?P<columns>.+)\)\.$")
GRID_SOURCE = re.compile(
    r"^Source: `(?P<path>[^`]+\.json)`; the cell in row `\{row\}` and column `\{col\}` reads `(?P<template>[^`]+)` "
    r"\(columns (?P<columns>.+)\)\.$"
)


# --------------------------------------------------------------------------------------------------------------
# a checker that knows nothing of pipeline/report.py: it reads the Markdown tables and the files they cite
# --------------------------------------------------------------------------------------------------------------


def _unescape(cell: str) -> str:
    cell = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", cell)  # links -> their text
    cell = re.sub(r"\\(.)", r"\1", cell)
    return cell.strip()


def _strip_code(cell: str) -> str:
    return cell.replace("`", "").strip()


def md_tables(markdown: str) -> list[dict[str, Any]]:
    """Every table: header, rows (cells unescaped, code marks kept) and the paragraph under it."""
    lines = markdown.split("\n")
    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            rows = []
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                cells = re.split(r"(?<!\\)\|", lines[j].strip()[1:-1])
                rows.append([_unescape(c) for c in cells])
                j += 1
            after = lines[j + 1] if j + 1 < len(lines) and not lines[j].strip() else ""
            tables.append({"header": [_strip_code(h) for h in rows[0]], "rows": rows[2:], "after": after})
            i = j
        else:
            i += 1
    return tables


def load(root: Path, relative: str) -> Any:
    path = root / relative
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".yaml":
        return yaml.safe_load(path.read_text())
    return pd.read_csv(path)


def lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if isinstance(data, list) and part.isdigit():
            data = data[int(part)] if int(part) < len(data) else None
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def same_number(cell: str, value: Any) -> bool:
    """``cell`` shows ``value`` rounded to the cell's own number of decimals."""
    if _missing(value) or isinstance(value, bool | str):
        return False
    decimals = len(cell.split(".")[1]) if "." in cell else 0
    return abs(float(cell) - float(value)) <= 0.5 * 10**-decimals + 1e-9


def check_cell(cell: str, value: Any, where: str) -> int:
    """Assert the cell shows the value; return 1 when a number was compared."""
    if isinstance(value, str) and cell == value.strip():
        return 0
    if NUMBER.match(cell):
        assert same_number(cell, value), f"{where}: card {cell!r}, file {value!r}"
        return 1
    if cell in (NA, "none"):
        assert _missing(value) or (isinstance(value, str) and not value.strip()), f"{where}: {cell!r} vs {value!r}"
        return 0
    if isinstance(value, bool | np.bool_):
        assert cell == ("yes" if value else "no"), f"{where}: {cell!r} vs {value!r}"
        return 0
    assert not isinstance(value, int | float) or _missing(value), f"{where}: number {value!r} shown as {cell!r}"
    assert cell == str(value).strip(), f"{where}: card {cell!r}, file {value!r}"
    return 0


def check_interval(cell: str, lower: Any, upper: Any, where: str) -> int:
    if cell == "no interval":
        assert _missing(lower) or _missing(upper), f"{where}: interval [{lower}, {upper}] not shown"
        return 0
    match = INTERVAL.match(cell)
    assert match, f"{where}: {cell!r} is not an interval"
    assert same_number(match[1], lower), f"{where}: {cell} vs lower bound {lower}"
    assert same_number(match[2], upper), f"{where}: {cell} vs upper bound {upper}"
    return 2


def check_card(markdown: str, root: Path) -> dict[str, Any]:
    """Compare every number of every table with its source; return counts and the rows that are not in files."""
    checked, unsourced = 0, []
    for table in md_tables(markdown):
        header, rows = table["header"], table["rows"]
        if header[-1] == "source":
            interval_column = len(header) == 4
            for row in rows:
                source = _strip_code(row[-1])
                match = ROW_SOURCE.match(source)
                if not match or not (root / match["path"]).is_file():
                    unsourced.append((row[0], row[1:-1], source))
                    continue
                data = load(root, match["path"])
                where = f"{source} ({row[0]})"
                checked += check_cell(_strip_code(row[1]), lookup(data, match["key"]), where)
                if interval_column and row[2]:
                    lower_key = match["lower"] or f"{match['key']}_lower"
                    upper_key = match["upper"] or f"{match['key']}_upper"
                    checked += check_interval(row[2], lookup(data, lower_key), lookup(data, upper_key), where)
        elif (csv := CSV_SOURCE.match(table["after"])) is not None:
            columns = re.findall(r"`([^`]+)`", csv["columns"])
            frame = load(root, csv["path"])
            assert len(rows) == len(frame), f"{csv['path']}: {len(rows)} rows in the card, {len(frame)} in the file"
            assert len(columns) == len(header)
            for row, (_, record) in zip(rows, frame.iterrows(), strict=True):
                for cell, column in zip(row, columns, strict=True):
                    checked += check_cell(cell, record[column], f"{csv['path']}:{column}")
        elif (grid := GRID_SOURCE.match(table["after"])) is not None:
            columns = re.findall(r"`([^`]+)`", grid["columns"])
            data = load(root, grid["path"])
            for row in rows:
                row_key = re.match(r"`([^`]+)`", row[0])[1]
                for cell, column in zip(row[1:], columns, strict=True):
                    key = grid["template"].format(row=row_key, col=column.removesuffix("[ci]"))
                    where = f"{grid['path']}#{key}"
                    if column.endswith("[ci]"):
                        checked += check_interval(
                            cell, lookup(data, f"{key}_lower"), lookup(data, f"{key}_upper"), where
                        )
                    else:
                        checked += check_cell(cell, lookup(data, key), where)
        else:
            # a table without provenance holds no number (the checklist's item numbers are labels)
            for row in rows:
                for name, cell in zip(header, row, strict=True):
                    if name != "TRIPOD+AI item":
                        assert not NUMBER.match(cell), f"unsourced number {cell!r}"
                        assert not INTERVAL.match(cell), f"unsourced interval {cell!r}"
    return {"checked": checked, "unsourced": unsourced}


# --------------------------------------------------------------------------------------------------------------
# a tiny fabricated project: every input the report reads, with made-up numbers
# --------------------------------------------------------------------------------------------------------------


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
    for shade, name in enumerate(report.EVALUATION_FIGURES):
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
        for shade, name in enumerate(report.EXPLAIN_FIGURES):
            (folder / "figures" / name).write_bytes(tiny_png(200 + shade))
    (root / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {f"evaluate@{TASK}": {"outs": [
            {"path": f"reports/{TASK}/evaluation", "md5": "0123456789abcdef0123456789abcdef.dir"}]}}})
    )  # fmt: skip


@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch, project_root: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project_root))


@pytest.fixture
def project(project_root: Path, contract, no_mlflow) -> Path:
    fabricate(project_root, contract)
    return project_root


def build(root: Path) -> tuple[str, str, report.CardInputs]:
    inputs = report.gather_inputs(root, TASK, read_params_file(root / "params.yaml"))
    document = report.build_card(inputs)
    return report.render_markdown(document), report.render_html(document), inputs


# --------------------------------------------------------------------------------------------------------------
# every number equals its source
# --------------------------------------------------------------------------------------------------------------


def test_every_number_in_the_card_equals_the_file_it_names(project) -> None:
    markdown, _, _ = build(project)
    result = check_card(markdown, project)
    assert result["checked"] > 200  # the checker really compared the card's numbers, not nothing
    # what is not in a file: computed values, the registry and git, each checked by its own test
    kinds = {source.split(":")[0].split(",")[0] for _, _, source in result["unsourced"]}
    assert kinds <= {"computed", "MLflow registry", "MLflow model version tag gate", "MLflow run tag git_sha"}, kinds


def test_the_checker_catches_a_wrong_number(project) -> None:
    markdown, _, _ = build(project)
    line = next(li for li in markdown.split("\n") if li.startswith("| AUROC, held-out test split |"))
    estimate = line.split("|")[2].strip()
    wrong = markdown.replace(line, line.replace(f"| {estimate} |", f"| {float(estimate) + 0.01:.3f} |", 1))
    with pytest.raises(AssertionError, match=r"test\.auroc"):
        check_card(wrong, project)


def _computed(markdown: str) -> dict[str, str]:
    rows = {}
    for table in md_tables(markdown):
        if table["header"][-1] == "source":
            for row in table["rows"]:
                if _strip_code(row[-1]).startswith("computed:"):
                    rows[row[0]] = _strip_code(row[1])
    return rows


def test_riley_sample_size_is_computed_from_the_feature_count_prevalence_and_cv_auroc(project) -> None:
    markdown, _, _ = build(project)
    rows = _computed(markdown)
    spec = FeatureSpec.load(project / f"models/{TASK}/artifacts/feature_spec.json")
    cv = json.loads((project / f"reports/{TASK}/cv_metrics.json").read_text())
    expected = metrics.riley_sample_size(
        parameters=len(spec.feature_names),
        prevalence=cv["events_train"] / cv["n_train"],
        c_statistic=cv["candidates"]["logreg"]["cv_auroc"],
    )
    assert rows["candidate parameters P (feature columns the model receives)"] == str(len(spec.feature_names))
    assert same_number(rows["training prevalence φ"], cv["events_train"] / cv["n_train"])
    assert rows["minimum sample size (the largest of the three)"] == str(expected.n)
    assert rows["criterion 1: n for an expected shrinkage of at least 0.9"] == str(expected.n_shrinkage)
    assert rows["criterion 2: n for an optimism in Nagelkerke R² of at most 0.05"] == str(expected.n_r2_difference)
    assert rows["criterion 3: n for the overall risk within 0.05"] == str(expected.n_overall_risk)
    assert same_number(rows["anticipated Cox-Snell R²"], expected.r2_cs)
    assert same_number(rows["events per candidate parameter in the training split"], 360 / len(spec.feature_names))
    verdict = "meets the minimum" if cv["n_train"] >= expected.n else "smaller than the minimum"
    assert verdict in markdown


def test_a_stated_anticipated_c_replaces_the_cv_auroc(project) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["report"] = {"anticipated_c": 0.75}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    markdown, _, _ = build(project)
    assert "anticipated C statistic (stated)" in markdown
    assert check_card(markdown, project)["checked"] > 0  # its row cites params.yaml#report.anticipated_c
    expected = metrics.riley_sample_size(parameters=23, prevalence=0.4, c_statistic=0.75)
    assert _computed(markdown)["minimum sample size (the largest of the three)"] == str(expected.n)


def test_decision_curve_range_is_where_the_model_beats_both_defaults(project) -> None:
    markdown, _, _ = build(project)
    curve = pd.read_csv(project / f"reports/{TASK}/evaluation/plots/decision_curve.csv")
    better = curve["threshold"][
        curve["net_benefit_model"] > curve[["net_benefit_treat_all", "net_benefit_treat_none"]].max(axis=1)
    ]
    shown = _computed(markdown)["thresholds where the model's net benefit exceeds both treat-all and treat-none"]
    low, high = (float(x) for x in shown.split(" to "))
    assert (low, high) == (better.min(), better.max())
    assert np.allclose(np.diff(better.to_numpy()), 0.01)  # one run in this curve, so one range


def test_the_card_changes_when_a_metric_changes(project) -> None:
    before, _, _ = build(project)
    path = project / f"reports/{TASK}/evaluation/metrics.json"
    payload = json.loads(path.read_text())
    payload["test"]["auroc"] = 0.6543
    path.write_text(json.dumps(payload))
    after, _, _ = build(project)
    assert after != before
    assert re.search(r"^\| AUROC, held-out test split \| 0\.654 \|", after, flags=re.MULTILINE)
    check_card(after, project)


def test_readings_follow_the_intervals(project) -> None:
    markdown, _, _ = build(project)
    assert "The real cohort neither supports nor refutes the model: its AUROC interval includes 0.5" in markdown
    assert "cannot be distinguished from the predictors-only reference" in markdown
    assert "the held-out AUROC interval contains the optimism-corrected AUROC" in markdown
    path = project / f"reports/{TASK}/evaluation/metrics.json"
    payload = json.loads(path.read_text())
    payload["external"] |= {"auroc": 0.2, "auroc_lower": 0.05, "auroc_upper": 0.45}
    payload["gap_predictors"] |= {"auroc_upper": -0.001}
    payload["internal_validation"]["auroc"]["corrected"] = 0.9  # outside the held-out interval
    path.write_text(json.dumps(payload))
    markdown, _, _ = build(project)
    assert "the model ranks worse than chance" in markdown
    assert "neither supports nor refutes" not in markdown
    assert "less well than the predictors-only reference" in markdown
    assert "does not contain the optimism-corrected AUROC" in markdown
    # without the predictors-only reference, the reading falls back to the generating probability
    del payload["gap_predictors"], payload["oracle_predictors"]
    payload["gap"] |= {"auroc_upper": -0.001}
    path.write_text(json.dumps(payload))
    markdown, _, _ = build(project)
    assert "less well than the generating probability" in markdown


def test_the_card_leads_with_internal_validation_and_names_the_selection_rule(project) -> None:
    markdown, _, _ = build(project)
    summary = markdown.split("## 2. Summary")[1].split("## 3.")[0]
    rows = [line for line in summary.split("\n") if line.startswith("| AUROC")]
    assert rows[0].startswith("| AUROC, optimism-corrected")  # internal validation first, then the held-out split
    assert rows[1].startswith("| AUROC, held-out test split")
    assert "predictors-only probability" in summary
    assert "generating probability" in summary
    assert "within 1 paired standard error(s) of the lowest" in markdown
    assert "Selection: the declared rule and the margins" in markdown
    assert "The champion is a tree ensemble" not in markdown  # the champion is logreg here


def test_a_tree_champion_gets_the_effective_parameters_warning(project) -> None:
    for relative in ("models/acute/artifacts/model_info.json", "reports/acute/cv_metrics.json"):
        path = project / relative
        payload = json.loads(path.read_text())
        payload["candidate" if "model_info" in relative else "champion"] = "xgboost"
        path.write_text(json.dumps(payload))
    path = project / f"reports/{TASK}/evaluation/evaluation.json"
    payload = json.loads(path.read_text())
    payload["champion"]["candidate"] = "xgboost"
    path.write_text(json.dumps(payload))
    markdown, _, _ = build(project)
    assert "The champion is a tree ensemble" in markdown.split("## 9.")[1].split("## 10.")[0]


def test_the_card_says_when_the_test_split_would_have_picked_another_candidate(project) -> None:
    path = project / f"reports/{TASK}/evaluation/metrics.json"
    payload = json.loads(path.read_text())
    payload["test"]["candidates"]["logreg"]["auroc"] = 0.60
    payload["test"]["candidates"]["xgboost"]["auroc"] = 0.70
    path.write_text(json.dumps(payload))
    markdown, _, _ = build(project)
    assert "The candidate with the highest test AUROC is xgboost" in markdown
    payload["test"]["candidates"]["logreg"]["auroc"] = 0.75
    path.write_text(json.dumps(payload))
    markdown, _, _ = build(project)
    assert "The champion also has the highest test AUROC of the candidates." in markdown


def test_text_from_input_files_is_never_read_as_markup(project) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tasks"][TASK]["description"] = "Before a **single** `x` infusion [see](http://example.org)."
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    markdown, html_text, _ = build(project)
    assert "<strong>single</strong>" not in html_text
    assert 'href="http://example.org"' not in html_text
    assert "Before a **single** `x` infusion [see](http://example.org)." in html_text.replace("&#x27;", "'")
    assert r"Before a \*\*single\*\* \`x\` infusion" in markdown


def test_interval_reading() -> None:
    words = {"below": "b", "inside": "i", "above": "a", "missing": "m"}
    assert report.interval_reading(0.17, 0.63, 0.5, **words) == "i"
    assert report.interval_reading(0.51, 0.63, 0.5, **words) == "a"
    assert report.interval_reading(0.1, 0.49, 0.5, **words) == "b"
    assert report.interval_reading(None, 0.49, 0.5, **words) == "m"


def test_fmt_number() -> None:
    assert report.fmt_number(0.69294, 3) == "0.693"
    assert report.fmt_number(-0.0001, 3) == "0.000"
    assert report.fmt_number(548, 0) == "548"
    assert report.fmt_number(None, 2) == report.fmt_number(float("nan"), 2) == NA
    assert report.fmt_number(True, 2) == NA
    assert report.fmt_interval(0.1, None, 2) == "no interval"


# --------------------------------------------------------------------------------------------------------------
# content and privacy
# --------------------------------------------------------------------------------------------------------------


def test_required_sections_and_statements(project) -> None:
    markdown, _, _ = build(project)
    for _, title in report.SECTIONS:
        assert title in markdown
    for statement in (
        "Research use only. Not a medical device.",
        "synthetic",
        "doi:10.18112/openneuro.ds005917.v1.0.1",
        "CC0",
        "Item numbering follows the BMJ 2024 checklist as summarised in the project's literature notes",
        report.NOT_IN_REGISTRY,
    ):
        assert statement in markdown, statement
    checklist = next(t for t in md_tables(markdown) if t["header"][0] == "TRIPOD+AI item")
    items = [row[0] for row in checklist["rows"]]
    assert items[:2] == ["1", "2"]
    assert items[-1] == "27"
    anchors = set(re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE))
    for row in checklist["rows"]:  # every item points at a section of the card or says why it does not apply
        assert row[2].startswith("§") or "not applicable" in row[2] or row[0] == "1", row
        if row[2].startswith("§"):
            number, title = row[2][1:].split(" ", 1)
            assert f"{number}. {title}" in anchors


def identifying(ids: set[str]) -> set[str]:
    """The patient ids a card could be checked for: a bare number of up to 5 digits (patient 1, 100 of a trial)
    reads the same as a count or a value in the card, so it is no evidence of a leak; longer numbers (record
    numbers) and ids with other characters are."""
    return {patient for patient in ids if not re.fullmatch(r"\d{1,5}", patient.strip())}


def test_the_privacy_check_matches_real_identifiers_only() -> None:
    ids = {"1", "100", "12345", "syn-000123", "sub-MOA999", "483920", "P07"}
    assert identifying(ids) == {"syn-000123", "sub-MOA999", "483920", "P07"}
    words = set(re.findall(r"[A-Za-z0-9_-]+", "n = 100 patients, 1 site; record 483920"))
    assert identifying(ids) & words == {"483920"}


def test_no_patient_identifier_in_the_card(project) -> None:
    markdown, html_text, _ = build(project)
    for text in (markdown, html_text):
        for patient in PATIENT_IDS:
            assert patient not in text
        assert not re.search(r"syn-\d{6}|sub-[A-Z]{3}\d{3}", text)


def test_unavailable_external_validation_and_explanations_are_said_not_hidden(
    project_root, contract, no_mlflow
) -> None:
    fabricate(project_root, contract, external=False, explain=False)
    markdown, _, _ = build(project_root)
    assert "Not available for this task: ds005917 does not record the target" in markdown
    assert "no external validation of any kind" in markdown
    assert "Not available: the explain stage's outputs were not found." in markdown
    check_card(markdown, project_root)


def test_outputs_from_another_training_run_stop_the_stage(project) -> None:
    path = project / f"reports/{TASK}/evaluation/evaluation.json"
    payload = json.loads(path.read_text())
    payload["champion"]["estimator_sha256"] = "c" * 64
    path.write_text(json.dumps(payload))
    with pytest.raises(PipelineError, match="another model"):
        build(project)


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------


def _html_tree(html_text: str) -> ET.Element:
    assert html_text.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(html_text.removeprefix("<!DOCTYPE html>\n"))  # written as well-formed XML


def test_html_is_well_formed_and_self_contained(project) -> None:
    _, html_text, _ = build(project)
    tree = _html_tree(html_text)
    assert tree.tag == "html"
    for tag in ("script", "link", "iframe", "object", "embed"):
        assert tree.findall(f".//{tag}") == [], tag
    style = "".join(s.text or "" for s in tree.iter("style"))
    assert "url(" not in style
    assert "@import" not in style
    images = list(tree.iter("img"))
    expected = [*report.EVALUATION_FIGURES, *report.EXPLAIN_FIGURES]
    assert len(images) == len(expected)
    folders = {
        **dict.fromkeys(report.EVALUATION_FIGURES, "evaluation"),
        **dict.fromkeys(report.EXPLAIN_FIGURES, "explain"),
    }
    embedded = {base64.b64decode(img.get("src").removeprefix("data:image/png;base64,")) for img in images}
    on_disk = {(project / f"reports/{TASK}/{folders[name]}/figures/{name}").read_bytes() for name in expected}
    assert embedded == on_disk
    for element in tree.iter():
        for attribute in ("src", "href"):
            value = element.get(attribute) or ""
            if element.tag != "a":  # hyperlinks (DOIs) are for reading on, never needed to render the page
                assert not value or value.startswith("data:"), (element.tag, value)
    ids = [element.get("id") for element in tree.iter() if element.get("id")]
    assert len(ids) == len(set(ids))
    for link in tree.iter("a"):  # every in-page link has a target
        if link.get("href", "").startswith("#"):
            assert link.get("href")[1:] in ids


def _cell_text(element: ET.Element) -> str:
    return "".join(element.itertext()).strip()


def test_html_and_markdown_carry_the_same_tables(project) -> None:
    markdown, html_text, _ = build(project)
    md = md_tables(markdown)
    tables = list(_html_tree(html_text).iter("table"))
    assert len(tables) == len(md)
    for md_table, table in zip(md, tables, strict=True):
        header = [_cell_text(th) for th in table.iter("th")]
        assert header == md_table["header"]
        rows = [[_cell_text(td) for td in tr.iter("td")] for tr in table.find("tbody").iter("tr")]
        assert rows == [[_strip_code(c) for c in row] for row in md_table["rows"]]


def test_outputs_are_byte_identical_for_the_same_inputs(project) -> None:
    first_md, first_html, _ = build(project)
    second_md, second_html, _ = build(project)
    assert first_md == second_md
    assert first_html == second_html


# --------------------------------------------------------------------------------------------------------------
# MLflow, the stage and dvc.yaml
# --------------------------------------------------------------------------------------------------------------


def test_main_writes_the_card_without_an_mlflow_store(project) -> None:
    report.main(TASK)
    folder = project / "reports" / TASK
    markdown = (folder / report.MARKDOWN_FILE).read_text()
    assert report.NOT_IN_REGISTRY in markdown
    assert (folder / report.HTML_FILE).read_text().startswith("<!DOCTYPE html>")
    assert not (project / "mlflow.db").exists()  # looking for the registry must not create a store
    check_card(markdown, project)


def _register(root: Path, sha: str, *, champion: bool) -> tuple[str, str]:
    tracking.configure(root, f"trd-{TASK}")
    with mlflow.start_run(run_name=f"train-{TASK}", tags={"git_sha": "d" * 40}) as run:
        mlflow.log_param("seed", 1)
    client = MlflowClient()
    client.create_registered_model(f"trd-{TASK}")
    version = client.create_model_version(
        f"trd-{TASK}", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
        tags={"estimator_sha256": sha, "gate": "passed"},
    )  # fmt: skip
    if champion:
        client.set_registered_model_alias(f"trd-{TASK}", "champion", version.version)
    return run.info.run_id, str(version.version)


def test_main_states_the_registry_version_and_alias_and_logs_the_card(project, mlflow_store) -> None:
    run_id, version = _register(project, SHA, champion=True)
    report.main(TASK)
    markdown = (project / "reports" / TASK / report.MARKDOWN_FILE).read_text()
    assert f"| registered model version | {version} | `MLflow registry, by estimator_sha256` |" in markdown
    assert "| holds the `champion` alias | yes |" in markdown
    # the card says where the run is, never its id or the current HEAD: it must not change when they do
    assert "| MLflow training run | experiment trd-acute, the version's run" in markdown
    assert run_id not in markdown
    assert "rev-parse HEAD" not in markdown
    assert "d" * 40 in markdown
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, report.MLFLOW_ARTIFACT_PATH)}
    assert artifacts == {f"{report.MLFLOW_ARTIFACT_PATH}/{report.MARKDOWN_FILE}",
                         f"{report.MLFLOW_ARTIFACT_PATH}/{report.HTML_FILE}"}  # fmt: skip


def test_a_version_without_the_alias_says_so(project, mlflow_store) -> None:
    _register(project, SHA, champion=False)
    markdown, _, inputs = build(project)
    assert not inputs.registry.holds_champion
    assert "| holds the `champion` alias | no: no version holds the alias |" in markdown


def test_a_registry_without_this_estimator_is_not_found(project, mlflow_store) -> None:
    _register(project, "e" * 64, champion=True)
    markdown, _, inputs = build(project)
    assert not inputs.registry.found
    assert report.NOT_IN_REGISTRY in markdown


def test_dvc_yaml_declares_the_stage_and_every_file_it_reads(project) -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["report"]
    assert stage["foreach"] == "${tasks}"
    assert stage["do"]["cmd"] == "python -m pipeline report ${key}"
    assert stage["do"]["outs"] == [f"reports/${{key}}/{report.MARKDOWN_FILE}", f"reports/${{key}}/{report.HTML_FILE}"]
    deps = [d.replace("${key}", TASK) for d in stage["do"]["deps"]]
    assert "dvc.lock" not in deps

    def covered(path: str) -> bool:
        return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)

    _, _, inputs = build(project)
    read = [value.path for value in vars(inputs).values() if isinstance(value, report.Sourced)]
    read += [s.path for s in inputs.sources.values()]
    read += [inputs.feature_spec_path, "configs/cohort_schema.yaml"]
    read += [f"reports/{TASK}/{href}" for href, _ in inputs.figures.values()]
    assert inputs.explain is not None
    read += [s.path for s in (inputs.explain.fidelity, inputs.explain.explanation, inputs.explain.importance)]
    read += [f"reports/{TASK}/{href}" for href, _ in inputs.explain.figures.values()]
    missing = sorted(path for path in read if not covered(path))
    assert not missing, f"read but not declared as dvc.yaml deps: {missing}"


def test_cli_has_the_report_command() -> None:
    from typer.main import get_command

    from pipeline.cli import app

    assert "report" in get_command(app).commands


# --------------------------------------------------------------------------------------------------------------
# the real outputs, when the pipeline has run
# --------------------------------------------------------------------------------------------------------------

REAL_INPUTS = [REPO_ROOT / f"reports/{TASK}/evaluation/metrics.json", REPO_ROOT / f"reports/{TASK}/cv_metrics.json"]


@pytest.mark.skipif(not all(p.is_file() for p in REAL_INPUTS), reason="the pipeline has not run here (dvc repro)")
def test_card_over_the_real_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    # the registry is not read here: the numbers are what is checked, and the real store may be busy
    monkeypatch.setattr(report, "registry_info", lambda root, name, sha: report.RegistryInfo(name, reason="skipped"))
    markdown, html_text, _ = build(REPO_ROOT)
    result = check_card(markdown, REPO_ROOT)
    assert result["checked"] > 300
    _html_tree(html_text)
    test_ids = pd.read_parquet(REPO_ROOT / f"data/processed/{TASK}/test.parquet", columns=["patient_id"])
    cohort = REPO_ROOT / "data/interim/cohort.parquet"
    ids = set(test_ids["patient_id"].astype(str))
    if cohort.is_file():
        ids |= set(pd.read_parquet(cohort, columns=["patient_id"])["patient_id"].astype(str))
    words = set(re.findall(r"[A-Za-z0-9_-]+", markdown))
    assert not identifying(ids) & words
