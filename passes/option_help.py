"""What each pass option means, read from the comments next to it in its ``Options`` class.

The comments in the option dataclasses are where the meaning of each option is
written down (next to the default it explains); ``autoglm passes`` shows them,
so there is one text to keep right, not a second help table that drifts.
A field's own trailing comment wins; otherwise the comment block right above it.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize

__all__ = ["option_help"]

_FIELD = re.compile(r"^\s*([A-Za-z_]\w*)\s*:")


def _comments_by_line(source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def option_help(options_cls: type) -> dict[str, str]:
    """``{field name: its comment}`` for a dataclass of pass options (empty when no source)."""
    if not dataclasses.is_dataclass(options_cls):
        return {}
    try:
        source = inspect.getsource(options_cls)
    except (OSError, TypeError):  # no source shipped (frozen build): no descriptions
        return {}
    lines = source.splitlines()
    comments = _comments_by_line(source)
    names = {f.name for f in dataclasses.fields(options_cls)}
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        m = _FIELD.match(line)
        if not m or m.group(1) not in names or m.group(1) in out:
            continue
        text = comments.get(number, "") if not line.lstrip().startswith("#") else ""
        if not text:  # the comment block right above the field
            block, above = [], number - 1
            while above >= 1 and lines[above - 1].lstrip().startswith("#"):
                block.insert(0, comments.get(above, ""))
                above -= 1
            text = " ".join(block)
        if text:
            out[m.group(1)] = text
    return out
