"""The figure kit shared by the evaluate and explain stages: a blank figure, and the one place figures are saved.

Figures are drawn through matplotlib's object API on the Agg canvas (no pyplot state, no display needed) by pure
functions that return them; stage mains hand them here to be written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

FIGURE_DPI = 120


def new_figure(width: float = 5.5, height: float = 5.0) -> Any:
    """A figure on its own Agg canvas, laid out by constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Any, path: Path) -> None:
    """Write one figure as PNG whose bytes depend on the drawing only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # constrained layout fits our figures; shap's waterfall places its labels by hand and needs the tight box
    # (which costs a second draw, so only there)
    tight = "tight" if figure.get_layout_engine() is None else None
    # no 'Software' entry: the PNG bytes then depend on the drawing only
    figure.savefig(path, format="png", dpi=FIGURE_DPI, metadata={"Software": None}, bbox_inches=tight)


def save_all(drawers: Mapping[str, Callable[[], Any]], folder: Path) -> None:
    """Draw and save each figure in turn (file name -> drawing function), so memory holds one figure at a time.

    The folder exists afterwards even when there is nothing to draw.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name, draw in drawers.items():
        figure = draw()
        save(figure, Path(folder) / name)
        # pyplot keeps figures drawn through it (shap's waterfall) alive until closed; only loaded if one was
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(figure)
