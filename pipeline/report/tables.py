"""Facts and tables as plain data: what ``card_data.json`` holds and the templates render.

A fact is ``{"value": v, "source": s}``. ``s`` is ``<file>#<dotted key>`` when ``v`` was read from a file (a CSV
file's key is ``<row>.<column>``, rows counted from 0), so a test can read it back and compare; otherwise it says
where ``v`` came from (``computed: …``, ``MLflow …``, ``git …``). Tables come in three kinds, rendered by one
template macro: ``keyed`` (a labelled row per fact, with its source), ``grid`` (a fact per cell, the source in a
line under the table) and ``plain`` (Markdown cells that hold no result).
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.report.format import md_code
from pipeline.report.inputs import Sourced

Fact = dict[str, Any]


def clean(value: Any) -> Any:
    """JSON-ready: a NaN or infinity becomes None (the card shows NA), numpy scalars become Python ones."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fact(file: Sourced, key: str) -> Fact:
    return {"value": clean(file.get(key)), "source": f"{file.path}#{key}"}


def other(value: Any, source: str) -> Fact:
    """A value that is not in a file: computed by the card, or read from the registry or git."""
    return {"value": clean(value), "source": source}


class Keyed:
    """Rows of (label, value [, interval], source); labels are Markdown."""

    def __init__(self, label: str, level_header: str | None = None) -> None:
        self.header = (
            [label, "value", "source"] if level_header is None else [label, "estimate", level_header, "source"]
        )
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        label: str,
        value: Fact,
        digits: int | None,
        *,
        interval: tuple[Fact, Fact] | None = None,
        cite: str | None = None,
    ) -> None:
        row = {"label": label, "fact": value, "digits": digits, "cite": cite or value["source"]}
        if len(self.header) == 4:
            row["interval"] = None if interval is None else {"lower": interval[0], "upper": interval[1]}
        self.rows.append(row)

    def number(
        self,
        label: str,
        file: Sourced,
        key: str,
        digits: int,
        *,
        interval: bool = False,
        bounds: tuple[str, str] | None = None,
    ) -> None:
        """A number and, with ``interval``, its interval from ``<key>_lower``/``<key>_upper`` or from ``bounds``."""
        pair, cite = None, None
        if interval or bounds:
            lower, upper = bounds or (f"{key}_lower", f"{key}_upper")
            pair = (fact(file, lower), fact(file, upper))
            if bounds:  # other keys than the convention: the source cell names them
                cite = f"{file.path}#{key} [#{lower}, #{upper}]"
        self.add(label, fact(file, key), digits, interval=pair, cite=cite)

    def string(self, label: str, file: Sourced, key: str) -> None:
        self.add(label, fact(file, key), None)

    def computed(self, label: str, value: Any, digits: int | None, how: str) -> None:
        self.add(label, other(value, f"computed: {how}"), None if isinstance(value, str) else digits)

    def other(self, label: str, value: str, where: str) -> None:
        self.add(label, other(value, where), None)

    def data(self) -> dict[str, Any]:
        return {"kind": "keyed", "header": self.header, "rows": self.rows}


def _listed(columns: list[tuple[str, str, int | None]]) -> str:
    return ", ".join(md_code(key) for key, _, _ in columns)


def csv_grid(file: Sourced, columns: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    """Every row of a CSV file, in file order; ``columns`` are (CSV column, header, decimals or None for text)."""
    present = set(file.data[0]) if file.data else set()
    columns = [c for c in columns if c[0] in present]
    rows = [
        [{**fact(file, f"{i}.{key}"), "digits": digits} for key, _, digits in columns] for i in range(len(file.data))
    ]
    source = f"Source: {md_code(file.path)} (rows in file order; columns {_listed(columns)})."
    return {"kind": "grid", "header": [h for _, h, _ in columns], "rows": rows, "source": source}


def json_grid(
    file: Sourced,
    row_header: str,
    rows: list[tuple[str, str]],
    template: str,
    columns: list[tuple[str, str, int | None]],
) -> dict[str, Any]:
    """Cell (row, column) reads ``template`` with ``{row}`` and ``{col}`` filled in; ``key[ci]`` is an interval.

    ``rows`` are (key, label) pairs; the first cell shows the key as code. A count (0 decimals) absent from the
    file is shown as "none": the cleaning report lists only columns with a count.
    """
    body = []
    for row_key, label in rows:
        cells: list[dict[str, Any]] = [{"text": md_code(row_key) + (f" ({label})" if label else "")}]
        for key, _, digits in columns:
            if key.endswith("[ci]"):
                base = template.format(row=row_key, col=key.removesuffix("[ci]"))
                cells.append(
                    {"lower": fact(file, f"{base}_lower"), "upper": fact(file, f"{base}_upper"), "digits": digits or 3}
                )
            else:
                cell = {**fact(file, template.format(row=row_key, col=key)), "digits": digits}
                if digits == 0:
                    cell["absent"] = "none"
                cells.append(cell)
        body.append(cells)
    source = (
        f"Source: {md_code(file.path)}; the cell in row `{{row}}` and column `{{col}}` reads {md_code(template)} "
        f"(columns {_listed(columns)})."
    )
    return {"kind": "grid", "header": [row_header, *(h for _, h, _ in columns)], "rows": body, "source": source}


def plain(header: list[str], rows: list[list[str]]) -> dict[str, Any]:
    """A table of Markdown cells that hold no result (predictors, checklist, hashes)."""
    return {"kind": "plain", "header": header, "rows": rows}
