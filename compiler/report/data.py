"""Collect the facts a report shows into one JSON-able dict (the report's JSON twin).

Everything the HTML page draws comes from this dict, so the page and
``report.json`` cannot disagree. Sources:

- ``cm.graph_module``: one row per node from its ``NodeAnnotation`` (shape,
  dtype, FLOPs, bytes, cost, partition, provenance, tags) plus the module path
  it came from (``nn_module_stack``), used to collapse the drawing;
- ``cm.records``: one row per pass (``PassRecord`` dataclasses, or dicts after
  ``autoglm.load``);
- ``cm.plan`` (partition pass, optional), ``cm.stats`` (dynamic-graph
  ``Program``, optional), ``cm.notes`` (per-pass notes: quantize, sparsify...);
- ``extra``: measurements taken at report time that need more than the compiled
  model (eager latency, per-output accuracy); see ``autoglm.report.measure``.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

import torch
import torch.fx as fx

from autoglm.ir.meta import annotation, has_annotation, output_specs
from autoglm.ir.snapshot import CAPTURED_NOTE
from autoglm.report.reproduce import reproduce

__all__ = ["SCHEMA_VERSION", "build_report_data", "jsonable", "node_marks", "MARK_KEYS"]

SCHEMA_VERSION = 1

# Tag keys passes use to say what they did to a node, by the mark the report shows.
MARK_KEYS: dict[str, tuple[str, ...]] = {
    "split": ("split", "shard"),
    "merged": ("merged", "merge", "fused"),
    "sparse": ("sparse", "sparsity", "sparsify", "pruned"),
    "int8": ("int8", "quantized", "quantize"),
}


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: dataclasses and ``to_json()`` objects expanded, tensors summarised,
    non-finite floats as strings (strict JSON has no inf/nan)."""
    if depth > 12:
        return repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and value.layout == torch.strided:
            return jsonable(value.item(), depth + 1)
        return {"tensor": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return str(value) if not isinstance(value, torch.Size) else list(value)
    to_json = getattr(value, "to_json", None)
    if callable(to_json) and not isinstance(value, type):
        try:
            return jsonable(to_json(), depth + 1)
        except Exception as exc:  # a broken plan must not take the report down
            return {"unserialisable": type(value).__name__, "error": str(exc)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, depth + 1)
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return jsonable(value.item(), depth + 1)
        except Exception:
            pass
    return repr(value)


def node_marks(tags: dict[str, Any]) -> list[str]:
    """The report marks (split, merged, sparse, int8) a node's tags call for."""
    keys = {k.lower() for k in tags}
    return [mark for mark, names in MARK_KEYS.items() if keys.intersection(names)]


def _target_name(node: fx.Node) -> str:
    if isinstance(node.target, str):
        return node.target
    name = getattr(node.target, "__name__", None)
    module = getattr(node.target, "__module__", None) or ""
    if str(node.target).startswith("aten."):  # OpOverload prints as aten.linear.default
        return str(node.target)
    if name and module and module not in ("_operator", "builtins"):
        return f"{module}.{name}"
    return str(name or node.target)


def _strip_wrapper(path: str) -> str:
    """Paths start at the wrapper that holds the user's model (``model.``); drop that."""
    path = path.replace("L['self'].", "").replace("L__self___", "")
    if path == "model":
        return ""
    return path[len("model."):] if path.startswith("model.") else path


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _replaced_module(node: fx.Node) -> str | None:
    """The module path an int8 module stands in for (quantize tags it: ``tags["int8"]["layer"]``)."""
    if node.op != "call_module" or not has_annotation(node):
        return None
    layer = (annotation(node).tags.get("int8") or {}).get("layer")
    return str(layer) if isinstance(layer, str) and "." in layer else None


def _module_paths(graph: fx.Graph) -> tuple[dict[str, str], dict[str, str], str]:
    """Each node's module path, the type of every module seen, and the model's class name."""
    types: dict[str, str] = {}
    paths: dict[str, str] = {}
    model_class = ""
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            entries = list(stack.values())
            for raw_path, typ in entries:
                tname = typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"
                if _strip_wrapper(str(raw_path)) == "" and str(raw_path) == "model":
                    model_class = model_class or tname
                types.setdefault(_strip_wrapper(str(raw_path)), tname)
            paths[node.name] = _strip_wrapper(str(entries[-1][0]))
    # Nodes without a stack (attributes, nodes passes made, graphs loaded from an artifact):
    # attributes and submodule calls sit in their owner's module; other nodes inherit the
    # module of their latest input (the value they most directly continue).
    no_stacks = not types
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.name in paths:
            continue
        # A dotted target names where the attribute or submodule lives; a top-level name that a pass
        # made up (``fused_add_layer_norm``, ``int8_model_layers_0_q``) says nothing about where it
        # belongs, so it follows its inputs like any other new node (it replaced what was there).
        target = _replaced_module(node) or str(node.target)
        attr = node.op in ("get_attr", "call_module") and "." in target
        owner = _parent(_strip_wrapper(target)) if attr else None
        if owner is not None and (no_stacks or owner in types):
            paths[node.name] = owner
            continue
        inputs = [a for a in node.all_input_nodes if a.name in paths and a.op != "get_attr"]
        latest = max(inputs, key=lambda a: order[a.name], default=None)
        paths[node.name] = "" if node.op in ("placeholder", "output") or latest is None else paths[latest.name]
    return paths, types, model_class


def _out_bytes(node: fx.Node) -> int:
    return sum(s.nbytes for s in output_specs(node))


def _shape_dtype(node: fx.Node) -> tuple[str, str]:
    specs = output_specs(node)
    if not specs:
        return "", ""
    shapes = ", ".join("x".join(map(str, s.shape)) or "scalar" for s in specs[:4])
    if len(specs) > 4:
        shapes += f", ... ({len(specs)} tensors)"
    dtypes = ",".join(sorted({str(s.dtype).replace("torch.", "") for s in specs}))
    return shapes, dtypes


def _nodes(gm: fx.GraphModule) -> tuple[list[dict[str, Any]], str, dict[str, str]]:
    paths, types, model_class = _module_paths(gm.graph)
    rows = []
    for index, n in enumerate(gm.graph.nodes):
        ann = annotation(n) if has_annotation(n) else None
        shape, dtype = _shape_dtype(n)
        tags = jsonable(dict(ann.tags)) if ann else {}
        rows.append({
            "id": n.name, "index": index, "op": n.op, "target": _target_name(n), "module": paths.get(n.name, ""),
            "shape": shape, "dtype": dtype,
            "flops": ann.flops if ann else 0,
            "bytes_read": ann.bytes_read if ann else 0, "bytes_written": ann.bytes_written if ann else 0,
            "out_bytes": _out_bytes(n), "param_bytes": ann.param_bytes if ann else 0,
            "cost_s": jsonable(ann.cost_s) if ann else None, "latency_s": jsonable(ann.latency_s) if ann else None,
            "partition": ann.partition if ann else None, "created_by": ann.created_by if ann else "capture",
            "tags": tags, "marks": node_marks(tags),
            "inputs": [a.name for a in n.all_input_nodes],
        })
    return rows, model_class, types


def _records(cm: Any) -> list[dict[str, Any]]:
    out = []
    for r in cm.records:
        row = jsonable(r)
        if isinstance(row, dict):
            out.append(row)
    return out


def partition_stats(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-partition cost, parameter bytes, bytes in/out; total cut bytes; cost imbalance.

    A tensor crossing into a partition counts once per consuming partition (it is
    sent once, however many nodes there read it).
    """
    parts = sorted({n["partition"] for n in nodes if n["partition"] is not None})
    if not parts:
        return None
    by_id = {n["id"]: n for n in nodes}
    rows = {p: {"partition": p, "nodes": 0, "cost_s": 0.0, "flops": 0, "param_bytes": 0, "bytes_in": 0,
                "bytes_out": 0} for p in parts}
    sent: set[tuple[str, int]] = set()
    for n in nodes:
        p = n["partition"]
        if p is None:
            continue
        row = rows[p]
        row["nodes"] += 1
        row["cost_s"] += float(n["cost_s"]) if isinstance(n["cost_s"], (int, float)) else 0.0
        row["flops"] += n["flops"]
        row["param_bytes"] += n["param_bytes"]
        for src_id in n["inputs"]:
            src = by_id[src_id]
            if src["partition"] is None or src["partition"] == p or (src_id, p) in sent:
                continue
            sent.add((src_id, p))
            row["bytes_in"] += src["out_bytes"]
            rows[src["partition"]]["bytes_out"] += src["out_bytes"]
    costs = [r["cost_s"] for r in rows.values()]
    mean = sum(costs) / len(costs)
    return {"rows": list(rows.values()), "cut_bytes": sum(r["bytes_in"] for r in rows.values()),
            "imbalance": (max(costs) / mean) if mean > 0 else 1.0}


def _stats(cm: Any) -> Any:
    stats = getattr(cm, "stats", None)
    if callable(stats):
        try:
            stats = stats()
        except TypeError:
            stats = None
    return jsonable(stats) if stats is not None else None


def _versions(cm: Any) -> dict[str, str]:
    """Versions from the artifact when loaded (what compiled it), else this process's.

    Read from package metadata: importing onnxruntime/transformers just to print
    their version would cost seconds.
    """
    saved = cm.config.get("versions")
    if isinstance(saved, dict):
        return {str(k): str(v) for k, v in saved.items()}
    import platform
    from importlib import metadata

    from autoglm._version import __version__

    out = {"autoglm": __version__, "torch": torch.__version__,
           "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _param_bytes(nodes: list[dict[str, Any]]) -> int:
    return sum(n["param_bytes"] for n in nodes if n["op"] in ("get_attr", "call_module"))


def _summary(nodes: list[dict[str, Any]], passes: int) -> dict[str, Any]:
    return {"nodes": len(nodes), "flops": sum(n["flops"] for n in nodes), "param_bytes": _param_bytes(nodes),
            "cost_s": sum(float(n["cost_s"]) for n in nodes if isinstance(n["cost_s"], (int, float))),
            "passes": passes}


def _captured(cm: Any) -> dict[str, Any] | None:
    """The graph as captured (before any pass), when the compile kept it: its nodes, views, summary."""
    from autoglm.report.views import build_views

    snap = cm.notes.get(CAPTURED_NOTE)
    if getattr(snap, "graph", None) is None:
        return None
    nodes, _, module_types = _nodes(snap)  # reads only .graph: drawn even once the weights are gone
    return {"summary": _summary(nodes, 0), "nodes": nodes, "graph": build_views(nodes, module_types)}


def build_report_data(cm: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every fact the report shows, as one JSON-able dict (written as the JSON twin)."""
    from autoglm.report.views import build_views

    nodes, model_class, module_types = _nodes(cm.graph_module)
    model_class = model_class or cm.config.get("model_class", "")
    inputs = [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for t in cm.example_inputs]
    input_desc = cm.config.get("input") or (f"{model_class} (live nn.Module)" if model_class else "(not recorded)")
    notes = {k: v for k, v in cm.notes.items() if k not in ("timings", "frontend_reasons", CAPTURED_NOTE)}
    plan = getattr(cm, "plan", None)
    provenance: dict[str, int] = {}
    for n in nodes:
        provenance[n["created_by"]] = provenance.get(n["created_by"], 0) + 1
    extra = jsonable(extra or {})
    data = {
        "schema": SCHEMA_VERSION,
        "header": {
            "input": input_desc, "model_class": model_class, "frontend": cm.frontend,
            "frontend_reasons": jsonable(cm.notes.get("frontend_reasons", {})),
            "example_inputs": inputs, "versions": _versions(cm), "config": jsonable(cm.config),
            "reproduce": reproduce(cm.config), "command": reproduce(cm.config)["command"],
            "timings": jsonable(cm.notes.get("timings", {})),
            "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "summary": _summary(nodes, len(cm.records)),
        "passes": _records(cm),
        "provenance": provenance,
        "nodes": nodes,
        "partitions": partition_stats(nodes),
        "plan": jsonable(plan) if plan is not None else None,
        "branches": _stats(cm),
        "notes": jsonable(notes),
        "accuracy": extra.pop("accuracy", None),
        "latency": extra.pop("latency", None),
        "extra": extra,
    }
    data["graph"] = build_views(nodes, module_types)
    data["captured"] = _captured(cm)
    return data
