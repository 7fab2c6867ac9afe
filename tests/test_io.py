from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.io import atomic_folder, atomic_path, read_parquet, write_json, write_parquet


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
