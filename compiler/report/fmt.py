"""Number formatting and colours shared by the report's tables, drawings and charts."""
from __future__ import annotations

import html
import math
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


def _plain_number(value: float) -> str:
    """A float a reader can read: never scientific notation (1.2e+04 reads as noise in a table)."""
    if value == 0 or not math.isfinite(value):
        return str(value) if not math.isfinite(value) else "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.4g}"
    digits = max(4, 3 - math.floor(math.log10(magnitude)))  # three significant digits below 1
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


# Note keys whose numbers are times although their names carry no unit (quantize's per-row-count
# kernel timings are microseconds).
_UNIT_OF_KEY = {"timed_at_rows": "_us"}


def _time_unit(key: str) -> float | None:
    """Seconds per unit a key's name says its numbers are in (``wall_s``, ``timings_us``, ``latency_ms``)."""
    k = key.lower()
    head = k.split(".")[0]
    k = head + _UNIT_OF_KEY.get(head, "") + k[len(head):]
    for suffix, scale in (("_us", 1e-6), ("_ms", 1e-3), ("_ns", 1e-9), ("_s", 1.0), ("seconds", 1.0)):
        if k.endswith(suffix) or f"{suffix}." in k:
            return scale
    return None


def fmt_value(key: str, value: Any) -> str:
    """Format by what the key says the number is (``*_s``/``*_us``/``*_ms`` times, ``*bytes*``, ``flops``).

    ``key`` may be a dotted path (``timings_us.fbgemm``): the unit of the outer key holds for what
    is inside it. Nested dicts and lists are written out with their numbers formatted the same way.
    """
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        k = key.lower()
        scale = _time_unit(k)
        if scale is not None:
            return fmt_seconds(value * scale)
        if "bytes" in k:
            return fmt_bytes(value)
        if "flops" in k:
            return fmt_flops(value)
        if isinstance(value, float):
            return _plain_number(value)
        return f"{value:,}"
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {fmt_value(f'{key}.{k}', v)}" for k, v in value.items())
        text = "{" + text + "}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(fmt_value(key, v) for v in value) + "]"
    else:
        return str(value)
    return text if len(text) <= 160 else text[:157] + "..."
