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

    before (k=2, conv2 holds 60%):   x -> conv1 -> relu -> conv2 -> out
                                          part 0 ............ | part 1 (imbalance 1.2)
    after:                            x -> conv1 -> relu -+-> conv2[:c1] -+-> cat -> out
                                                          +-> conv2[c1:] -+
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.fx as fx

from autoglm.passes.partition_refine import UnitGraph, balanced_stage_cost, min_max_cap
from autoglm.passes.split_nodes import SplitChoice, apply_split, split_choice

__all__ = ["BalanceSplit", "balance_splits", "apply_balance_splits"]

BalanceSplit = tuple[fx.Node, SplitChoice, list[int]]  # node, how, piece sizes along the split dimension


def _sizes(fractions: Sequence[float], extent: int) -> list[int] | None:
    """Piece sizes of ``extent`` ending at each boundary fraction; None when a piece would be empty."""
    cuts = [0] + [round(f * extent) for f in fractions] + [extent]
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]
    return sizes if min(sizes) >= 1 else None


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
        choice = split_choice(heavy, gm, "out", len(fractions) + 1)
        if isinstance(choice, str):
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
