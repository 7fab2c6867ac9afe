"""The progress bar: a count towards a known total, a share towards an estimated one, and the time remaining."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline.scoring.progress import progress_bar


def drawn(total: int | None, estimated: bool, steps: list[int]) -> str:
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=160)
    with progress_bar(True, total, unit="rows", estimated=estimated, console=console) as advance:
        for n in steps:
            advance(n)
            console.file.write("\n")
        advance(0)
    return shown.getvalue()


def test_a_known_total_shows_done_of_total_and_the_time_remaining() -> None:
    text = drawn(1000, False, [400])
    assert "scoring rows" in text
    assert "400/1000" in text
    assert "ETA" in text


def test_an_estimated_total_shows_a_share_not_a_count_and_never_claims_the_end_early() -> None:
    text = drawn(1000, True, [400, 800])
    assert "/1000" not in text  # never "of 1000": the total is a guess
    assert "1,200 rows" in text  # past the estimate the bar still counts
    assert "100%" not in text  # the short estimate moved one step on: 1,200 of about 2,000


def test_an_unknown_total_shows_the_count_and_no_share() -> None:
    text = drawn(None, True, [300])
    assert "300 rows" in text
    assert "%" not in text


def test_a_disabled_bar_draws_nothing(capsys) -> None:
    with progress_bar(False, 10) as advance:
        advance(5)
    assert capsys.readouterr() == ("", "")
