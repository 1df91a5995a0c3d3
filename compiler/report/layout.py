"""Layered graph layout: Graphviz ``dot`` when installed, else a pure-Python Sugiyama layout.

Both engines return the same structure, so the SVG writer does not care which ran::

    {"engine": "dot" | "python", "width": W, "height": H,
     "nodes": {id: {"x": cx, "y": cy, "w": w, "h": h}},     # centres, pixels, y down
     "edges": [{"src": a, "dst": b, "points": [[x, y], ...], "curve": bool}]}

``curve`` is True when ``points`` are cubic Bezier control points (dot's
splines: 1 + 3k points) and False for a polyline (the Python layout).

The Python layout is the textbook Sugiyama pipeline, kept small: cycles broken
by the given item order (graph order is topological, so only edges into a
re-used group point backwards), longest-path layering with sources pulled down
next to their first consumer (weights sit above the op that reads them), dummy
nodes on long edges, barycenter sweeps against crossings, then x positions
pulled towards neighbours while keeping every layer overlap-free.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["LayoutItem", "layout_graph", "layout_many", "python_layout", "dot_available", "NODE_GAP", "RANK_GAP"]

NODE_GAP = 18.0  # horizontal pixels between boxes in one layer
RANK_GAP = 34.0  # vertical pixels between layers
MARGIN = 12.0
DUMMY_WIDTH = 8.0


@dataclass
class LayoutItem:
    id: str
    width: float
    height: float


def dot_available() -> bool:
    return shutil.which("dot") is not None


def layout_many(graphs: Sequence[tuple[Sequence[LayoutItem], Sequence[tuple[str, str]]]],
                engine: str = "auto", timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Lay out several graphs; with ``dot`` they go through one process (one start-up cost)."""
    if engine not in ("auto", "dot", "python"):
        raise ValueError(f"layout engine must be 'auto', 'dot' or 'python', got {engine!r}")
    if engine == "dot" and not dot_available():
        raise RuntimeError("layout engine 'dot' asked for but Graphviz is not installed (apt-get install graphviz)")
    if engine in ("auto", "dot") and dot_available() and graphs:
        try:
            return _dot_layout(graphs, timeout_s)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            if engine == "dot":
                raise RuntimeError(f"graphviz dot failed: {exc}") from exc
    return [python_layout(items, edges) for items, edges in graphs]


def layout_graph(items: Sequence[LayoutItem], edges: Sequence[tuple[str, str]], engine: str = "auto") -> dict[str, Any]:
    return layout_many([(items, edges)], engine)[0]


# --------------------------------------------------------------------------- python


def python_layout(items: Sequence[LayoutItem], edges: Sequence[tuple[str, str]]) -> dict[str, Any]:
    index = {it.id: i for i, it in enumerate(items)}
    size = {it.id: (it.width, it.height) for it in items}
    # Orient every edge forward in item order (breaks cycles through re-used groups).
    forward: list[tuple[str, str, bool]] = []
    for a, b in edges:
        if a == b or a not in index or b not in index:
            continue
        forward.append((a, b, False) if index[a] < index[b] else (b, a, True))
    preds: dict[str, list[str]] = {it.id: [] for it in items}
    succs: dict[str, list[str]] = {it.id: [] for it in items}
    for a, b, _ in forward:
        preds[b].append(a)
        succs[a].append(b)
    rank: dict[str, int] = {}
    for it in items:
        rank[it.id] = max((rank[p] + 1 for p in preds[it.id]), default=0)
    for it in items:  # sources sit right above their first consumer, not all on top
        if not preds[it.id] and succs[it.id]:
            rank[it.id] = max(0, min(rank[s] for s in succs[it.id]) - 1)

    # Dummy nodes so that every edge joins adjacent layers.
    layers: dict[int, list[str]] = {}
    for it in items:
        layers.setdefault(rank[it.id], []).append(it.id)
    chains: list[tuple[str, str, list[str], bool]] = []
    up: dict[str, list[str]] = {k: [] for k in size}
    down: dict[str, list[str]] = {k: [] for k in size}
    for n, (a, b, reversed_) in enumerate(forward):
        path = [a]
        for r in range(rank[a] + 1, rank[b]):
            d = f"\0d{n}.{r}"
            size[d] = (DUMMY_WIDTH, 0.0)
            rank[d] = r
            layers.setdefault(r, []).append(d)
            up[d], down[d] = [], []
            path.append(d)
        path.append(b)
        for u, v in zip(path, path[1:]):
            down[u].append(v)
            up[v].append(u)
        chains.append((a, b, path, reversed_))

    order = [layers[r] for r in sorted(layers)]
    _reduce_crossings(order, up, down)
    xs = _assign_x(order, size, up, down)
    heights = [max((size[v][1] for v in layer), default=0.0) for layer in order]
    ys, y = [], MARGIN
    for h in heights:
        ys.append(y + h / 2)
        y += h + RANK_GAP
    nodes_out: dict[str, dict[str, float]] = {}
    centre: dict[str, tuple[float, float]] = {}
    for r, layer in enumerate(order):
        for v in layer:
            centre[v] = (xs[v], ys[r])
            if not v.startswith("\0"):
                nodes_out[v] = {"x": xs[v], "y": ys[r], "w": size[v][0], "h": size[v][1]}
    edges_out = []
    for a, b, path, reversed_ in chains:
        pts = [[centre[a][0], centre[a][1] + size[a][1] / 2]]
        pts += [[centre[d][0], centre[d][1]] for d in path[1:-1]]
        pts.append([centre[b][0], centre[b][1] - size[b][1] / 2])
        if reversed_:
            pts.reverse()
        src, dst = (b, a) if reversed_ else (a, b)
        edges_out.append({"src": src, "dst": dst, "points": pts, "curve": False})
    width = max((xs[v] + size[v][0] / 2 for v in xs), default=0.0) + MARGIN
    return {"engine": "python", "width": width, "height": y - RANK_GAP + MARGIN, "nodes": nodes_out,
            "edges": edges_out}


def _reduce_crossings(order: list[list[str]], up: dict[str, list[str]], down: dict[str, list[str]],
                      sweeps: int = 4) -> None:
    """Barycenter heuristic, alternating downward and upward sweeps (in place)."""
    for _ in range(sweeps):
        for r in range(1, len(order)):
            _sort_by_barycenter(order[r], order[r - 1], up)
        for r in range(len(order) - 2, -1, -1):
            _sort_by_barycenter(order[r], order[r + 1], down)


def _sort_by_barycenter(layer: list[str], fixed: list[str], neighbours: dict[str, list[str]]) -> None:
    pos = {v: i for i, v in enumerate(fixed)}
    keys = {}
    for i, v in enumerate(layer):
        ns = [pos[u] for u in neighbours[v] if u in pos]
        keys[v] = sum(ns) / len(ns) if ns else float(i)
    layer.sort(key=lambda v: keys[v])  # stable: ties keep their order


def _assign_x(order: list[list[str]], size: dict[str, tuple[float, float]], up: dict[str, list[str]],
              down: dict[str, list[str]], rounds: int = 4) -> dict[str, float]:
    xs: dict[str, float] = {}
    for layer in order:
        x = MARGIN
        for v in layer:
            xs[v] = x + size[v][0] / 2
            x += size[v][0] + NODE_GAP
    for _ in range(rounds):
        for r in range(1, len(order)):
            _place_layer(order[r], xs, size, up)
        for r in range(len(order) - 2, -1, -1):
            _place_layer(order[r], xs, size, down)
    low = min((xs[v] - size[v][0] / 2 for v in xs), default=MARGIN)
    for v in xs:
        xs[v] += MARGIN - low
    return xs


def _place_layer(layer: list[str], xs: dict[str, float], size: dict[str, tuple[float, float]],
                 neighbours: dict[str, list[str]]) -> None:
    """Move each node towards the mean x of its neighbours, keeping order and gaps.

    A left-to-right sweep that only pushes right and a right-to-left sweep that
    only pushes left each give an overlap-free placement; their average keeps
    every gap constraint (it is linear) and does not drift to one side.
    """
    want = []
    for v in layer:
        ns = [xs[u] for u in neighbours[v]]
        want.append(sum(ns) / len(ns) if ns else xs[v])
    gap = [(size[a][0] + size[b][0]) / 2 + NODE_GAP for a, b in zip(layer, layer[1:])]
    right = list(want)
    for i in range(1, len(layer)):
        right[i] = max(right[i], right[i - 1] + gap[i - 1])
    left = list(want)
    for i in range(len(layer) - 2, -1, -1):
        left[i] = min(left[i], left[i + 1] - gap[i])
    for i, v in enumerate(layer):
        xs[v] = (left[i] + right[i]) / 2


# --------------------------------------------------------------------------- dot


def _dot_source(index: int, items: Sequence[LayoutItem], edges: Sequence[tuple[str, str]]) -> str:
    ids = {it.id: f"v{i}" for i, it in enumerate(items)}
    lines = [f"digraph g{index} {{", "graph [rankdir=TB, nodesep=0.25, ranksep=0.35];",
             'node [shape=box, fixedsize=true, label=""];']
    for it in items:
        lines.append(f"{ids[it.id]} [width={it.width / 72:.3f}, height={it.height / 72:.3f}];")
    for a, b in edges:
        if a in ids and b in ids and a != b:
            lines.append(f"{ids[a]} -> {ids[b]};")
    lines.append("}")
    return "\n".join(lines)


def _dot_layout(graphs: Sequence[tuple[Sequence[LayoutItem], Sequence[tuple[str, str]]]],
                timeout_s: float) -> list[dict[str, Any]]:
    source = "\n".join(_dot_source(i, items, edges) for i, (items, edges) in enumerate(graphs))
    proc = subprocess.run(["dot", "-Tplain"], input=source, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    blocks, current = [], []
    for line in proc.stdout.splitlines():
        current.append(line)
        if line.strip() == "stop":
            blocks.append(current)
            current = []
    if len(blocks) != len(graphs):
        raise ValueError(f"dot returned {len(blocks)} layouts for {len(graphs)} graphs")
    return [_parse_plain(block, items) for block, (items, _) in zip(blocks, graphs)]


def _parse_plain(lines: list[str], items: Sequence[LayoutItem]) -> dict[str, Any]:
    by_dot = {f"v{i}": it.id for i, it in enumerate(items)}
    scale, height = 72.0, 0.0
    nodes: dict[str, dict[str, float]] = {}
    edges = []
    for line in lines:
        tok = shlex.split(line)
        if not tok:
            continue
        if tok[0] == "graph":
            width, height = float(tok[2]) * scale, float(tok[3]) * scale
        elif tok[0] == "node":
            nodes[by_dot[tok[1]]] = {"x": float(tok[2]) * scale + MARGIN, "y": height - float(tok[3]) * scale + MARGIN,
                                     "w": float(tok[4]) * scale, "h": float(tok[5]) * scale}
        elif tok[0] == "edge":
            n = int(tok[3])
            pts = [[float(tok[4 + 2 * i]) * scale + MARGIN, height - float(tok[5 + 2 * i]) * scale + MARGIN]
                   for i in range(n)]
            edges.append({"src": by_dot[tok[1]], "dst": by_dot[tok[2]], "points": pts, "curve": True})
    return {"engine": "dot", "width": width + 2 * MARGIN, "height": height + 2 * MARGIN, "nodes": nodes,
            "edges": edges}
