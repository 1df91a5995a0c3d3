"""Small inline-SVG charts for the report (no plotting library, no scripts)."""
from __future__ import annotations

from typing import Callable, Sequence

from autoglm.report.fmt import esc

__all__ = ["bar_chart"]


def bar_chart(rows: Sequence[tuple[str, float]], fmt: Callable[[float], str], colours: Sequence[str] | None = None,
              title: str = "", css_class: str = "chart") -> str:
    """Horizontal bars, one per ``(label, value)``; values below zero are drawn from zero leftwards-clipped."""
    rows = [(str(label), float(value)) for label, value in rows]
    if not rows:
        return ""
    label_w = min(260.0, max(len(label) for label, _ in rows) * 7.0 + 12)
    bar_w, bar_h, gap, top = 360.0, 18.0, 6.0, 24.0 if title else 6.0
    peak = max((v for _, v in rows), default=0.0) or 1.0
    height = top + len(rows) * (bar_h + gap) + 4
    width = label_w + bar_w + 90
    parts = [f'<svg class="{esc(css_class)}" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img">']
    if title:
        parts.append(f'<text class="chart-title" x="4" y="16">{esc(title)}</text>')
    for i, (label, value) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(0.0, value) / peak * bar_w
        colour = colours[i % len(colours)] if colours else "#0072B2"
        parts.append(
            f'<g class="bar"><title>{esc(label)}: {esc(fmt(value))}</title>'
            f'<text class="bar-label" x="{label_w - 6:.1f}" y="{y + bar_h - 5:.1f}">{esc(label)}</text>'
            f'<rect x="{label_w:.1f}" y="{y:.1f}" width="{w:.1f}" height="{bar_h:.1f}" fill="{colour}"/>'
            f'<text class="bar-value" x="{label_w + w + 4:.1f}" y="{y + bar_h - 5:.1f}">{esc(fmt(value))}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
