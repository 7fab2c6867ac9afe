"""Rendering: Markdown from card_data through the templates, HTML from that Markdown; both carry the same tables,
text from input files is never markup, the page is self-contained, and the same inputs give the same bytes."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET

import yaml

from pipeline.report.format import NA, fmt_interval, fmt_number, interval_reading, md_escape
from pipeline.report.inputs import EVALUATION_FIGURES, EXPLAIN_FIGURES
from pipeline.report.render import md_table, render_html, render_markdown
from pipeline.report.stage import render
from tests.report.fixtures import TASK, build


def _page(project) -> tuple[dict, str, str]:
    _, markdown, inputs = build(project)
    card, markdown_again, page = render(inputs, project)
    assert markdown_again == markdown
    return card, markdown, page


def _tree(page: str) -> ET.Element:
    assert page.startswith("<!DOCTYPE html>\n")
    return ET.fromstring(page.removeprefix("<!DOCTYPE html>\n"))  # well-formed as XML too


def _text(element: ET.Element) -> str:
    return "".join(element.itertext()).strip()


def test_markdown_is_card_data_through_the_templates(project) -> None:
    card, markdown, _ = _page(project)
    assert render_markdown(json.loads(json.dumps(card))) == markdown  # card_data.json alone rebuilds the card
    row = next(r for r in card["summary"]["table"]["rows"] if r["label"] == "AUROC, held-out test split")
    shown = f"| AUROC, held-out test split | {fmt_number(row['fact']['value'], 3)} | "
    assert shown + fmt_interval(row["interval"]["lower"]["value"], row["interval"]["upper"]["value"], 3) in markdown


def _md_cells(line: str) -> list[str]:
    """A Markdown table row's cells as the reader sees them: links as their text, no backticks or escapes."""
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    cells = [re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell.strip()) for cell in cells]
    return [re.sub(r"\\(.)", r"\1", cell.replace("`", "")) for cell in cells]


def test_html_and_markdown_carry_the_same_tables(project) -> None:
    _, markdown, page = _page(project)
    md_rows = [line for line in markdown.split("\n") if line.startswith("| ") and not line.startswith("| ---")]
    html_rows = [[_text(cell) for cell in tr] for tr in _tree(page).iter("tr")]
    assert len(md_rows) == len(html_rows) > 100
    for line, cells in zip(md_rows, html_rows, strict=True):
        assert _md_cells(line) == cells, line


def test_html_is_well_formed_and_self_contained(project) -> None:
    _, _, page = _page(project)
    tree = _tree(page)
    for tag in ("script", "link", "iframe", "object", "embed"):
        assert tree.findall(f".//{tag}") == [], tag
    style = "".join(s.text or "" for s in tree.iter("style"))
    assert "url(" not in style
    assert "@import" not in style
    images = list(tree.iter("img"))
    assert len(images) == len(EVALUATION_FIGURES) + len(EXPLAIN_FIGURES)
    embedded = {base64.b64decode(img.get("src").removeprefix("data:image/png;base64,")) for img in images}
    on_disk = {p.read_bytes() for p in (project / f"reports/{TASK}").rglob("figures/*.png")}
    assert embedded == on_disk
    ids = [element.get("id") for element in tree.iter() if element.get("id")]
    assert len(ids) == len(set(ids))
    for link in tree.iter("a"):  # every in-page link has a target; other links are DOIs and registrations
        href = link.get("href", "")
        assert href[1:] in ids if href.startswith("#") else href.startswith("https://"), href
    warnings = [q for q in tree.iter("blockquote") if q.get("class") == "warning"]
    assert len(warnings) == 2  # the banner and the out-of-scope section


def test_text_from_input_files_is_never_read_as_markup(project) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tasks"][TASK]["description"] = "Before a **single** `x` <b>infusion</b> [see](http://example.org)."
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _, markdown, page = _page(project)
    assert "<strong>single</strong>" not in page
    assert "<b>" not in page
    assert 'href="http://example.org"' not in page
    assert r"Before a \*\*single\*\* \`x\`" in markdown
    assert "Before a **single** `x` &lt;b&gt;infusion&lt;/b&gt; [see](http://example.org)." in page


def test_outputs_are_byte_identical_for_the_same_inputs(project) -> None:
    assert _page(project) == _page(project)


def test_a_table_renders_every_kind() -> None:
    fact = {"value": 0.5, "source": "m.json#a"}
    keyed = {
        "kind": "keyed",
        "header": ["m", "estimate", "95 % CI", "source"],
        "rows": [
            {"label": "x", "fact": fact, "digits": 2, "cite": "m.json#a", "interval": {"lower": fact, "upper": fact}},
            {
                "label": "y",
                "fact": {"value": None, "source": "m.json#b"},
                "digits": 2,
                "cite": "m.json#b",
                "interval": None,
            },
        ],
    }
    assert md_table(keyed).split("\n")[2:] == [
        "| x | 0.50 | [0.50, 0.50] | `m.json#a` |",
        f"| y | {NA} |  | `m.json#b` |",
    ]
    grid = {
        "kind": "grid",
        "header": ["a|b"],
        "rows": [[{"value": "x_", "source": "s", "digits": None}]],
        "source": "Source: s.",
    }
    assert md_table(grid) == "| a\\|b |\n| --- |\n| x\\_ |\n\nSource: s."


def test_render_html_embeds_only_known_figures() -> None:
    page = render_html("![a](f.png)\n\n![b](other.png)\n", "t", {"f.png": b"\x89PNG"})
    assert 'src="data:image/png;base64,iVBORw=="' in page
    assert 'src="other.png"' in page


def test_formatting_and_readings() -> None:
    assert fmt_number(0.69294, 3) == "0.693"
    assert fmt_number(-0.0001, 3) == "0.000"
    assert fmt_number(548, 0) == "548"
    assert fmt_number(None, 2) == fmt_number(float("nan"), 2) == fmt_number(True, 2) == NA
    assert fmt_interval(0.1, None, 2) == "no interval"
    words = {"below": "b", "inside": "i", "above": "a", "missing": "m"}
    assert [
        interval_reading(lo, hi, 0.5, **words) for lo, hi in ((0.17, 0.63), (0.51, 0.63), (0.1, 0.49), (None, 0.49))
    ] == ["i", "a", "b", "m"]
    assert md_escape("a_b _c* |x| <b>") == "a_b \\_c\\* \\|x\\| \\<b>"
