"""Keep an earlier ``partition`` valid across quantize's rewrites.

Quantize replaces a layer's node by new ones (q/dq ops, then an int8 module).
Without care the new nodes have no partition: the report draws them grey, the
``partitioned`` property fails and the plan is dropped, although the rewrite
keeps the data flow (same values cross the same cuts). So every new node takes
the partition of the node it replaces, and the plan's per-partition node lists
are renamed to the graph's current node names. The plan's cost estimates stay
those the partition pass made (before int8); the report recomputes costs from
the final graph.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch.fx as fx

from autoglm.ir.meta import annotation, has_annotation, iter_compute_nodes

__all__ = ["inherit_partition", "nodes_between", "sync_partition_plan"]


def nodes_between(after: fx.Node, before: fx.Node) -> list[fx.Node]:
    """The nodes strictly between ``after`` and ``before`` in graph order (what was inserted there)."""
    out, n = [], after.next
    while n is not before and n.op != "root":
        out.append(n)
        n = n.next
    return out


def inherit_partition(new_nodes: Iterable[fx.Node], source: fx.Node) -> None:
    """Give each new node the partition (and module stack) of ``source``, the node it replaces."""
    part = annotation(source).partition if has_annotation(source) else None
    stack = source.meta.get("nn_module_stack")
    for n in new_nodes:
        if stack is not None and "nn_module_stack" not in n.meta:  # where it sits in the model, for the report
            n.meta["nn_module_stack"] = dict(stack)
        if part is not None and n.op != "get_attr":  # weights are read by every partition that reads them
            annotation(n).partition = part


def sync_partition_plan(gm: fx.GraphModule, notes: dict[str, Any]) -> None:
    """Rename the partition plan's node lists to the current graph (no-op without a plan)."""
    plan = (notes.get("partition") or {}).get("plan")
    parts = getattr(plan, "parts", None)
    if not parts:
        return
    by_part: dict[int, list[str]] = {}
    for n in iter_compute_nodes(gm.graph):
        p = annotation(n).partition if has_annotation(n) else None
        if p is not None:
            by_part.setdefault(int(p), []).append(n.name)
    for part in parts:
        part.nodes = by_part.get(int(part.index), [])
