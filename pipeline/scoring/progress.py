"""The progress bar of ``trd score`` and ``trd validate``: done, share, elapsed time and time remaining (rich)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_wanted() -> bool:
    """Draw a bar only for a person watching: stderr is a terminal (not a log file, CI or a pipe)."""
    return sys.stderr.isatty()


def _columns(unit: str, action: str, exact: bool) -> list[ProgressColumn]:
    # an estimated total is shown as a share only: a count "of 1,000,000" would read as a promise
    done = MofNCompleteColumn() if exact else TextColumn(f"{{task.completed:,.0f}} {unit}")
    return [
        TextColumn(f"{action} {unit}"),
        BarColumn(),
        done,
        TaskProgressColumn(show_speed=True),  # the speed while no total is known (a CSV without line breaks)
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


@contextmanager
def progress_bar(
    enabled: bool,
    total: int | None,
    *,
    unit: str = "rows",
    action: str = "scoring",
    estimated: bool = False,
    console: Console | None = None,
) -> Iterator[Callable[[int], None]]:
    """A transient bar counting ``unit`` towards ``total`` with the time remaining; yields the function that
    advances it (quiet when disabled). An ``estimated`` total (a CSV's rows, guessed from its size) is shown as a
    share, not as a count; once reached, it is moved one step further each step, so the bar never claims the
    end before it. Drawn on stderr, beside the run's messages, unless a ``console`` is given."""
    if not enabled:
        yield lambda n: None
        return
    columns = _columns(unit, action, exact=total is not None and not estimated)
    with Progress(*columns, transient=True, console=console or Console(stderr=True)) as bar:
        task = bar.add_task(unit, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)
            state = bar.tasks[0]
            if estimated and state.total is not None and state.completed >= state.total:
                # the estimate was short: expect one more step like this one rather than claim the end
                bar.update(task, total=state.completed + n)

        yield advance
