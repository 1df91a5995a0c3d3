"""Collapse a flat graph into nested views by module path, so big graphs stay readable.

A 12-layer encoder has 300-1,500 nodes; drawn flat it is a ribbon nobody can
read. Nodes are grouped by the module they came from (``layers.3.attn``); the
top view shows each group as one box, and each group has its own view (drawn
on demand in the page) showing its direct nodes and sub-groups. Every node
appears as a box in exactly one view, every group in exactly one (its parent's),
and every edge in exactly one: the view of the innermost group holding both
ends, where the ends are mapped to the items that contain them.

Which module paths become groups:

- built-in ``torch.nn`` layers (Linear, LayerNorm...) are leaves, not groups:
  the op and its weights sit in the enclosing block;
- a group with fewer than ``MIN_GROUP_NODES`` nodes, or that only wraps one
  sub-group, is dissolved into its parent;
- a view with more than ``MAX_DIRECT_NODES`` direct nodes (a graph with no
  module structure, e.g. loaded from an artifact) has its nodes chunked into
  synthetic groups of consecutive nodes.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_views", "MIN_GROUP_NODES", "MAX_DIRECT_NODES", "CHUNK_NODES"]

MIN_GROUP_NODES = 3
MAX_DIRECT_NODES = 80
CHUNK_NODES = 40
ROOT = ""


def _nearest_known(path: str, known: set[str]) -> str:
    while path and path not in known:
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return path


def _is_leaf_layer(type_name: str) -> bool:
    return type_name.startswith("torch.nn.modules.") and not type_name.endswith(("ModuleList", "Sequential",
                                                                                 "ModuleDict"))


def _kept_groups(nodes: list[dict[str, Any]], module_types: dict[str, str]) -> dict[str, str]:
    """Map every module path to the path of the group it is drawn in (its nearest kept ancestor)."""
    known = set(module_types) | {n["module"] for n in nodes} | {ROOT}
    parent = {p: _nearest_known(p.rsplit(".", 1)[0] if "." in p else ROOT, known) for p in known if p != ROOT}
    subtree = {p: 0 for p in known}
    for n in nodes:
        p = n["module"]
        while True:
            subtree[p] += 1
            if p == ROOT:
                break
            p = parent[p]
    kept = {ROOT}
    kids: dict[str, list[str]] = {p: [] for p in known}
    for p in known - {ROOT}:
        kids[parent[p]].append(p)
    lifted = {p: 0 for p in known}  # nodes drawn directly in p's view if p is kept
    kept_kids: dict[str, list[str]] = {p: [] for p in known}  # kept groups drawn in p's view
    for n in nodes:
        lifted[n["module"]] += 1
    # Deepest first, so a group knows which of its children survived.
    for p in sorted(known, key=lambda s: -s.count(".") if s else 1):
        for c in kids[p]:
            if c in kept:
                kept_kids[p].append(c)
            else:
                lifted[p] += lifted[c]
                kept_kids[p].extend(kept_kids[c])
        if p == ROOT:
            continue
        wraps_one = lifted[p] == 0 and len(kept_kids[p]) == 1
        if subtree[p] >= MIN_GROUP_NODES and not _is_leaf_layer(module_types.get(p, "")) and not wraps_one:
            kept.add(p)
    owner = {}
    for p in known:
        q = p
        while q not in kept:
            q = parent[q]
        owner[p] = q
    return owner


def build_views(nodes: list[dict[str, Any]], module_types: dict[str, str]) -> dict[str, Any]:
    """Groups (collapsible boxes) and views (one drawing each), as JSON-able dicts.

    Each view: ``{"id", "group", "items": [item ids], "edges": [{"src", "dst", "bytes", "cut"}]}``;
    item ids are ``n:<node name>`` or ``g:<group number>``.
    """
    owner = _kept_groups(nodes, module_types)
    node_group_path = {n["id"]: owner[n["module"]] for n in nodes}
    paths = sorted({p for p in owner.values() if p != ROOT}, key=lambda s: (s.count("."), s))
    known = set(paths)
    group_id = {ROOT: "root"}
    groups: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(paths):
        group_id[p] = f"g:{i}"
    for p in paths:
        parent_path = _nearest_known(p.rsplit(".", 1)[0] if "." in p else ROOT, known)
        groups[group_id[p]] = {"id": group_id[p], "path": p, "label": _label(p),
                               "type": module_types.get(p, ""), "parent": group_id[parent_path],
                               "synthetic": False}
    node_group = {n["id"]: group_id[node_group_path[n["id"]]] for n in nodes}
    _chunk_big_views(nodes, groups, node_group)
    chains = {n["id"]: _chain(node_group[n["id"]], groups) for n in nodes}
    _group_facts(nodes, groups, chains)

    views: dict[str, dict[str, Any]] = {gid: {"id": gid, "items": [], "edges": [], "inputs": [], "outputs": []}
                                        for gid in ["root", *groups]}
    first_index: dict[str, int] = {}
    for n in nodes:  # nodes arrive in graph (topological) order
        views[node_group[n["id"]]]["items"].append(f"n:{n['id']}")
        for level, gid in enumerate(chains[n["id"]][1:]):
            if gid not in first_index:
                first_index[gid] = n["index"]
                views[chains[n["id"]][level]]["items"].append(gid)
    by_id = {n["id"]: n for n in nodes}
    agg: dict[tuple[str, str, str], dict[str, Any]] = {}
    counted: set[tuple[str, str]] = set()
    for n in nodes:
        for src in n["inputs"]:
            view, a, b = _lca_items(chains[src], chains[n["id"]], f"n:{src}", f"n:{n['id']}")
            key = (view, a, b)
            edge = agg.setdefault(key, {"src": a, "dst": b, "bytes": 0, "tensors": 0, "cut": False})
            if (src, b) not in counted:  # one tensor into one item is moved once
                counted.add((src, b))
                edge["bytes"] += by_id[src]["out_bytes"]
                edge["tensors"] += 1
            ps, pd = by_id[src]["partition"], n["partition"]
            edge["cut"] |= ps is not None and pd is not None and ps != pd
    for (view, _, _), edge in agg.items():
        views[view]["edges"].append(edge)
    _boundary_ports(nodes, chains, views)
    return {"groups": list(groups.values()), "views": list(views.values())}


def _label(path: str) -> str:
    """Last path component, with its parent when it is a list index (``layers.3``, not ``3``)."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def _chain(gid: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    chain = [gid]
    while chain[-1] != "root":
        chain.append(groups[chain[-1]]["parent"])
    return chain[::-1]


def _lca_items(chain_a: list[str], chain_b: list[str], leaf_a: str, leaf_b: str) -> tuple[str, str, str]:
    """The view holding an edge and the items its two ends map to there."""
    depth = 0
    while depth + 1 < min(len(chain_a), len(chain_b)) and chain_a[depth + 1] == chain_b[depth + 1]:
        depth += 1
    view = chain_a[depth]
    item_a = chain_a[depth + 1] if depth + 1 < len(chain_a) else leaf_a
    item_b = chain_b[depth + 1] if depth + 1 < len(chain_b) else leaf_b
    return view, item_a, item_b


def _boundary_ports(nodes: list[dict[str, Any]], chains: dict[str, list[str]],
                    views: dict[str, dict[str, Any]]) -> None:
    """For each group view, the values entering from outside and leaving to outside.

    Drawn as small ports (not nodes), so a group opened on its own still shows
    where its inputs come from and where its results go.
    """
    seen: set[tuple[str, str, str, str]] = set()
    for n in nodes:
        dst_chain = chains[n["id"]]
        for src in n["inputs"]:
            src_chain = chains[src]
            depth = 0
            while depth + 1 < min(len(src_chain), len(dst_chain)) and src_chain[depth + 1] == dst_chain[depth + 1]:
                depth += 1
            for k in range(depth + 1, len(dst_chain)):  # groups holding the consumer, not the producer
                item = dst_chain[k + 1] if k + 1 < len(dst_chain) else f"n:{n['id']}"
                if ("in", dst_chain[k], src, item) not in seen:
                    seen.add(("in", dst_chain[k], src, item))
                    views[dst_chain[k]]["inputs"].append({"node": src, "dst": item})
            for k in range(depth + 1, len(src_chain)):  # groups holding the producer, not the consumer
                item = src_chain[k + 1] if k + 1 < len(src_chain) else f"n:{src}"
                if ("out", src_chain[k], n["id"], item) not in seen:
                    seen.add(("out", src_chain[k], n["id"], item))
                    views[src_chain[k]]["outputs"].append({"node": n["id"], "src": item})


def _chunk_big_views(nodes: list[dict[str, Any]], groups: dict[str, dict[str, Any]],
                     node_group: dict[str, str]) -> None:
    """Split views with too many direct nodes into groups of consecutive nodes."""
    direct: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        direct.setdefault(node_group[n["id"]], []).append(n)
    for gid, members in direct.items():
        if len(members) <= MAX_DIRECT_NODES:
            continue
        base = groups[gid]["path"] if gid in groups else ""
        for start in range(0, len(members), CHUNK_NODES):
            chunk = members[start:start + CHUNK_NODES]
            cid = f"g:{len(groups)}"
            span = f"ops {chunk[0]['index']}-{chunk[-1]['index']}"
            groups[cid] = {"id": cid, "path": f"{base}#{span}" if base else f"#{span}", "label": _chunk_label(chunk),
                           "type": "", "parent": gid, "synthetic": True}
            for n in chunk:
                node_group[n["id"]] = cid


def _op_name(n: dict[str, Any]) -> str:
    target = str(n.get("target", n["op"]))
    parts = target.split(".")
    return parts[-2] if target.startswith("aten.") and len(parts) >= 3 else parts[-1]


def _chunk_label(chunk: list[dict[str, Any]]) -> str:
    """What a run of consecutive nodes does, by its most frequent ops (``linear×6 matmul×2``).

    Its index range alone (``ops 1-47``) tells a reader nothing; the range stays in the path.
    """
    counts: dict[str, int] = {}
    for n in chunk:
        if n["op"] in ("call_function", "call_method", "call_module"):
            name = _op_name(n)
            counts[name] = counts.get(name, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    ops = " ".join(f"{name}×{c}" for name, c in top) or chunk[0]["op"]
    return f"{chunk[0]['index']}-{chunk[-1]['index']}: {ops}"


def _group_facts(nodes: list[dict[str, Any]], groups: dict[str, dict[str, Any]],
                 chains: dict[str, list[str]]) -> None:
    for g in groups.values():
        g.update({"node_count": 0, "flops": 0, "bytes": 0, "cost_s": 0.0, "param_bytes": 0,
                  "partitions": {}, "marks": {}, "created_by": {}})
    for n in nodes:
        for gid in chains[n["id"]][1:]:
            g = groups[gid]
            g["node_count"] += 1
            g["flops"] += n["flops"]
            g["bytes"] += n.get("bytes_read", 0) + n.get("bytes_written", 0)
            g["cost_s"] += float(n["cost_s"]) if isinstance(n["cost_s"], (int, float)) else 0.0
            if n["op"] in ("get_attr", "call_module"):
                g["param_bytes"] += n["param_bytes"]
            if n["partition"] is not None:
                key = str(n["partition"])
                g["partitions"][key] = g["partitions"].get(key, 0) + 1
            for m in n["marks"]:
                g["marks"][m] = g["marks"].get(m, 0) + 1
            if n["created_by"] != "capture":
                g["created_by"][n["created_by"]] = g["created_by"].get(n["created_by"], 0) + 1
