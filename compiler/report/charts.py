"""Small inline-SVG charts for the report (no plotting library, no scripts).

Every text is sized to stay inside the chart's ``viewBox``: a label longer than
the label column is shortened with an ellipsis (the full label is in the bar's
hover ``<title>``), and the chart is widened to hold the longest value and the
title. The page's self-check (``html.py``) verifies this in the browser.
"""
from __future__ import annotations

from typing import Callable, Sequence

from autoglm.report.fmt import esc

__all__ = ["bar_chart", "CHAR_W", "MAX_LABEL_W"]

CHAR_W = 7.4  # a generous average glyph width of 12px system-ui (digits and capitals are the widest)
MAX_LABEL_W = 300.0


def _fit(text: str, width: float) -> str:
    """``text`` cut to ``width``; from the left, since a layer path's tail tells bars apart
    (``…layer.11.attention.self.query``, not ``model.encoder.layer.1…``)."""
    chars = max(4, int(width / CHAR_W))
    return text if len(text) <= chars else "…" + text[len(text) - chars + 1:]


def bar_chart(rows: Sequence[tuple[str, float]], fmt: Callable[[float], str], colours: Sequence[str] | None = None,
              title: str = "", css_class: str = "chart") -> str:
    """Horizontal bars, one per ``(label, value)``; bars of values below zero have no length."""
    rows = [(str(label), float(value)) for label, value in rows]
    if not rows:
        return ""
    label_w = min(MAX_LABEL_W, max(len(label) for label, _ in rows) * CHAR_W + 12)
    values = [fmt(v) for _, v in rows]
    bar_w, bar_h, gap, top = 360.0, 18.0, 6.0, 24.0 if title else 6.0
    value_w = max(len(v) for v in values) * CHAR_W + 12
    peak = max((v for _, v in rows), default=0.0) or 1.0
    height = top + len(rows) * (bar_h + gap) + 4
    width = max(label_w + bar_w + value_w, len(title) * CHAR_W + 12)
    parts = [f'<svg class="{esc(css_class)}" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img">']
    if title:
        parts.append(f'<text class="chart-title" x="4" y="16">{esc(title)}</text>')
    for i, ((label, value), shown) in enumerate(zip(rows, values)):
        y = top + i * (bar_h + gap)
        w = max(0.0, value) / peak * bar_w if peak > 0 else 0.0
        colour = colours[i % len(colours)] if colours else "#0072B2"
        parts.append(
            f'<g class="bar"><title>{esc(label)}: {esc(shown)}</title>'
            f'<text class="bar-label" x="{label_w - 6:.1f}" y="{y + bar_h - 5:.1f}">{esc(_fit(label, label_w - 12))}'
            f'</text><rect x="{label_w:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h:.1f}" fill="{colour}"/>'
            f'<text class="bar-value" x="{label_w + w + 4:.1f}" y="{y + bar_h - 5:.1f}">{esc(shown)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
