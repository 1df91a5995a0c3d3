"""Draw the report's graph views as inline SVG.

One ``<svg class="graph">`` per view (see ``views.py``). In each, every node is
one ``<g class="node">`` and every collapsed group one ``<g class="node group">``
(click to open the group's own view). Boxes are filled by partition (a group
spanning several partitions gets hard colour stops in proportion), a thick
border marks nodes a pass created, badges mark split (S), merged (M), sparse (P)
and int8 (8) nodes, edges get wider with the bytes they carry and cut edges
(between partitions) are dashed red. Hovering shows the ``<title>``: shape,
dtype, FLOPs, bytes, cost, partition, provenance.
"""
from __future__ import annotations

import math
from typing import Any

from autoglm.report.fmt import esc, fmt_bytes, fmt_flops, fmt_seconds, fmt_value, partition_colour
from autoglm.report.layout import LayoutItem, layout_many

__all__ = ["render_views", "dom_id", "MARK_BADGES"]

MARK_BADGES = {"split": ("S", "#E69F00"), "merged": ("M", "#6A3D9A"), "sparse": ("P", "#009E73"),
               "int8": ("8", "#D55E00")}
CHAR_W = 6.4
NODE_H = 32.0
GROUP_H = 40.0
PORT_H = 20.0
MAX_LABEL = 30


def dom_id(item: str) -> str:
    """``n:add_1`` -> ``n-add_1``; ``g:3`` -> ``grp-3``; ``root`` stays."""
    if item.startswith("g:"):
        return "grp-" + item[2:]
    if item.startswith("n:"):
        return "n-" + item[2:]
    return item


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _node_label(n: dict[str, Any]) -> tuple[str, str]:
    if n["op"] in ("placeholder", "output"):
        first = n["id"]
    elif n["op"] in ("call_module", "get_attr"):
        first = ".".join(str(n["target"]).split(".")[-2:])
    else:
        target = str(n["target"])
        parts = target.split(".")
        first = parts[-2] if target.startswith("aten.") and len(parts) >= 3 else parts[-1]
    return _short(first), _short(n["shape"] or n["op"])


def _node_title(n: dict[str, Any]) -> str:
    lines = [f"{n['id']}  ({n['op']})", f"target: {n['target']}", f"module: {n['module'] or '(top)'}",
             f"shape: {n['shape'] or '-'}  dtype: {n['dtype'] or '-'}", f"FLOPs: {fmt_flops(n['flops'])}",
             f"bytes: read {fmt_bytes(n['bytes_read'])}, written {fmt_bytes(n['bytes_written'])}, "
             f"params {fmt_bytes(n['param_bytes'])}",
             f"cost: {fmt_seconds(n['cost_s'])}" + (f"  measured: {fmt_seconds(n['latency_s'])}"
                                                    if n["latency_s"] is not None else ""),
             f"partition: {'-' if n['partition'] is None else n['partition']}", f"created by: {n['created_by']}"]
    if n["tags"]:
        tags = ", ".join(f"{k}={fmt_value(k, v)}" for k, v in n["tags"].items())
        lines.append(f"tags: {tags[:300]}")
    return "\n".join(lines)


def _group_title(g: dict[str, Any]) -> str:
    parts = ", ".join(f"p{p}: {c}" for p, c in sorted(g["partitions"].items())) or "-"
    lines = [f"{g['path'] or 'model'}  {g['type']}".rstrip(), f"{g['node_count']} nodes (click to open)",
             f"FLOPs: {fmt_flops(g['flops'])}", f"bytes read+written: {fmt_bytes(g.get('bytes', 0))}",
             f"params: {fmt_bytes(g['param_bytes'])}",
             f"cost: {fmt_seconds(g['cost_s'])}", f"partitions: {parts}"]
    if g["marks"]:
        lines.append("marks: " + ", ".join(f"{m} x{c}" for m, c in g["marks"].items()))
    if g["created_by"]:
        lines.append("created by: " + ", ".join(f"{p} x{c}" for p, c in g["created_by"].items()))
    return "\n".join(lines)


def _size(lines: tuple[str, str], height: float) -> tuple[float, float]:
    return max(64.0, min(220.0, max(len(s) for s in lines) * CHAR_W + 18)), height


def _group_label(g: dict[str, Any]) -> tuple[str, str]:
    """Name, then size: FLOPs where the group computes, else the bytes it moves (views, copies)."""
    work = f"{fmt_flops(g['flops'])} FLOPs" if g["flops"] else f"{fmt_bytes(g.get('bytes', 0))} moved"
    return _short(f"▸ {g['label']}"), _short(f"{g['node_count']} nodes · {work}")


def render_views(data: dict[str, Any], engine: str = "auto", prefix: str = "") -> tuple[dict[str, str], str]:
    """SVG text for every view in ``data["graph"]`` and the layout engine that ran.

    ``prefix`` starts every DOM id, so a second drawing on the page (the graph as
    captured, beside the compiled one) has ids of its own.
    """
    nodes = {f"n:{n['id']}": n for n in data["nodes"]}
    groups = {g["id"]: g for g in data["graph"]["groups"]}
    labels: dict[str, tuple[str, str]] = {}
    jobs = []
    for view in data["graph"]["views"]:
        items = []
        for item in view["items"]:
            if item in groups:
                labels[item] = _group_label(groups[item])
                items.append(LayoutItem(item, *_size(labels[item], GROUP_H)))
            else:
                labels[item] = _node_label(nodes[item])
                items.append(LayoutItem(item, *_size(labels[item], NODE_H)))
        edges = [(e["src"], e["dst"]) for e in view["edges"]]
        in_ports: list[LayoutItem] = []  # first: the Python layout orients edges by item order
        ports: set[str] = set()  # per view: a value entering two groups is a port in both views
        for port in view.get("inputs", []):
            pid = f"in:{port['node']}"
            labels[pid] = (_short(f"← {port['node']}"), "")
            if pid not in ports:
                ports.add(pid)
                in_ports.append(LayoutItem(pid, *_size(labels[pid], PORT_H)))
            edges.append((pid, port["dst"]))
        items = in_ports + items
        for port in view.get("outputs", []):
            pid = f"out:{port['node']}"
            labels[pid] = (_short(f"→ {port['node']}"), "")
            if pid not in ports:
                ports.add(pid)
                items.append(LayoutItem(pid, *_size(labels[pid], PORT_H)))
            edges.append((port["src"], pid))
        jobs.append((items, edges))
    layouts = layout_many(jobs, engine)
    max_bytes = max((e["bytes"] for v in data["graph"]["views"] for e in v["edges"]), default=1) or 1
    out = {}
    for view, layout in zip(data["graph"]["views"], layouts):
        out[view["id"]] = _render_one(view, layout, nodes, groups, labels, max_bytes, prefix)
    return out, (layouts[0]["engine"] if layouts else "python")


def _edge_width(nbytes: int, max_bytes: int) -> float:
    return 0.8 + 4.2 * math.log1p(nbytes) / math.log1p(max_bytes)


def _path(points: list[list[float]], curve: bool) -> str:
    head = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    if curve and (len(points) - 1) % 3 == 0:
        rest = " ".join(f"C{a[0]:.1f},{a[1]:.1f} {b[0]:.1f},{b[1]:.1f} {c[0]:.1f},{c[1]:.1f}"
                        for a, b, c in zip(points[1::3], points[2::3], points[3::3]))
    else:
        rest = " ".join(f"L{p[0]:.1f},{p[1]:.1f}" for p in points[1:])
    return f"{head} {rest}"


def _fill(item: str, partitions: dict[str, int], defs: list[str], prefix: str = "") -> str:
    if len(partitions) <= 1:
        key = next(iter(partitions), None)
        return partition_colour(key)
    total = sum(partitions.values())
    gid = f"{prefix}mix-{dom_id(item)}"
    stops, acc = [], 0.0
    for p, count in sorted(partitions.items(), key=lambda kv: int(kv[0])):
        colour = partition_colour(p)
        stops.append(f'<stop offset="{acc:.3f}" stop-color="{colour}"/>')
        acc += count / total
        stops.append(f'<stop offset="{acc:.3f}" stop-color="{colour}"/>')
    defs.append(f'<linearGradient id="{gid}">{"".join(stops)}</linearGradient>')
    return f"url(#{gid})"


def _render_one(view: dict[str, Any], layout: dict[str, Any], nodes: dict[str, dict[str, Any]],
                groups: dict[str, dict[str, Any]], labels: dict[str, tuple[str, str]], max_bytes: int,
                prefix: str = "") -> str:
    vid = prefix + dom_id(view["id"])
    width, height = max(layout["width"], 80.0), max(layout["height"], 40.0)
    defs = [f'<marker id="arrow-{vid}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" '
            f'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>']
    body: list[str] = []
    info = {(e["src"], e["dst"]): e for e in view["edges"]}
    for edge in layout["edges"]:
        if len(edge["points"]) < 2:
            continue
        e = info.get((edge["src"], edge["dst"]))
        if e is None:  # to or from a boundary port
            body.append(f'<g class="edge port-edge"><path d="{_path(edge["points"], edge["curve"])}" '
                        f'marker-end="url(#arrow-{vid})"/></g>')
            continue
        cls = "edge cut" if e["cut"] else "edge"
        body.append(f'<g class="{cls}"><title>{esc(edge["src"][2:])} → {esc(edge["dst"][2:])}: '
                    f'{fmt_bytes(e["bytes"])} ({e["tensors"]} tensor{"s" if e["tensors"] != 1 else ""})'
                    f'{" crosses partitions" if e["cut"] else ""}</title>'
                    f'<path d="{_path(edge["points"], edge["curve"])}" stroke-width='
                    f'"{_edge_width(e["bytes"], max_bytes):.2f}" marker-end="url(#arrow-{vid})"/></g>')
    for item, box in layout["nodes"].items():
        if item.startswith(("in:", "out:")):
            where = "from" if item.startswith("in:") else "to"
            body.append(f'<g class="port"><title>value {where} {esc(item.split(":", 1)[1])}, outside this group'
                        f'</title><rect x="{box["x"] - box["w"] / 2:.1f}" y="{box["y"] - box["h"] / 2:.1f}" '
                        f'width="{box["w"]:.1f}" height="{box["h"]:.1f}" rx="9"/><text x="{box["x"]:.1f}" '
                        f'y="{box["y"] + 4:.1f}">{esc(labels[item][0])}</text></g>')
    for item in view["items"]:
        box = layout["nodes"].get(item)
        if box is None:
            continue
        x, y, w, h = box["x"] - box["w"] / 2, box["y"] - box["h"] / 2, box["w"], box["h"]
        line1, line2 = labels[item]
        if item in groups:
            g = groups[item]
            fill = _fill(item, g["partitions"], defs, prefix)
            marks = list(g["marks"])
            gid = prefix + dom_id(item)
            attrs = (f'class="node group" id="{gid}" data-group="{gid}" tabindex="0" '
                     f'role="button" aria-expanded="false"')
            title, created = _group_title(g), bool(g["created_by"])
            shape = f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="7" fill="{fill}"/>'
            shape += (f'<rect class="inner" x="{x + 3:.1f}" y="{y + 3:.1f}" width="{w - 6:.1f}" '
                      f'height="{h - 6:.1f}" rx="5"/>')
        else:
            n = nodes[item]
            fill = partition_colour(n["partition"])
            marks = n["marks"]
            attrs = f'class="node op-{esc(n["op"])}" id="{prefix}{esc(dom_id(item))}" data-node="{esc(n["id"])}"'
            title, created = _node_title(n), n["created_by"] != "capture"
            shape = f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="3" fill="{fill}"/>'
        if created:
            attrs = attrs.replace('class="node', 'class="node created', 1)
        badges = "".join(
            f'<circle cx="{x + w - 7 - 13 * i:.1f}" cy="{y:.1f}" r="6" fill="{MARK_BADGES[m][1]}"/>'
            f'<text class="badge" x="{x + w - 7 - 13 * i:.1f}" y="{y + 3:.1f}">{MARK_BADGES[m][0]}</text>'
            for i, m in enumerate(marks) if m in MARK_BADGES)
        body.append(f'<g {attrs}><title>{esc(title)}</title>{shape}'
                    f'<text x="{box["x"]:.1f}" y="{box["y"] - 3:.1f}">{esc(line1)}</text>'
                    f'<text class="sub" x="{box["x"]:.1f}" y="{box["y"] + 10:.1f}">{esc(line2)}</text>{badges}</g>')
    # data-w/data-h: the drawing's own size; the page's script zooms and pans by changing the viewBox.
    return (f'<svg class="graph" id="svg-{vid}" width="{width:.0f}" data-w="{width:.1f}" data-h="{height:.1f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.1f} {height:.1f}"><defs>{"".join(defs)}</defs>'
            f'{"".join(body)}</svg>')
