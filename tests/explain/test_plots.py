"""Figures and written outputs: log-odds labels, no identifiers, waterfalls named by row number, stable bytes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from matplotlib.text import Text

from pipeline.explain import types
from pipeline.explain.core import example_rows
from pipeline.explain.main import write_per_patient
from pipeline.explain.plots import figures
from pipeline.explain.types import LOG_ODDS
from tests.explain.conftest import FEATURES

# --------------------------------------------------------------------------------------------------------------
# outputs: identifiers, figures, determinism
# --------------------------------------------------------------------------------------------------------------


def figure_texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text()]


def test_every_figure_says_log_odds_and_shows_no_identifier(result, split) -> None:
    import matplotlib.pyplot as plt

    ids = set(split[1]["patient_id"].astype(str))
    drawers = figures(result)
    assert {"importance_bar.png", "beeswarm.png", "fidelity.png"} <= set(drawers)
    assert sum(name.startswith("dependence_") for name in drawers) == 1
    for name, draw in drawers.items():
        figure = draw()
        texts = figure_texts(figure)
        plt.close(figure)
        assert any(LOG_ODDS in text for text in texts), name
        assert not ids & {word for text in texts for word in text.replace("\n", " ").split()}, name


def test_waterfalls_are_named_by_test_row_number(result, written, split) -> None:
    import matplotlib.pyplot as plt

    rows = result.report["rows"]["examples"]
    assert len(rows) == 2
    on_disk = sorted(p.name for p in (written[0] / "figures").glob("waterfall_*.png"))
    assert on_disk == sorted(f"waterfall_row_{row}.png" for row in rows)
    for row in rows:
        figure = figures(result)[f"waterfall_row_{row}.png"]()
        title = " ".join(figure_texts(figure))
        plt.close(figure)
        assert f"test row {row}," in title
        assert split[1]["patient_id"].iloc[row] not in title


def test_example_patients_span_the_predicted_risk_and_are_seeded() -> None:
    p = np.linspace(0.05, 0.95, 400)
    picks = example_rows(p, 4, np.random.default_rng(1))
    assert [int(row // 100) for row in picks] == [0, 1, 2, 3]  # one per quarter of the risk ordering
    assert picks.tolist() == example_rows(p, 4, np.random.default_rng(1)).tolist()
    assert example_rows(p, 0, np.random.default_rng(1)).size == 0


def test_report_outputs_hold_no_identifiers_and_are_byte_identical(written, split) -> None:
    first, second = written
    ids = split[1]["patient_id"].astype(str).tolist()
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert {"fidelity.json", "explanation.json", "importance.csv", "sign_checks.csv"} <= {str(f) for f in files}
    for relative in files:
        content = (first / relative).read_bytes()
        assert content == (second / relative).read_bytes(), relative
        assert not [pid for pid in ids if pid.encode() in content], relative
        assert b"patient_id" not in content or relative.name == "explanation.json", relative  # only as a column name
    table = pd.read_csv(first / "importance.csv")
    assert set(table["feature"]) == set(FEATURES)  # canonical names, not route=oral or missingindicator_bmi


def test_fidelity_json_holds_only_numbers(written) -> None:
    payload = json.loads((written[0] / "fidelity.json").read_text())

    def leaves(node):
        for value in node.values():
            yield from leaves(value) if isinstance(value, dict) else [value]

    assert all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in leaves(payload))
    expected = {"patient_correlation_median", "rank_spearman_true", "noise_share", "sign_agreement", "noise_best_rank"}
    assert expected <= set(payload["fidelity"])


def test_per_patient_values_keep_the_identifier_under_data(result, split, tmp_path) -> None:
    folder = tmp_path / "data" / "explanations" / "acute"
    write_per_patient(result, folder)
    frame = pd.read_parquet(folder / types.PER_PATIENT_FILE)
    assert frame["patient_id"].tolist() == split[1]["patient_id"].astype(str).tolist()
    assert frame.loc[7, "test_row"] == 7
