from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.io import (
    atomic_folder,
    atomic_path,
    flatten_metrics,
    json_ready,
    read_parquet,
    write_frame_csv,
    write_json,
    write_parquet,
)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"

    def interrupted_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert list(tmp_path.iterdir()) == []


def test_folder_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "old.json").write_text("{}")

    def interrupted_fill() -> None:
        with atomic_folder(folder) as staging:
            (staging / "new.json").write_text("{}")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_fill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind
    assert sorted(p.name for p in folder.iterdir()) == ["old.json"]
    with atomic_folder(folder) as staging:
        (staging / "new.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["new.json"]  # the old content is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_parquet_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, None], "b": pd.array(["x", None], dtype="string")})
    write_parquet(frame, tmp_path / "one.parquet")
    write_parquet(frame, tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "one.parquet"), frame, check_dtype=False)


def test_json_refuses_nan_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json({"x": float("nan")}, tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_parquet_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(PipelineError, match="not a readable Parquet"):
        read_parquet(bad)
    with pytest.raises(PipelineError, match="not found"):
        read_parquet(tmp_path / "missing.parquet")


def test_json_ready_and_flatten() -> None:
    nested = {"a": {"b": np.float64("nan"), "c": np.int64(3), "d": {"e": 0.5}, "f": np.bool_(True)}}
    assert json_ready(nested) == {"a": {"b": None, "c": 3, "d": {"e": 0.5}, "f": True}}
    # missing values and flags are not metrics: only finite numbers reach MLflow
    assert flatten_metrics(json_ready(nested)) == {"a.c": 3.0, "a.d.e": 0.5}


def test_frame_csv_has_six_significant_digits_and_lf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.csv"
    write_frame_csv(pd.DataFrame({"x": [1 / 3, 2.0], "y": ["a", "b"]}), path)
    assert path.read_bytes() == b"x,y\n0.333333,a\n2,b\n"
