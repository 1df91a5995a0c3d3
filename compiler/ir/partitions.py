"""Turn a partitioned flat graph into one ``GraphModule`` per partition or per pipeline stage.

The ``partition`` pass only annotates nodes (``annotation(node).partition``);
the executors cut the graph here:

* ``extract_partitions``: one module per partition, taking exactly the values it
  reads (flat inputs or other partitions' outputs) and returning the values
  others read, for the local executor (a DAG of partitions).
* ``extract_stages``: a chain for ``torch.distributed.pipelining``: stage ``s``
  takes what stage ``s-1`` returns and returns everything later stages or the
  final output need, so values that skip a stage are forwarded through it.
  Stage 0 takes all flat inputs; the last stage returns the flat outputs.

Weights (``get_attr``) are re-read inside every partition that uses them;
compute nodes without a partition (added after the pass) join the latest
partition among their inputs, so the cut stays loop-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx

from autoglm.ir.meta import annotation, has_annotation

__all__ = ["PartModule", "PartitionLoopError", "node_partitions", "partition_order", "extract_partitions",
           "extract_stages", "output_names"]

_COMPUTE = ("call_function", "call_method", "call_module")


class PartitionLoopError(ValueError):
    """The partition annotations make partitions depend on each other in a loop."""


@dataclass
class PartModule:
    index: int  # the partition (or stage) index
    module: fx.GraphModule
    inputs: list[str]  # value names it takes, in order (flat input placeholders or producer nodes)
    outputs: list[str]  # value names it returns, in order
    reads_from: list[int]  # partitions it depends on (local executor)
    node_names: list[str]


def node_partitions(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Partition of every compute node; unannotated ones join their latest input's partition."""
    out: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        if n.op not in _COMPUTE:
            continue
        p = annotation(n).partition if has_annotation(n) else None
        if p is None:
            p = max((out[a] for a in n.all_input_nodes if a in out), default=0)
        out[n] = int(p)
    return out


def partition_order(gm: fx.GraphModule, parts: dict[fx.Node, int]) -> list[int]:
    """Partitions in dependency order; raises ``PartitionLoopError`` on a loop."""
    ids = sorted(set(parts.values()))
    succ: dict[int, set[int]] = {p: set() for p in ids}
    indeg = {p: 0 for p in ids}
    for n, p in parts.items():
        for u in n.users:
            q = parts.get(u)
            if q is not None and q != p and q not in succ[p]:
                succ[p].add(q)
                indeg[q] += 1
    ready = sorted(p for p in ids if indeg[p] == 0)
    order = []
    while ready:
        p = ready.pop(0)
        order.append(p)
        for q in sorted(succ[p]):
            indeg[q] -= 1
            if indeg[q] == 0:
                ready.append(q)
        ready.sort()
    if len(order) != len(ids):
        stuck = sorted(set(ids) - set(order))
        raise PartitionLoopError(f"partitions {stuck} depend on each other in a loop; re-run the partition pass "
                                 "(it only produces loop-free partitions) instead of editing annotations by hand")
    return order


def output_names(gm: fx.GraphModule) -> list[Any]:
    """The flat output: node names (str) or constants, in order."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    vals = out.args[0]
    vals = vals if isinstance(vals, (tuple, list)) else (vals,)
    return [v.name if isinstance(v, fx.Node) else v for v in vals]


def _build(gm: fx.GraphModule, nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in inputs:
        env[n] = g.placeholder(n.name)
        env[n].meta = dict(n.meta)

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise KeyError(f"value {a.name} is not available in this partition")
            env[a] = g.node_copy(a)
        return env[a]

    for n in nodes:
        env[n] = g.node_copy(n, lookup)
    g.output(tuple(lookup(o) for o in outputs))
    # Root = the whole graph module: GraphModule copies only the submodules/attributes this graph uses.
    return fx.GraphModule(gm, g, class_name="Partition")


def extract_partitions(gm: fx.GraphModule) -> list[PartModule]:
    """One module per partition, in dependency order."""
    parts = node_partitions(gm)
    order = partition_order(gm, parts)
    final = {name for name in output_names(gm) if isinstance(name, str)}
    result = []
    for p in order:
        nodes = [n for n in gm.graph.nodes if parts.get(n) == p]
        mine = set(nodes)
        inputs: list[fx.Node] = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a not in mine and a.op != "get_attr" and a not in inputs:
                    inputs.append(a)
        outputs = [n for n in nodes if n.name in final or any(u in parts and parts[u] != p for u in n.users)]
        reads = sorted({parts[a] for a in inputs if a in parts})
        result.append(PartModule(p, _build(gm, nodes, inputs, outputs), [a.name for a in inputs],
                                 [o.name for o in outputs], reads, [n.name for n in nodes]))
    return result


def extract_stages(gm: fx.GraphModule) -> list[PartModule]:
    """A chain of stages (partitions in dependency order) with forwarding."""
    parts = node_partitions(gm)
    order = partition_order(gm, parts)
    stage_of = {n: order.index(p) for n, p in parts.items()}
    nstages = len(order)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    final = output_names(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    for name in final:
        if not isinstance(name, str):
            raise ValueError("pipeline: the flat output holds a constant; only tensor outputs can be pipelined")
        if by_name[name].op == "get_attr":
            raise ValueError(f"pipeline: output {name} is a weight read; only computed outputs can be pipelined")
    # last stage (exclusive) at which each value is still needed
    produced = {n: stage_of.get(n, -1) for n in list(parts) + placeholders}
    needed_until: dict[fx.Node, int] = {}
    for n in produced:
        users = [stage_of[u] for u in n.users if u in stage_of]
        if n.name in final:
            users.append(nstages)
        if users:
            needed_until[n] = max(users)

    def live_in(s: int) -> list[fx.Node]:  # values produced before s and read at s or later
        return [n for n in produced if produced[n] < s and needed_until.get(n, -1) >= s]

    stages = []
    for s in range(nstages):
        nodes = [n for n in gm.graph.nodes if stage_of.get(n) == s]
        inputs = placeholders if s == 0 else live_in(s)
        outputs = [by_name[name] for name in final] if s == nstages - 1 else live_in(s + 1)
        stages.append(PartModule(s, _build(gm, nodes, inputs, outputs), [a.name for a in inputs],
                                 [o.name for o in outputs], [s - 1] if s else [], [n.name for n in nodes]))
    return stages
