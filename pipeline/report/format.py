"""How a value becomes card text: one number format, dotted-key lookup, Markdown escaping, interval readings.

Pure and shared by the facts builders (which compute readings) and the Jinja filters (which format cells).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

NA = "–"  # a missing number: an en dash, never a digit, so it cannot be mistaken for a value


def finite(value: Any) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    return math.isfinite(float(value))


def fmt_number(value: Any, digits: int) -> str:
    """``value`` with exactly ``digits`` decimals (ASCII minus, never "-0.00"); NA when missing or not finite."""
    if not finite(value):
        return NA
    out = f"{float(value):.{digits}f}"
    return out.removeprefix("-") if float(out) == 0 else out


def fmt_interval(lower: Any, upper: Any, digits: int) -> str:
    """``[lower, upper]``, or "no interval" when a bound is missing."""
    if not (finite(lower) and finite(upper)):
        return "no interval"
    return f"[{fmt_number(lower, digits)}, {fmt_number(upper, digits)}]"


def fmt_cell(value: Any, digits: int | None) -> str:
    """A table cell: a number with ``digits`` decimals, or text (``digits`` None); yes/no for flags, NA if empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if digits is None:
        return str(value).strip() or NA
    return fmt_number(value, digits)


def level_header(level: float) -> str:
    return f"{level * 100:g} % CI"


def lookup(data: Any, key: str) -> Any:
    """The value at a dotted key (list positions as integers); None when any part is missing."""
    node = data
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def sentence(value: str) -> str:
    """The first letter in upper case: readings are phrases that also start sentences."""
    return value[:1].upper() + value[1:]


def interval_reading(lower: Any, upper: Any, null: float, *, below: str, inside: str, above: str, missing: str) -> str:
    """Which side of ``null`` the interval lies on, in the words given for each case."""
    if not (finite(lower) and finite(upper)):
        return missing
    if float(lower) > null:
        return above
    if float(upper) < null:
        return below
    return inside


def slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


# Only what would format is escaped, so the Markdown stays readable as text: backslash, backtick, asterisk, pipe
# (a table cell ends there), "<" opening a tag, "]" closing a link, "_" at a word boundary.
_MD_SPECIAL = re.compile(r"([\\`*|]|<(?=[A-Za-z/!?])|\[(?=[^\]]*\][(\[:]))")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(value: Any) -> str:
    """Text from an input file, safe in Markdown and in a table cell: punctuation that would format is escaped."""
    return _MD_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", str(value))).replace("\n", " ")


def md_code(value: Any) -> str:
    """A code span holding ``value`` verbatim (a pipe is escaped: it ends a table cell even inside code, GFM)."""
    value = str(value).replace("|", "\\|")
    return f"`` {value} ``" if "`" in value else f"`{value}`"


def codes(names: Any) -> str:
    return ", ".join(md_code(name) for name in names)
