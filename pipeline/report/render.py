"""Rendering: ``card_data`` through the Jinja2 templates to Markdown, and that Markdown through markdown-it-py to
one self-contained HTML page (inline CSS, figures as base64 data URIs, no script), so both carry the same facts.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import jinja2
from markdown_it import MarkdownIt

from pipeline.report.format import NA, fmt_cell, fmt_interval, fmt_number, md_code, md_escape, sentence, slug

TEMPLATES = Path(__file__).parent / "templates"
CSS_FILE = TEMPLATES / "card.css"
CARD_TEMPLATE = "card.md.j2"


def _cell(cell: dict[str, Any]) -> str:
    """One table cell of a fact, a text cell or an interval, formatted and Markdown-safe."""
    if "fact" in cell:  # a keyed row's value
        cell = {**cell["fact"], "digits": cell["digits"]}
    if "text" in cell:
        return cell["text"]
    if "lower" in cell:
        return fmt_interval(cell["lower"]["value"], cell["upper"]["value"], cell["digits"])
    value = cell["value"]
    if value is None and cell.get("absent"):
        return cell["absent"]
    shown = fmt_cell(value, cell.get("digits"))
    return shown if shown == NA else md_escape(shown)


def md_table(table: dict[str, Any]) -> str:
    """A GFM table from a ``keyed``, ``grid`` or ``plain`` table of :mod:`pipeline.report.tables`."""
    if table["kind"] == "keyed":
        rows = []
        for row in table["rows"]:
            cells = [row["label"], _cell(row)]
            if "interval" in row:
                pair = row["interval"]
                cells.append("" if pair is None else _cell({**pair, "digits": row["digits"]}))
            rows.append([*cells, md_code(row["cite"])])
    elif table["kind"] == "grid":
        rows = [[_cell(cell) for cell in row] for row in table["rows"]]
    else:
        rows = table["rows"]
    lines = [
        "| " + " | ".join(md_escape(h) for h in table["header"]) + " |",
        "|" + "|".join(" --- " for _ in table["header"]) + "|",
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]
    if table.get("source"):
        lines += ["", table["source"]]
    return "\n".join(lines)


def _ref(sections: list[dict[str, str]]) -> Any:
    by_key = {s["key"]: s for s in sections}

    def ref(key: str) -> str:
        """A link to a section: '[§9 Sample size (Riley criteria)](#9-sample-size-riley-criteria)'."""
        section = by_key[key]
        return f"[§{section['number']} {md_escape(section['title'])}](#{section['anchor']})"

    return ref


def environment() -> jinja2.Environment:
    env = jinja2.Environment(  # noqa: S701 (Markdown, not HTML: escaping is md_escape, applied per value)
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        md=md_escape,
        code=md_code,
        num=fmt_number,
        interval=fmt_interval,
        cell=_cell,
        table=md_table,
        sentence=sentence,
    )
    return env


def render_markdown(card: dict[str, Any]) -> str:
    text = environment().get_template(CARD_TEMPLATE).render(card=card, ref=_ref(card["sections"]))
    # templates separate blocks by blank lines; conditional blocks may leave more than one
    text = re.sub(r"\n{3,}", "\n\n", text)
    return "\n".join(line.rstrip() for line in text.strip().split("\n")) + "\n"


def _markdown_it(figures: dict[str, bytes]) -> MarkdownIt:
    """CommonMark with GFM tables; raw HTML in the Markdown is shown as text, never passed through."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def heading_ids(state: Any) -> None:  # GitHub's anchors, so the card's own section links work in HTML too
        for i, token in enumerate(state.tokens):
            if token.type == "heading_open":
                token.attrSet("id", slug(state.tokens[i + 1].content))

    md.core.ruler.push("heading_ids", heading_ids)

    def image(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        src = str(token.attrGet("src"))
        alt = html.escape(token.content)
        if src in figures:  # self-contained: the bytes, not a link to a file beside the card
            src = "data:image/png;base64," + base64.b64encode(figures[src]).decode("ascii")
        return f'<img src="{html.escape(src)}" alt="{alt}" />'

    def blockquote_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        inline = tokens[idx + 2] if idx + 2 < len(tokens) else None
        warning = inline is not None and inline.content.startswith(("**Research use only", "**Underpowered."))
        return '<blockquote class="warning">\n' if warning else "<blockquote>\n"

    md.add_render_rule("image", image)
    md.add_render_rule("blockquote_open", blockquote_open)
    return md


def render_html(markdown: str, title: str, figures: dict[str, bytes]) -> str:
    """The Markdown card as one page; ``figures`` maps each image path in the Markdown to its PNG bytes."""
    body = _markdown_it(figures).render(markdown)
    css = CSS_FILE.read_text(encoding="utf-8")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8" />\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1" />\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{css}</style>\n</head>\n"
        f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )
