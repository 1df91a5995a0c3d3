"""The report page: one self-contained HTML file (inline CSS, SVG and a few lines of JS).

Sections, each drawn only from the report data dict (the JSON twin):
header (input, frontend, versions, effective config, the command that
reproduces it), summary, passes and provenance, the graph (collapsible
views), partitions, branch map, accuracy, latency, pass notes, and the full
node table. Sections whose facts are absent say so in one line rather than
vanish, so a reader knows the compiler did not measure it.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from autoglm.report.charts import bar_chart
from autoglm.report.fmt import PALETTE, esc, fmt_bytes, fmt_flops, fmt_seconds, fmt_value, partition_colour
from autoglm.report.script import NAVIGATE_JS
from autoglm.report.svg import MARK_BADGES, dom_id

__all__ = ["render_page"]

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1400px;padding:0 18px 40px;
color:#222;background:#fff}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td{max-width:420px;overflow-wrap:anywhere}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace}pre{background:#f7f7f7;padding:8px;overflow:auto}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:6px 12px}
.card b{display:block;font-size:18px}.muted{color:#777}
.legend span{display:inline-block;margin-right:14px}.swatch{display:inline-block;width:12px;height:12px;
border:1px solid #333;vertical-align:middle;margin-right:4px;opacity:.6}
section.view{border:1px solid #ccc;border-radius:6px;margin:10px 0;padding:6px}
section.view>header{font-weight:600;margin-bottom:4px}section.view>header button{margin-left:6px;font-weight:400}
.viewport{overflow:hidden;border:1px solid #eee;background:#fcfcfc;touch-action:none;cursor:grab}
.viewport svg.graph{display:block}svg.graph.panning{cursor:grabbing}
#graph-columns.compare{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}
#graph-columns h3{margin:4px 0}.delta{color:#555;font-size:12px}
svg.graph text{font:11px system-ui,sans-serif;text-anchor:middle;fill:#111;pointer-events:none}
svg.graph text.sub{font-size:9.5px;fill:#333}svg.graph text.badge{font-size:8.5px;fill:#fff;font-weight:700}
svg.graph .node>rect:first-of-type{fill-opacity:.45;stroke:#333;stroke-width:1}
svg.graph .node.created>rect:first-of-type{stroke-width:2.6}
svg.graph .group{cursor:pointer}svg.graph .group rect.inner{fill:none;stroke:#333;stroke-width:.6}
svg.graph .group:hover>rect:first-of-type,svg.graph .group:focus>rect:first-of-type{stroke:#000;stroke-width:2}
svg.graph .group.open>rect:first-of-type{fill-opacity:.15;stroke-dasharray:4 2}
svg.graph .node.hit>rect:first-of-type{stroke:#e00;stroke-width:3}
svg.graph .edge path{fill:none;stroke:#777;stroke-opacity:.8}
svg.graph .edge.cut path{stroke:#d00;stroke-dasharray:5 3}
svg.graph .port rect{fill:#fff;stroke:#999;stroke-dasharray:3 2}svg.graph .port text{fill:#666;font-size:10px}
svg.graph .port-edge path{stroke:#aaa;stroke-width:1;stroke-dasharray:3 2}
svg.chart text{font:12px system-ui,sans-serif}svg.chart .bar-label{text-anchor:end}
svg.chart .chart-title{font-weight:600}
details>summary{cursor:pointer;margin:6px 0}
"""

def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, css: str = "") -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f'<td{" class=num" if num else ""}>{esc(fmt_value(c, v))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt_value(k, v))}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>" if rows else ""


def _flatten_row(row: dict[str, Any]) -> dict[str, Any]:
    """Small nested dicts of scalars become columns (``latency_ms.dense``) instead of JSON blobs."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict) and 0 < len(v) <= 6 and all(isinstance(x, (int, float, bool)) or x is None
                                                           for x in v.values()):
            out.update({f"{k}.{sub}": x for sub, x in v.items()})
        else:
            out[k] = v
    return out


def _tabular(value: Any) -> list[dict[str, Any]] | None:
    """A list of dicts, or a dict of dicts (keyed rows), as table rows; else None."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_flatten_row(v) for v in value]
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [_flatten_row({"name": k, **v}) for k, v in value.items()]
    return None


def _metric_charts(rows: list[dict[str, Any]]) -> str:
    """A bar chart for each accuracy/latency-like numeric column of a table."""
    out = []
    label_key = next((k for k in ("name", "layer", "node", "output", "variant") if k in rows[0]), None)
    for col in rows[0]:
        low = col.lower()
        if not any(s in low for s in ("sqnr", "error", "latency", "median_s", "speedup", "accuracy")):
            continue
        vals = [(str(r.get(label_key, i)) if label_key else str(i), r.get(col)) for i, r in enumerate(rows)]
        vals = [(k, v) for k, v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if vals:
            out.append(bar_chart(vals[:60], lambda v, c=col: fmt_value(c, v), title=col))
    return "".join(out)


def _generic(value: Any, charts: bool = True) -> str:
    """Render a JSON value: scalars as a key/value table, row-like entries as tables (+ charts)."""
    rows = _tabular(value)
    if rows is not None:
        return _table(rows) + (_metric_charts(rows) if charts else "")
    if isinstance(value, dict):
        scalars = [(k, v) for k, v in value.items() if _tabular(v) is None]
        parts = [_kv(scalars)]
        for k, v in value.items():
            sub = _tabular(v)
            if sub is not None:
                body = _table(sub) + (_metric_charts(sub) if charts else "")
                parts.append(f"<h3>{esc(k)}</h3>{body}" if len(sub) <= 50 else
                             f"<details><summary>{esc(k)} ({len(sub)} rows)</summary>{body}</details>")
        return "".join(parts)
    return f"<pre>{esc(json.dumps(value, indent=2))}</pre>"


def _was(now: Any, before: Any, fmt: Any) -> str:
    """``22 MiB (was 87 MiB)`` when the graph as captured differs, else just the value."""
    return fmt(now) if before is None or before == now else f"{fmt(now)} (was {fmt(before)})"


def _speed(data: dict[str, Any]) -> str | None:
    lat = data.get("latency")
    speedup = lat.get("speedup_vs_eager") if isinstance(lat, dict) else None
    return f"{speedup:.2f}x eager" if isinstance(speedup, (int, float)) else None


def _reproduce(h: dict[str, Any]) -> str:
    rep = h.get("reproduce") or {"command": h.get("command", ""), "config_file": None, "kind": "cli"}
    what = "Python" if rep.get("kind") == "python" else "shell"
    out = f'<h3>Reproduce ({what})</h3><pre id="command">{esc(rep["command"])}</pre>'
    if rep.get("config_file"):
        out += (f'<p class="muted">with <code>autoglm-config.json</code> holding the effective config:</p>'
                f'<pre id="effective-config">{esc(json.dumps(rep["config_file"], indent=2))}</pre>')
    return out


def _header(data: dict[str, Any]) -> str:
    h = data["header"]
    inputs = ", ".join(f"{'x'.join(map(str, i['shape']))} {i['dtype']}" for i in h["example_inputs"]) or "-"
    reasons = h.get("frontend_reasons") or {}
    rows = [("input", h["input"]), ("model", h["model_class"] or "-"), ("frontend", h["frontend"]),
            ("example inputs", inputs), ("generated", h["generated_at"]),
            ("versions", ", ".join(f"{k} {v}" for k, v in h["versions"].items()))]
    rows += [(f"frontend {k} failed", v) for k, v in reasons.items()]
    timing = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in (h.get("timings") or {}).items())
    if timing:
        rows.append(("compile time", timing))
    s = data["summary"]
    was = (data.get("captured") or {}).get("summary") or {}
    cards = [("nodes", _was(s["nodes"], was.get("nodes"), lambda v: f"{v:,}")),
             ("FLOPs", fmt_flops(s["flops"])),
             ("parameters", _was(s["param_bytes"], was.get("param_bytes"), fmt_bytes)),
             ("est. cost", _was(s["cost_s"], was.get("cost_s"), fmt_seconds)), ("passes", str(s["passes"]))]
    speed = _speed(data)
    if speed:
        cards.append(("measured speed", speed))
    if data["partitions"]:
        cards.append(("partitions", str(len(data["partitions"]["rows"]))))
    card_html = "".join(f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in cards)
    return (f"<h1>autoglm report: {esc(h['model_class'] or h['input'])}</h1>{_kv(rows)}"
            f"<div class=\"cards\" id=\"cards\">{card_html}</div>{_reproduce(h)}"
            f"<details><summary>Compile config</summary><pre>{esc(json.dumps(h['config'], indent=2))}</pre>"
            f"</details>")


_PASS_COLUMNS = ["name", "spec", "exact", "wall_s", "nodes_before", "nodes_after", "modified", "created", "removed",
                 "max_abs_error", "sqnr_db"]


def _passes(data: dict[str, Any]) -> str:
    rows = [{c: r.get(c) for c in _PASS_COLUMNS} for r in data["passes"]]
    table = _table(rows, _PASS_COLUMNS, css="passes") if rows else '<p class="muted">No passes ran.</p>'
    prov = _table([{"created_by": k, "nodes": v} for k, v in sorted(data["provenance"].items())], css="provenance")
    return (f'<h2 id="passes">Passes</h2>{table}<h3>Provenance (nodes in the final graph by the pass that '
            f'created them)</h3>{prov}')


def _legend(data: dict[str, Any], engine: str) -> str:
    parts = sorted({n["partition"] for n in data["nodes"] if n["partition"] is not None})
    sw = "".join(f'<span><i class="swatch" style="background:{partition_colour(p)}"></i>partition {p}</span>'
                 for p in parts) or '<span><i class="swatch" style="background:#B0B0B0"></i>unpartitioned</span>'
    marks = "".join(f'<span><i class="swatch" style="background:{c};border-radius:6px"></i>{esc(L)} = {m}</span>'
                    for m, (L, c) in MARK_BADGES.items())
    return (f'<p class="legend">{sw}{marks}<span>thick border: created by a pass</span>'
            f'<span>edge width: bytes carried; dashed red: crosses partitions</span>'
            f'<span class="muted">layout: {esc(engine)}</span></p>')


def _zoom_buttons(svg_id: str) -> str:
    return "".join(f'<button data-action="{a}" data-svg="{svg_id}" title="{t}">{L}</button>'
                   for a, L, t in (("zoom-in", "+", "zoom in (or mouse wheel)"), ("zoom-out", "−", "zoom out"),
                                   ("fit", "fit", "fit to width")))


def _views(graph: dict[str, Any], svgs: dict[str, str], prefix: str, top: str) -> str:
    """One ``section.view`` per view; group views start hidden and open from their group's box."""
    groups = {g["id"]: g for g in graph["groups"]}
    sections = []
    for view in graph["views"]:
        vid = prefix + dom_id(view["id"])
        svg_id = f"svg-{vid}"
        if view["id"] == "root":
            head, attrs = esc(top), ""
        else:
            g = groups[view["id"]]
            head = (f'{esc(g["path"])} {esc(g["type"])} · {g["node_count"]} nodes'
                    f'<button data-action="close" data-view="{vid}">close</button>')
            attrs = f' data-parent="{prefix}{dom_id(g["parent"])}" hidden'
        sections.append(f'<section class="view" id="view-{vid}"{attrs}><header>{head}{_zoom_buttons(svg_id)}'
                        f'</header><div class="viewport">{svgs[view["id"]]}</div></section>')
    return "".join(sections)


def _graph(data: dict[str, Any], svgs: dict[str, str], engine: str, before: dict[str, str]) -> str:
    after = _views(data["graph"], svgs, "", "after passes: model (top level; click a ▸ box to open it)")
    tools = ('<p><button data-action="expand-all">expand all</button> '
             '<button data-action="collapse-all">collapse all</button> '
             '<label>find node <input id="find-node" list="node-names" placeholder="node name"></label> '
             '<span class="muted">mouse wheel: zoom · drag: pan · click a ▸ box: open/close it</span></p>')
    names = "".join(f'<option value="{esc(n["id"])}">' for n in data["nodes"])
    captured = data.get("captured")
    if captured and before:
        cs, ss = captured["summary"], data["summary"]
        delta = (f'<p class="delta">{cs["nodes"]:,} → {ss["nodes"]:,} nodes · parameters '
                 f'{fmt_bytes(cs["param_bytes"])} → {fmt_bytes(ss["param_bytes"])} · est. cost '
                 f'{fmt_seconds(cs["cost_s"])} → {fmt_seconds(ss["cost_s"])}</p>')
        left = _views(captured["graph"], before, "cap-", "as captured: model (before any pass)")
        tools += ('<p><button data-action="compare" aria-pressed="true">before/after side by side</button> '
                  f'<button data-action="expand-all" data-scope="captured-views">expand all (captured)</button>'
                  f'</p>{delta}')
        columns = (f'<div id="graph-columns" class="compare"><div id="captured-views"><h3>As captured</h3>{left}'
                   f'</div><div id="graph-views"><h3>After passes</h3>{after}</div></div>')
    else:
        columns = f'<div id="graph-columns"><div id="graph-views">{after}</div></div>'
    return (f'<h2 id="graph">Graph</h2>{_legend(data, engine)}{tools}<datalist id="node-names">{names}</datalist>'
            f'{columns}')


def _partitions(data: dict[str, Any]) -> str:
    p = data["partitions"]
    if not p:
        return '<h2 id="partitions">Partitions</h2><p class="muted">The graph is not partitioned.</p>'
    cols = ["partition", "nodes", "cost_s", "flops", "param_bytes", "bytes_in", "bytes_out"]
    chart = bar_chart([(f"partition {r['partition']}", r["cost_s"]) for r in p["rows"]], fmt_seconds,
                      [partition_colour(r["partition"]) for r in p["rows"]], title="estimated cost per partition")
    summary = _kv([("cut bytes (sent between partitions)", p["cut_bytes"]),
                   ("imbalance (max cost / mean cost)", round(p["imbalance"], 4))])
    later = [r.get("name") for r in data["passes"] if r.get("modified")]
    later = later[later.index("partition") + 1:] if "partition" in later else []
    stale = (f'<p class="muted">The plan\'s per-partition costs were estimated when the partition pass ran, '
             f'before {esc(", ".join(later))}; the table above is the final graph\'s.</p>' if later else "")
    plan = (f"<h3>Partition plan</h3>{stale}{_generic(data['plan'])}" if data.get("plan") else "")
    pass_notes = {k: v for k, v in (data["notes"].get("partition") or {}).items() if k != "plan"}
    if pass_notes:
        plan += f"<h3>Partition pass notes</h3>{_generic(pass_notes)}"
    return f'<h2 id="partitions">Partitions</h2>{_table(p["rows"], cols, css="partitions")}{summary}{chart}{plan}'


def _branches(data: dict[str, Any]) -> str:
    b = data.get("branches")
    if not b:
        return '<h2 id="branches">Branch map</h2><p class="muted">No data-dependent branches (static graph).</p>'
    return f'<h2 id="branches">Branch map</h2>{_generic(b)}'


# Pass notes drawn in a section of their own rather than under "Accuracy".
_OWN_SECTION = ("quantize",)
_NOT_MEASURED = ("Not measured: this report was written with measure=False, or from an artifact loaded from "
                 "disk (it has no graph as captured to compare with). write_report(cm, path, model=model) "
                 "measures against the eager model.")


def _quantization(data: dict[str, Any]) -> str:
    q = data["notes"].get("quantize")
    if not isinstance(q, dict):
        return '<h2 id="quantization">Quantization</h2><p class="muted">No quantize pass ran.</p>'
    summary = _kv([(k, v) for k, v in q.items() if _tabular(v) is None])
    layers = [r for r in (q.get("layers") or []) if isinstance(r, dict)]
    sqnr = [(str(r.get("layer")), r["sqnr_db"]) for r in layers if isinstance(r.get("sqnr_db"), (int, float))]
    chart = bar_chart(sqnr[:120], lambda v: f"{v:.1f} dB", title="SQNR per layer, int8 vs fp32 (dB, higher is "
                      "better)") if sqnr else ""
    tables = ""
    for key, title in (("layers", "Layers"), ("lowered", "Kernels (timed on this machine)")):
        rows = _tabular(q.get(key))
        if rows:
            tables += f"<details><summary>{title} ({len(rows)})</summary>{_table(rows)}</details>"
    return f'<h2 id="quantization">Quantization</h2>{summary}{chart}{tables}'


def _accuracy(data: dict[str, Any]) -> str:
    parts = []
    if data.get("accuracy"):
        parts.append(_generic(data["accuracy"]))
    verified = [{"pass": r.get("name"), "exact": r.get("exact"), "max_abs_error": r.get("max_abs_error"),
                 "sqnr_db": r.get("sqnr_db")} for r in data["passes"] if r.get("sqnr_db") is not None
                or r.get("max_abs_error") is not None]
    if verified:
        parts.append(f"<h3>Per pass (compile-time check against the graph before the pass)</h3>{_table(verified)}")
    lossy = [r.get("name") for r in data["passes"] if r.get("exact") is False]
    for name in lossy:
        if name in data["notes"] and name not in _OWN_SECTION:
            parts.append(f"<h3>{esc(name)}</h3>{_generic(data['notes'][name])}")
    if "quantize" in data["notes"]:
        parts.append('<p>Per-layer SQNR of the int8 layers: <a href="#quantization">quantization</a>.</p>')
    body = "".join(parts) or f'<p class="muted">{_NOT_MEASURED}</p>'
    return f'<h2 id="accuracy">Accuracy</h2>{body}'


def _latency(data: dict[str, Any]) -> str:
    lat = data.get("latency")
    if not lat:
        error = (data.get("extra") or {}).get("measurement_error")
        why = f"Measuring failed: {esc(error)}" if error else _NOT_MEASURED
        return f'<h2 id="latency">Latency</h2><p class="muted">{why}</p>'
    rows = _tabular(lat.get("rows") if isinstance(lat, dict) and "rows" in lat else lat)
    if rows is None and isinstance(lat, dict):
        rows = [{"variant": k, "median_s": v} for k, v in lat.items() if isinstance(v, (int, float))]
    chart = ""
    if rows and all(isinstance(r.get("median_s"), (int, float)) for r in rows):
        chart = bar_chart([(str(r.get("variant", r.get("name", i))), r["median_s"]) for i, r in enumerate(rows)],
                          fmt_seconds, PALETTE, title="median latency (lower is better)")
    rest = {k: v for k, v in lat.items() if k != "rows"} if isinstance(lat, dict) and "rows" in lat else {}
    return f'<h2 id="latency">Latency</h2>{_table(rows or [])}{chart}{_kv(rest.items())}'


_NODE_COLUMNS = ["id", "op", "target", "module", "shape", "dtype", "flops", "bytes_read", "bytes_written",
                 "param_bytes", "cost_s", "partition", "created_by", "marks"]


def _node_table(data: dict[str, Any]) -> str:
    rows = [{**{c: n[c] for c in _NODE_COLUMNS}, "marks": ",".join(n["marks"])} for n in data["nodes"]]
    return (f'<h2 id="nodes">Nodes</h2><details><summary>All {len(rows)} nodes with provenance</summary>'
            f'{_table(rows, _NODE_COLUMNS, css="nodes")}</details>')


def _panel(name: str, html: str) -> str:
    """A top-level section (``#sec-NAME``): one screenshot or one check can address it alone."""
    return f'<section class="panel" id="sec-{name}">{html}</section>' if html else ""


def render_page(data: dict[str, Any], svgs: dict[str, str], engine: str, before: dict[str, str] | None = None) -> str:
    """The page; ``before``: SVGs of the graph as captured (``data["captured"]``), drawn beside the graph."""
    title = esc(f"autoglm report: {data['header']['model_class'] or data['header']['input']}")
    notes = {k: v for k, v in data["notes"].items() if k not in ("partition",)}
    notes_html = (f'<h2 id="notes">Pass notes</h2><details><summary>{len(notes)} entries</summary>'
                  f'{_generic(notes, charts=False)}</details>') if notes else ""
    extra_html = f'<h2 id="extra">Other measurements</h2>{_generic(data["extra"])}' if data.get("extra") else ""
    nav = " · ".join(f'<a href="#{a}">{a}</a>' for a in ("passes", "graph", "partitions", "quantization",
                                                         "branches", "accuracy", "latency", "nodes"))
    panels = [("overview", _header(data) + f"<p>{nav}</p>"), ("passes", _passes(data)),
              ("graph", _graph(data, svgs, engine, before or {})), ("partitions", _partitions(data)),
              ("quantization", _quantization(data)), ("branches", _branches(data)), ("accuracy", _accuracy(data)),
              ("latency", _latency(data)), ("extra", extra_html), ("notes", notes_html), ("nodes", _node_table(data))]
    body = "".join(_panel(name, html) for name, html in panels)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{_CSS}</style></head><body>{body}<script>{NAVIGATE_JS}</script></body></html>")
