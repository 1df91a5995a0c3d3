"""Split the nodes that keep a partition from balance (a helper of the ``partition`` pass).

Parts can only be as even as the units they are made of. ResNet-18's 3x3
convolutions each carry about 6% of the model, so with K=8 (12.5% a part) the
best loop-free cut of the graph's order has max/mean 1.13, whatever the method.
When that best cut misses ``balance``, each ideal boundary (``i * total / K``
along the graph's order, i = 1..K-1) that falls inside a unit, farther than
half the slack (``(balance - 1) * mean / 2``) from both of its edges, splits
that unit's heavy node exactly at the boundary: a Linear or Conv2d by output
features/channels, a batched matmul by its batch dimension (``split_nodes.py``;
the math is unchanged, only regrouped). The first piece ends where the boundary
falls, so a cut between the pieces is the balanced one; the cut's cost is the
node's input, which now crosses too. The partition DP then decides whether to
cut there.

Exact in math is not always exact in floating point: a kernel may pick another
blocking for a narrower operand. Measured here: batched matmuls split along a
later batch dimension (non-contiguous slices) moved results by 9e-5, along dim 0
not at all; Linear pieces of 1-8 output features were rarely bitwise equal, 16
and 24 always. So matmuls are split along dim 0 only, piece sizes are rounded to
multiples of 16 where the dimension allows, and the split graph is run on the
example inputs and kept only when its outputs ``assert_close`` to the unsplit
graph's (the fuzzer found a case that missed by 2.6e-6 relative); otherwise the
pass partitions the unsplit graph and the plan says why. A matmul whose dim 0 is
symbolic (a dynamic batch) is not split: its slices would fix the batch to the
example's (``split_merge/split.py``).

    before (k=2, conv2 holds 60%):   x -> conv1 -> relu -> conv2 -> out
                                          part 0 ............ | part 1 (imbalance 1.2)
    after:                            x -> conv1 -> relu -+-> conv2[:c1] -+-> cat -> out
                                                          +-> conv2[c1:] -+
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from autoglm.ir.meta import dim_is_static, output_specs, private_copy
from autoglm.ir.ops import matmul_view
from autoglm.passes.partition.refine import UnitGraph, balanced_stage_cost, min_max_cap
from autoglm.passes.split_merge.split import SplitChoice, apply_split, split_choice

__all__ = ["BalanceSplit", "balance_splits", "apply_balance_splits", "split_for_balance"]

BalanceSplit = tuple[fx.Node, SplitChoice, list[int]]  # node, how, piece sizes along the split dimension


_ALIGN = 16  # piece sizes along the split dimension, where it has room (see above)


def _sizes(fractions: Sequence[float], extent: int) -> list[int] | None:
    """Piece sizes of ``extent`` ending at each boundary fraction; None when a piece would be empty."""
    step = _ALIGN if extent >= 2 * _ALIGN * (len(fractions) + 1) else 1
    cuts = [0] + [step * round(f * extent / step) for f in fractions] + [extent]
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    return sizes if min(sizes) >= 1 else None


def _choice(node: fx.Node, gm: fx.GraphModule, pieces: int) -> SplitChoice | None:
    choice = split_choice(node, gm, "out", pieces)
    if isinstance(choice, str):
        return None
    if choice.how == "matmul_batch" and choice.dim != 0:  # contiguous slices only
        shape = output_specs(node)[0].shape
        mv = matmul_view(node, gm)
        # split_choice passed over dim 0 when it is symbolic (a dynamic batch): so must we.
        static = mv is not None and dim_is_static(mv.a, 0) and dim_is_static(mv.b, 0)
        return (SplitChoice("matmul_batch", int(shape[0]), 0)
                if static and len(shape) >= 3 and shape[0] >= pieces else None)
    return choice


def balance_splits(gm: fx.GraphModule, ug: UnitGraph, k: int, balance: float,
                   node_cost: Callable[[fx.Node], float], fill: float = 0.0) -> list[BalanceSplit]:
    """The splits that let a cut of the graph's order reach ``balance`` (empty when it already can).

    ``fill``: pipeline fill (``partition_refine``); the ideal boundaries then give
    every stage the same effective cost instead of the same cost.
    """
    costs = [max(c, 0.0) for c in ug.cost]
    total = sum(costs)
    if k < 2 or total <= 0:
        return []
    mean = balanced_stage_cost(total, k, fill)
    if min_max_cap(costs, k, fill) <= balance * mean * (1 + 1e-9):
        return []
    slack = (balance - 1.0) * mean / 2
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inside: dict[int, list[float]] = {}  # unit -> boundary fractions inside it
    u, b = 0, 0.0
    for _ in range(1, k):
        b = mean + (1.0 - fill) * b  # where the next stage starts when every stage costs `mean`
        while u < ug.n and prefix[u + 1] <= b:
            u += 1
        if u >= ug.n or min(b - prefix[u], prefix[u + 1] - b) <= slack:
            continue
        inside.setdefault(u, []).append((b - prefix[u]) / costs[u])
    out: list[BalanceSplit] = []
    for u, fractions in inside.items():
        heavy = max(ug.units[u], key=node_cost)
        if node_cost(heavy) < 0.5 * costs[u]:
            continue  # the unit's cost is spread over nodes: no single split moves the boundary
        choice = _choice(heavy, gm, len(fractions) + 1)
        if choice is None:
            continue
        # The heavy node's pieces carry its cost; the unit's other nodes stay with the last one.
        share = costs[u] / node_cost(heavy)
        sizes = _sizes([min(f * share, 1.0) for f in fractions], choice.extent)
        if sizes is not None:
            out.append((heavy, choice, sizes))
    return out


def apply_balance_splits(gm: fx.GraphModule, splits: Sequence[BalanceSplit],
                         node_cost: Callable[[fx.Node], float]) -> list[dict]:
    """Rewrite ``gm`` with ``splits``; returns what was split, for the plan."""
    done = []
    for node, choice, sizes in splits:
        name, cost = node.name, node_cost(node)
        combined = apply_split(gm, node, choice, len(sizes), cost, sizes)
        done.append({"node": name, "how": choice.how, "sizes": list(sizes), "combine": combined.name})
    if done:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return done


def split_for_balance(gm: fx.GraphModule, splits: Sequence[BalanceSplit], node_cost: Callable[[fx.Node], float],
                      example_inputs: Sequence[Any],
                      reannotate: Callable[[fx.GraphModule], Any]) -> tuple[list[dict], str | None]:
    """Try ``splits`` on a copy of ``gm`` first; keep them only when the outputs hold.

    Returns (splits made on ``gm``, why they were refused). ``reannotate(graph)``
    annotates a graph and returns its outputs on the example inputs. The copy keeps
    ``gm``'s own nodes (their identity and provenance) out of a split that is refused.
    """
    if not splits:
        return [], None
    with torch.no_grad():
        before = gm(*example_inputs)
    trial = private_copy(gm)
    by_name = {n.name: n for n in trial.graph.nodes}
    apply_balance_splits(trial, [(by_name[n.name], c, s) for n, c, s in splits], node_cost)
    try:
        torch.testing.assert_close(tuple(reannotate(trial)), tuple(before))
    except AssertionError as exc:
        lines = str(exc).strip().splitlines()
        return [], f"split graph's outputs moved beyond fp32 tolerance ({lines[-1] if lines else 'mismatch'})"
    done = apply_balance_splits(gm, splits, node_cost)
    reannotate(gm)
    return done, None
