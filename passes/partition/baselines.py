"""Baselines for the ``partition`` pass, on the same unit graph and weights as Louvain.

* ``metis``: pymetis k-way on the undirected unit graph (vertex weight = cost,
  edge weight = bytes). METIS knows nothing about direction, so its parts can
  depend on each other in a loop; ``metis_raw_loop_free`` says whether they did,
  and ``metis_partition`` repairs loops by ordering the parts by their mean
  topological position and pushing each unit no earlier than its producers.
* ``even``: the contiguous split by parameter count that
  ``torch.distributed.pipelining``'s equal-size split makes (cost when the graph
  has no parameters).
"""
from __future__ import annotations

from typing import Sequence

from autoglm.passes.partition.refine import UnitGraph

__all__ = ["metis_raw", "metis_partition", "even_partition", "has_loop", "fill_empty_parts"]


def metis_raw(ug: UnitGraph, k: int) -> list[int]:
    """pymetis's own assignment (may contain loops between parts)."""
    import pymetis

    total = sum(ug.cost) or 1.0
    adj: list[dict[int, int]] = [dict() for _ in range(ug.n)]
    for src, nbytes, dsts in ug.values:
        w = max(1, nbytes // 1024)  # KiB keeps weights inside METIS's integer range
        for d in dsts:
            adj[src][d] = adj[src].get(d, 0) + w
            adj[d][src] = adj[d].get(src, 0) + w
    xadj, adjncy, eweights = [0], [], []
    for u in range(ug.n):
        for v in sorted(adj[u]):
            adjncy.append(v)
            eweights.append(adj[u][v])
        xadj.append(len(adjncy))
    vweights = [max(1, int(round(c / total * 1_000_000))) for c in ug.cost]
    opts = pymetis.Options(seed=0)
    _, parts = pymetis.part_graph(k, pymetis.CSRAdjacency(xadj, adjncy), vweights=vweights, eweights=eweights,
                                  options=opts)
    return list(parts)


def has_loop(ug: UnitGraph, part: Sequence[int], k: int) -> bool:
    """True when the quotient graph of ``part`` has a cycle."""
    succ: list[set[int]] = [set() for _ in range(k)]
    for src, _, dsts in ug.values:
        for d in dsts:
            if part[d] != part[src]:
                succ[part[src]].add(part[d])
    state = [0] * k  # 0 new, 1 on stack, 2 done

    def visit(v: int) -> bool:
        state[v] = 1
        for w in succ[v]:
            if state[w] == 1 or (state[w] == 0 and visit(w)):
                return True
        state[v] = 2
        return False

    return any(state[v] == 0 and visit(v) for v in range(k))


def fill_empty_parts(ug: UnitGraph, part: list[int], k: int) -> list[int]:
    """Renumber used parts 0..m-1 in order, then split the costliest part until k are non-empty.

    Splitting a part's units (in topological order) into halves at a new index
    right after it keeps every edge going to an equal or later index.
    """
    used = sorted(set(part))
    remap = {p: i for i, p in enumerate(used)}
    part = [remap[p] for p in part]
    m = len(used)
    while m < k:
        costs = [0.0] * m
        sizes = [0] * m
        for u, p in enumerate(part):
            costs[p] += ug.cost[u]
            sizes[p] += 1
        target = max((p for p in range(m) if sizes[p] > 1), key=lambda p: costs[p])
        members = [u for u in range(ug.n) if part[u] == target]  # unit ids are topological
        half, run, cut = costs[target] / 2, 0.0, 1
        for i, u in enumerate(members[:-1]):
            run += ug.cost[u]
            cut = i + 1
            if run >= half:
                break
        moved = set(members[cut:])
        part = [p + 1 if p > target else p for p in part]
        for u in moved:
            part[u] = target + 1
        m += 1
    return part


def metis_partition(ug: UnitGraph, k: int) -> tuple[list[int], bool]:
    """METIS parts with loops repaired; returns (partition per unit, raw result was loop-free)."""
    raw = metis_raw(ug, k)
    loop_free = not has_loop(ug, raw, k)
    # Order METIS's parts by mean topological position, then never place a unit before its producers.
    sums: dict[int, list[float]] = {}
    for u, p in enumerate(raw):
        sums.setdefault(p, [0.0, 0])
        sums[p][0] += u
        sums[p][1] += 1
    order = sorted(sums, key=lambda p: sums[p][0] / sums[p][1])
    rank = {p: i for i, p in enumerate(order)}
    part = [0] * ug.n
    for u in range(ug.n):  # topological
        part[u] = max([rank[raw[u]]] + [part[w] for w in ug.preds[u]])
    return fill_empty_parts(ug, part, k), loop_free


def even_partition(ug: UnitGraph, k: int) -> list[int]:
    """Contiguous split of the topological order into k parts of equal parameter bytes."""
    weights = [float(b) for b in ug.param_bytes]
    if sum(weights) == 0:
        weights = list(ug.cost)
    total = sum(weights) or 1.0
    part = [0] * ug.n
    run = 0.0
    for u in range(ug.n):
        # part index by the midpoint of the unit's weight, so a heavy unit sits where most of it falls
        part[u] = min(k - 1, int((run + weights[u] / 2) / total * k))
        run += weights[u]
    for u in range(1, ug.n):  # monotone even with zero-weight units
        part[u] = max(part[u], part[u - 1])
    return fill_empty_parts(ug, part, k)
