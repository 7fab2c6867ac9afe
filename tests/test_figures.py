"""The shared figure kit: same drawing -> same PNG bytes, every figure saved, the folder made even when empty."""

from __future__ import annotations

import pytest

from pipeline import figures


def _line() -> object:
    figure = figures.new_figure(3.0, 2.0)
    figure.add_subplot().plot([0, 1], [0, 1])
    return figure


def test_same_drawing_gives_the_same_bytes(tmp_path) -> None:
    figures.save(_line(), tmp_path / "a.png")
    figures.save(_line(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in (tmp_path / "a.png").read_bytes()  # no matplotlib version in the bytes


def test_save_all_draws_each_and_makes_the_folder(tmp_path) -> None:
    figures.save_all({"one.png": _line, "two.png": _line}, tmp_path / "figs")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["one.png", "two.png"]
    figures.save_all({}, tmp_path / "empty")
    assert (tmp_path / "empty").is_dir()
    assert not list((tmp_path / "empty").iterdir())


def test_a_failing_drawer_propagates(tmp_path) -> None:
    def broken() -> object:
        raise ValueError("cannot draw")

    with pytest.raises(ValueError, match="cannot draw"):
        figures.save_all({"bad.png": broken}, tmp_path)
    assert not (tmp_path / "bad.png").exists()
