"""Workload-aware split/merge: split overloaded nodes, fuse runs of light ones.

A node's *load* is its cost divided by the per-device budget (default: the
graph's total cost / number of devices). A node above ``high`` is split into the
fewest exact shards that each fit under ``high`` (Linear by output or input
features, Conv2d by output channels, batched matmul by batch or heads; see
``split_nodes.py``). Maximal single-exit runs of adjacent nodes below ``low``
become one fused ``call_module`` (see ``merge_nodes.py``), as long as the run's
summed load stays under ``low`` too, so a merged node is still a light one.

    before (2 devices, fc2 holds 80% of the cost):
        x -> fc1 -> relu -> fc2 -> add(., y) -> layer_norm -> out
    after:
        x -> fc1 -> relu -> fc2_shard0 -+-> cat -> fused_add_layer_norm -> out
                               fc2_shard1 -+

Design decisions:

- The budget is priced on the work of the model, not on this pass's rewrite:
  fused nodes count at the summed cost of what they replaced and shards at
  their share of the original, so a second run sees the same budget and is a
  no-op. Shards and fused modules are tagged (``tags["split"]`` /
  ``tags["merged"]``) and never split or merged again.
- Linear, Conv2d and Embedding nodes are not merged unless
  ``merge_weighted=True``: partition, sparsify and quantize look for them at the
  top level of the graph.
- A node that would need more than ``max_shards`` shards (or more than its
  dimension has) is left whole and listed in the notes with the reason.
- On a graph with symbolic shapes nothing is split along a dimension whose size
  changes between calls (``split.py``): a matmul with a dynamic batch is split
  by its heads. Loads are computed at the example's shapes (``costs_at``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch.fx as fx

from autoglm.cost.model import COSTS_AT, CostModel
from autoglm.ir.effects import has_side_effects
from autoglm.ir.meta import annotation, has_symbolic_shapes, iter_compute_nodes, output_specs
from autoglm.ir.ops import OpKind, op_kind
from autoglm.ir.pass_base import GraphPass, PassContext, PassResult

from autoglm.passes.split_merge.merge import find_runs, fuse_run
from autoglm.passes.split_merge.split import SplitChoice, apply_split, split_choice

__all__ = ["SplitMerge", "SplitMergeOptions"]

_WEIGHTED_KINDS = {OpKind.LINEAR, OpKind.CONV2D, OpKind.EMBEDDING}


@dataclass
class SplitMergeOptions:
    high: float = 0.85  # split nodes whose load is above this fraction of the budget
    low: float = 0.30  # merge runs of nodes (and keep each run) below this fraction
    max_shards: int = 8
    budget: float | None = None  # seconds per device; default: total cost / devices
    devices: int | None = None  # default: len(ctx.devices)
    cost: Literal["auto", "analytic", "measured"] = "auto"  # auto: the compile's cost model
    split: bool = True
    merge: bool = True
    linear_dim: Literal["auto", "out", "in"] = "auto"  # auto: output features when there are enough
    merge_weighted: bool = False  # also merge light Linear/Conv2d/Embedding nodes

    def __post_init__(self) -> None:
        if not 0.0 < self.low < self.high:
            raise ValueError(f"split_merge needs 0 < low < high, got low={self.low}, high={self.high}")
        if self.max_shards < 2:
            raise ValueError(f"split_merge max_shards must be >= 2, got {self.max_shards}")
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"split_merge budget must be a positive number of seconds, got {self.budget}")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"split_merge devices must be >= 1, got {self.devices}")
        if self.cost not in ("auto", "analytic", "measured"):
            raise ValueError(f"split_merge cost must be 'auto', 'analytic' or 'measured', got {self.cost!r}")
        if self.linear_dim not in ("auto", "out", "in"):
            raise ValueError(f"split_merge linear_dim must be 'auto', 'out' or 'in', got {self.linear_dim!r}")


def _work(node: fx.Node, cost: float) -> float:
    """The node's share of the model's work: recorded for nodes this pass made, else its cost."""
    tags = annotation(node).tags
    for key in ("merged", "split"):
        if key in tags and "cost_s" in tags[key]:
            return float(tags[key]["cost_s"])
    return cost


def _is_ours(node: fx.Node) -> bool:
    tags = annotation(node).tags
    return "split" in tags or "merged" in tags


class SplitMerge(GraphPass):
    name = "split_merge"
    Options = SplitMergeOptions
    exact = True
    requires = ("annotated",)
    summary = "split nodes above `high` of the per-device budget into exact shards; fuse runs below `low`"

    def _cost_model(self, ctx: PassContext) -> CostModel:
        given = ctx.cost if isinstance(ctx.cost, CostModel) else None
        kind = self.options.cost
        if kind == "auto":
            kind = given.kind if given is not None else "analytic"
        if given is not None and given.kind == kind:
            return given
        return CostModel(kind, profile=given.profile if given is not None else None,
                         timings=given.timings if given is not None else None)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        opts = self.options
        cost = self._cost_model(ctx)
        if cost.kind == "measured":
            cost.measure(gm, ctx.example_inputs)  # cached: unchanged nodes are not re-timed
        costs = cost.node_costs(gm)
        devices = opts.devices or max(1, len(ctx.devices))
        total = sum(_work(n, c) for n, c in costs.items())
        budget = opts.budget or total / devices
        notes: dict = {"budget_s": budget, "devices": devices, "cost": cost.kind, "total_s": total,
                       "splits": [], "merges": [], "not_split": []}
        if has_symbolic_shapes(gm.graph):  # loads are the example's; other shapes reuse the same splits
            notes["costs_at"] = COSTS_AT
        ctx.notes[self.name] = notes
        if budget <= 0 or not costs:
            return PassResult(gm, False)
        load = {n: _work(n, c) / budget for n, c in costs.items()}
        notes["max_load_before"] = max(load.values())
        modified = False
        if opts.split:
            modified |= self._split(gm, costs, load, notes)
        if opts.merge:
            modified |= self._merge(gm, load, notes)
        if modified:
            gm.delete_all_unused_submodules()
            gm.recompile()
        after = [_work(n, load.get(n, 0.0) * budget) / budget for n in iter_compute_nodes(gm.graph)]
        notes["max_load_after"] = max(after, default=0.0)  # shards at their share, fused at their sum
        return PassResult(gm, modified)

    def _split(self, gm: fx.GraphModule, costs: dict, load: dict, notes: dict) -> bool:
        opts = self.options
        modified = False
        for node in list(costs):
            if _is_ours(node) or load[node] <= opts.high:
                continue
            shards = max(2, math.ceil(load[node] / opts.high - 1e-9))
            choice = split_choice(node, gm, opts.linear_dim, shards)
            reason = _refuse(choice, shards, opts.max_shards)
            if reason:
                notes["not_split"].append({"node": node.name, "load": load[node], "reason": reason})
                continue
            assert isinstance(choice, SplitChoice)
            combined = apply_split(gm, node, choice, shards, costs[node])
            share = load.pop(node) / shards
            for n in gm.graph.nodes:  # shards carry a share of the load; slices and cats none
                tag = annotation(n).tags.get("split")
                if tag and tag["of"] == node.name:
                    load[n] = share if tag["role"] == "shard" else 0.0
            notes["splits"].append({"node": node.name, "how": choice.how, "shards": shards,
                                    "load": share * shards, "shard_load": share, "combine": combined.name})
            modified = True
        return modified

    def _merge(self, gm: fx.GraphModule, load: dict, notes: dict) -> bool:
        opts = self.options

        def mergeable(n: fx.Node) -> bool:
            if _is_ours(n) or n not in load or load[n] >= opts.low or len(output_specs(n)) != 1:
                return False
            if has_side_effects(n):
                return False  # side effects and in-place updates stay where they are
            return opts.merge_weighted or op_kind(n, gm) not in _WEIGHTED_KINDS

        runs = find_runs(gm.graph, mergeable, load.__getitem__, cap=opts.low)
        budget = notes["budget_s"]
        for run in runs:
            run_load = sum(load[n] for n in run)
            fused = fuse_run(gm, run, run_load * budget)
            load[fused] = run_load
            notes["merges"].append({"module": str(fused.target), "nodes": len(run), "load": run_load})
        return bool(runs)


def _refuse(choice: SplitChoice | str, shards: int, max_shards: int) -> str:
    if isinstance(choice, str):
        return choice
    if shards > max_shards:
        return f"needs {shards} shards to fit under `high`, more than max_shards={max_shards}"
    if shards > choice.extent:
        return f"needs {shards} shards but the {choice.how} dimension has only {choice.extent}"
    return ""
