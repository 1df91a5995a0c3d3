"""Cut the graph into exactly K balanced, loop-free partitions (one per device or stage).

    before:  x -> lin1 -> relu -> lin2 -> relu -> lin3 -> out
    after:   same graph; annotation(node).partition:
             x:0  lin1:0 relu:0 | lin2:1 relu:1 | lin3:1    (k=2)

The graph changes only where a shape value (``x.shape``, a size) is read in
several partitions: each of them gets its own copy of the cheap shape nodes
(``shapes.py``), since only tensors cross a boundary; and where a heavy node
keeps the parts from balance (it is then split exactly, see ``split.py``;
``split=False`` turns that off).
The pass writes ``annotation(node).partition`` on every compute node
(placeholders and ``get_attr`` take the partition of their first reader) and
leaves the plan in ``ctx.notes["partition"]["plan"]``
(``CompiledModel.plan``). The executors (``autoglm.runtime.local``,
``autoglm.runtime.pipeline.driver``) read the annotations.

``method="louvain"`` (default): Louvain communities on the op graph weighted by
bytes, refined into K parts (``partition_refine.py`` explains the steps).
``method="metis"`` and ``method="even"`` are the baselines
(``partition_baselines.py``). ``balance`` is the allowed max/mean partition
cost; when a single unit is heavier than that allows, the cap rises to the
smallest feasible one. ``contiguous=True`` measures cut bytes as a pipeline
chain does (a value skipping a stage is forwarded through it).

``modified`` is True when any node's partition changed or a node was split.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx

from autoglm.cost.model import COSTS_AT, CostModel
from autoglm.ir.annotate import annotate
from autoglm.ir.meta import annotation, has_symbolic_shapes
from autoglm.ir.pass_base import GraphPass, PassContext, PassResult
from autoglm.passes.partition.baselines import even_partition, fill_empty_parts, has_loop, metis_partition
from autoglm.passes.partition.shapes import place_shape_nodes
from autoglm.passes.partition.split import balance_splits, split_for_balance
from autoglm.passes.partition.refine import (UnitGraph, balanced_stage_cost, build_unit_graph, cut_bytes, cut_sequence,
                                             effective_costs, forwarded_bytes, is_monotone, louvain_order, part_costs,
                                             refine_moves)

__all__ = ["Partition", "PartitionOptions", "PartitionPlan", "PartitionInfo", "PartitionError"]

_METHODS = ("louvain", "metis", "even")


class PartitionError(ValueError):
    """The graph cannot be cut as asked (more parts than units, bad option)."""


@dataclass
class PartitionOptions:
    k: int = 2  # number of parts; part p runs on devices[p % len(devices)]
    method: Literal["louvain", "metis", "even"] = "louvain"
    resolution: float = 1.0  # Louvain resolution: higher -> more, smaller communities
    contiguous: bool = False  # pipeline chain: count forwarded bytes, move only between neighbours
    seed: int = 0  # Louvain's random seed: the same seed gives the same parts
    balance: float = 1.10  # allowed max partition cost / mean partition cost
    # A graph with fewer placeable units than k: one part per unit instead of an
    # error. The default pipeline sets it so a tiny model on many devices compiles.
    fewer_ok: bool = False
    # louvain: when no cut of the graph's order reaches `balance`, split the heavy
    # nodes the ideal boundaries fall into (partition_split.py). Changes the graph.
    split: bool = True
    # contiguous pipelines: microbatches per step. Each stage is then balanced with the
    # fill it waits for every step (its predecessors' first microbatch, see
    # partition_refine.py); 0 balances the stages' own costs.
    microbatches: int = 0

    def __post_init__(self) -> None:
        # Checked when the pipeline is built: partition(method=spectral) used to run the model twice first.
        if self.method not in _METHODS:
            raise PartitionError(f"partition: method must be one of {', '.join(_METHODS)}, got {self.method!r}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise PartitionError(f"partition: k must be a positive integer, got {self.k!r}")
        if not isinstance(self.microbatches, int) or self.microbatches < 0:
            raise PartitionError(f"partition: microbatches must be a non-negative integer, got {self.microbatches!r}")
        if self.balance < 1.0:
            raise PartitionError(f"partition: balance is max/mean partition cost and must be >= 1.0, "
                                 f"got {self.balance}")


@dataclass
class PartitionInfo:
    index: int
    nodes: list[str]
    cost_s: float
    param_bytes: int
    bytes_in: int  # bytes this partition receives from other partitions
    bytes_out: int  # bytes it sends (each value once per receiving partition)
    depends_on: list[int] = field(default_factory=list)


@dataclass
class PartitionPlan:
    method: str
    k: int
    contiguous: bool
    parts: list[PartitionInfo]
    cut_bytes: int  # bytes sent between partitions, each value once per reader partition
    forwarded_bytes: int  # bytes over a chain of stages (what a pipeline moves)
    imbalance: float  # max partition cost / mean
    loop_free: bool
    louvain_communities: int | None = None
    communities_after_loop_merge: int | None = None
    metis_raw_loop_free: bool | None = None  # METIS before repair
    order: str | None = None  # louvain: which node order the DP cut ("louvain" communities or "graph")
    splits: list[dict] = field(default_factory=list)  # nodes split so parts could balance (partition_split.py)
    split_refused: str | None = None  # why wanted balance splits were not kept
    # contiguous with microbatches: max (cost + fill) / the perfectly balanced value
    step_imbalance: float | None = None
    time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PartitionPlan":
        """The plan as ``to_json`` wrote it (artifacts keep it beside the graph)."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {key: value for key, value in data.items() if key in known}
        fields["parts"] = [PartitionInfo(**p) for p in data.get("parts", [])]
        return cls(**fields)

    def summary(self) -> str:
        step = f", step imbalance {self.step_imbalance:.3f}" if self.step_imbalance is not None else ""
        rows = [f"{self.method} k={self.k}: cut {self.cut_bytes:,} B, imbalance {self.imbalance:.3f}{step}, "
                f"{self.time_s * 1e3:.1f} ms"]
        rows += [f"  split {s['node']} ({s['how']}, pieces {s['sizes']}) to balance" for s in self.splits]
        for p in self.parts:
            rows.append(f"  part {p.index}: {len(p.nodes)} nodes, {p.cost_s * 1e3:.3f} ms, "
                        f"params {p.param_bytes:,} B, in {p.bytes_in:,} B, out {p.bytes_out:,} B, "
                        f"after {p.depends_on}")
        return "\n".join(rows)


def _fill(o: PartitionOptions) -> float:
    """Pipeline fill per unit of a stage's predecessors' cost (0 unless a contiguous pipeline)."""
    return 1.0 / o.microbatches if o.contiguous and o.microbatches > 0 else 0.0


def _partition_units(ug: UnitGraph, o: PartitionOptions) -> tuple[list[int], dict[str, Any]]:
    extra: dict[str, Any] = {}
    if o.method == "even":
        return even_partition(ug, o.k), extra
    if o.method == "metis":
        part, raw_ok = metis_partition(ug, o.k)
        extra["metis_raw_loop_free"] = raw_ok
        return part, extra
    seq, ncom, nmerged = louvain_order(ug, o.resolution, o.seed)
    extra["louvain_communities"] = ncom
    extra["communities_after_loop_merge"] = nmerged
    # The DP can only cut the order it is given. Louvain's order groups communities
    # (branches land in one part); the graph's own order keeps a chain of parallel
    # branches intact when a community mixes early and late nodes. Cut both, keep the better.
    metric = forwarded_bytes if o.contiguous else cut_bytes
    fill = _fill(o)
    mean = balanced_stage_cost(sum(max(c, 0.0) for c in ug.cost), o.k, fill)
    best: tuple[int, list[int], str] | None = None
    for name, order in (("louvain", seq), ("graph", list(range(ug.n)))):
        part = cut_sequence(ug, order, o.k, o.balance, fill)
        # Local moves may fill a part up to the balance cap (or to what the DP needed, if more).
        cap = max(o.balance * mean, max(effective_costs(part_costs(ug, part, o.k), fill)))
        part = fill_empty_parts(ug, refine_moves(ug, part, o.k, cap, o.contiguous, fill=fill), o.k)
        score = metric(ug, part)
        if best is None or score < best[0]:
            best = (score, part, name)
    assert best is not None
    extra["order"] = best[2]
    return best[1], extra


def _plan(gm: fx.GraphModule, ug: UnitGraph, part: list[int], o: PartitionOptions, node_part: dict[fx.Node, int],
          extra: dict[str, Any], wall: float, node_cost) -> PartitionPlan:
    k = o.k
    costs = part_costs(ug, part, k)
    in_units = {n for nodes in ug.units for n in nodes}
    for n, p in node_part.items():  # shape nodes and their copies: a part costs what all its nodes cost
        if n not in in_units:
            costs[p] += node_cost(n)
    params = [0] * k
    for u, p in enumerate(part):
        params[p] += ug.param_bytes[u]
    bytes_in, bytes_out = [0] * k, [0] * k
    deps: list[set[int]] = [set() for _ in range(k)]
    for src, nbytes, dsts in ug.values:
        readers = {part[d] for d in dsts} - {part[src]}
        bytes_out[part[src]] += nbytes * len(readers)
        for q in readers:
            bytes_in[q] += nbytes
            deps[q].add(part[src])
    names: list[list[str]] = [[] for _ in range(k)]
    for n, p in node_part.items():
        names[p].append(n.name)
    mean = sum(costs) / k if k else 0.0
    fill = _fill(o)
    if fill:
        extra["step_imbalance"] = max(effective_costs(costs, fill)) / balanced_stage_cost(sum(costs), k, fill)
    parts = [PartitionInfo(p, names[p], costs[p], params[p], bytes_in[p], bytes_out[p], sorted(deps[p]))
             for p in range(k)]
    return PartitionPlan(o.method, k, o.contiguous, parts, cut_bytes(ug, part), forwarded_bytes(ug, part),
                         max(costs) / mean if mean > 0 else 1.0, not has_loop(ug, part, k), time_s=wall, **extra)


def _kept_partition(ug: UnitGraph, o: PartitionOptions) -> list[int] | None:
    """The units' current partitions, if they already form a valid plan for these options.

    Re-partitioning a graph a balance split changed finds a different (not better) cut and
    splits again; keeping a plan that is complete, loop-free, contiguous when asked and
    within ``balance`` makes a second run a no-op.
    """
    part = []
    for nodes in ug.units:
        labels = {annotation(n).partition for n in nodes}
        if len(labels) != 1 or not isinstance(next(iter(labels)), int) or not 0 <= next(iter(labels)) < o.k:
            return None
        part.append(labels.pop())
    costs = part_costs(ug, part, o.k)
    mean = sum(costs) / o.k
    if len(set(part)) != o.k or has_loop(ug, part, o.k) or (o.contiguous and not is_monotone(ug, part)):
        return None
    return part if mean > 0 and max(costs) / mean <= o.balance else None


def _reannotate(gm: fx.GraphModule, ctx: PassContext) -> Any:
    """Shapes, bytes and costs for the nodes a balance split made (the units are built from them); the outputs."""
    with torch.no_grad():
        outputs = annotate(gm, ctx.example_inputs)
    if isinstance(ctx.cost, CostModel):
        ctx.cost.annotate_costs(gm, ctx.example_inputs if ctx.cost.kind == "measured" else None)
    return outputs


class Partition(GraphPass):
    name = "partition"
    Options = PartitionOptions
    exact = True
    requires = ("annotated",)
    ensures = ("partitioned",)
    summary = "Louvain-based partitioning into K balanced loop-free parts (metis/even baselines)"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        o: PartitionOptions = self.options
        t0 = time.perf_counter()
        node_cost = ctx.cost.node_cost if ctx.cost is not None else (lambda n: annotation(n).cost_s or 0.0)
        ug = build_unit_graph(gm, node_cost)
        if ug.n < o.k and o.fewer_ok:
            o = dataclasses.replace(o, k=ug.n)
        if ug.n < o.k:
            raise PartitionError(f"partition: k={o.k} but the graph has only {ug.n} units that can be placed apart; "
                                 f"use k <= {ug.n}")
        splits: list[dict] = []
        split_refused: str | None = None
        kept = _kept_partition(ug, o)
        if kept is not None:  # a second run: the partition already there meets every requirement
            part, extra = kept, {}
        elif o.split and o.method == "louvain":
            wanted = balance_splits(gm, ug, o.k, o.balance, node_cost, _fill(o))
            splits, split_refused = split_for_balance(gm, wanted, node_cost, ctx.example_inputs,
                                                      lambda g: _reannotate(g, ctx))
            if splits:
                ug = build_unit_graph(gm, node_cost)
        if kept is None:
            part, extra = _partition_units(ug, o)
        extra["splits"] = splits
        extra["split_refused"] = split_refused
        node_part = {n: part[u] for u, nodes in enumerate(ug.units) for n in nodes}
        # Sizes cannot cross: each partition that reads one gets its own copy (shapes.py).
        copied = place_shape_nodes(gm, ug.shapes, node_part)
        if copied:
            gm.recompile()
        # Inputs and weights live where they are first read.
        for n in gm.graph.nodes:
            if n.op in ("placeholder", "get_attr"):
                readers = [node_part[u] for u in n.users if u in node_part]
                if readers:
                    node_part[n] = min(readers)
        wall = time.perf_counter() - t0
        modified = bool(splits) or copied
        for n in gm.graph.nodes:
            want = node_part.get(n)
            if annotation(n).partition != want:
                annotation(n).partition = want
                modified = True
        plan = _plan(gm, ug, part, o, {n: p for n, p in node_part.items() if n.op not in ("placeholder", "get_attr")},
                     extra, wall, node_cost)
        ctx.notes[self.name] = {"plan": plan, "k": o.k, "method": o.method, "cut_bytes": plan.cut_bytes,
                                "imbalance": plan.imbalance, "time_s": wall}
        if has_symbolic_shapes(gm.graph):  # balanced at the example's shapes, run as is at every other
            ctx.notes[self.name]["costs_at"] = COSTS_AT
        return PassResult(gm, modified)
