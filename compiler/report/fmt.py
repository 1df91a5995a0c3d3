"""Number formatting and colours shared by the report's tables, drawings and charts."""
from __future__ import annotations

import html
from typing import Any

__all__ = ["esc", "fmt_bytes", "fmt_flops", "fmt_seconds", "fmt_value", "partition_colour", "PALETTE"]

# Colour-blind-friendly (Okabe-Ito plus extras); partition p uses PALETTE[p % len].
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999",
           "#6A3D9A", "#B15928"]
NO_PARTITION = "#B0B0B0"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def partition_colour(partition: Any) -> str:
    if partition is None or partition == "":
        return NO_PARTITION
    try:
        return PALETTE[int(partition) % len(PALETTE)]
    except (TypeError, ValueError):
        return NO_PARTITION


def _scaled(value: float, units: list[str], base: float) -> str:
    v = float(value)
    for unit in units[:-1]:
        if abs(v) < base:
            return f"{v:.3g} {unit}".strip()
        v /= base
    return f"{v:.3g} {units[-1]}"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    return _scaled(n, ["B", "KiB", "MiB", "GiB", "TiB"], 1024.0)


def fmt_flops(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    return _scaled(n, ["", "K", "M", "G", "T", "P"], 1000.0)


def fmt_seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    s = float(s)
    if s == 0:
        return "0"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if abs(s) < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_value(key: str, value: Any) -> str:
    """Format by what the key says the number is (``*_s`` seconds, ``*bytes*``, ``flops``)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        k = key.lower()
        if k.endswith("_s") or k.endswith("seconds"):
            return fmt_seconds(value)
        if "bytes" in k:
            return fmt_bytes(value)
        if "flops" in k:
            return fmt_flops(value)
        if isinstance(value, float):
            return f"{value:.4g}"
        return f"{value:,}"
    if isinstance(value, (list, dict)):
        import json

        text = json.dumps(value)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)
