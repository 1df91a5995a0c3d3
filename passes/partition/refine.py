"""The graph the partitioner works on, and Louvain → exactly K loop-free balanced parts.

Helpers of the ``partition`` pass (``passes/partition/partition.py``), not a pass itself.

*Units* are the atoms of partitioning: compute nodes joined when the value
between them is not a single transferable tensor (ints, tuples read through
``getitem``), so only tensors ever cross a boundary. A unit's weight is its cost
(``CostModel.node_cost``); a *value* is one node's tensor output with the units
that read it; its bytes weigh the edges. Shape values (``x.shape``, sizes and
arithmetic on them) are no part of any unit: the pass recomputes them in every
partition that reads them (``shapes.py``), so a reader of a shape value reads,
in the unit graph, the tensors the value comes from. Otherwise one
``B, T, C = x.shape`` used by every block would join every block into one unit.

Refinement, in order:

1. Louvain communities on the unit graph (edges weighted by bytes).
2. Communities that depend on each other in a loop are merged (strongly
   connected components of the community graph).
3. Communities are laid out in dependency order, units inside each in
   topological order: every cut of that sequence is loop-free.
4. A dynamic program cuts the sequence into exactly K segments, minimising the
   bytes live across the cuts with every segment's cost under the balance cap;
   among equal cuts, the most balanced.
5. Local moves of single units to a neighbouring partition that lower the cut
   bytes without breaking the cap, emptying a part or creating a loop
   (partition indices stay monotone along every edge).

*Pipeline fill* (``fill = 1 / microbatches``, contiguous pipelines): a stage's
time per step is its own cost plus the fill it waits for at the start of every
step, its predecessors' first microbatch: ``S_j + fill * (S_0 + ... + S_{j-1})``.
``torch.distributed.pipelining`` schedules run step by step (``schedule.eval``
returns when its sends are received), so stage 0 cannot run ahead into the next
step and the wait recurs every step; measured on the ResNet pipeline, the last
stage waited 2.3 ms (stage 0's first microbatch) at the start of every 16 ms
step. The DP, the cap and the moves then balance these *effective* costs; with
``fill = 0`` they are the plain costs.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch.fx as fx

from autoglm.ir.meta import annotation, output_specs
from autoglm.passes.partition.shapes import shape_nodes, shape_sources

__all__ = ["UnitGraph", "build_unit_graph", "louvain_order", "cut_sequence", "min_max_cap", "refine_moves",
           "cut_bytes", "forwarded_bytes", "is_monotone", "part_costs", "balanced_stage_cost", "effective_costs"]

_COMPUTE = ("call_function", "call_method", "call_module")


@dataclass
class UnitGraph:
    units: list[list[fx.Node]]  # in topological order
    cost: list[float]
    param_bytes: list[int]
    # values crossing units: (producer unit, bytes, consumer units != producer)
    values: list[tuple[int, int, tuple[int, ...]]]
    preds: list[set[int]] = field(default_factory=list)
    succs: list[set[int]] = field(default_factory=list)
    shapes: list[fx.Node] = field(default_factory=list)  # shape nodes, in no unit (copied per partition)

    @property
    def n(self) -> int:
        return len(self.units)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _sccs(n: int, succs: Sequence[set[int]]) -> list[int]:
    """Strongly connected component id per vertex (iterative Tarjan)."""
    index = [-1] * n
    low = [0] * n
    on = [False] * n
    comp = [-1] * n
    stack: list[int] = []
    counter = ncomp = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, iter(sorted(succs[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on[root] = True
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on[w] = True
                    work.append((w, iter(sorted(succs[w]))))
                    advanced = True
                    break
                if on[w]:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on[w] = False
                    comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
    return comp


def _topo_order(n: int, succs: Sequence[set[int]], key: Sequence[float]) -> list[int]:
    """Kahn's algorithm; ties broken by ``key`` (the graph's own node order) for determinism."""
    import heapq

    indeg = [0] * n
    for v in range(n):
        for w in succs[v]:
            indeg[w] += 1
    heap = [(key[v], v) for v in range(n) if indeg[v] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, v = heapq.heappop(heap)
        order.append(v)
        for w in succs[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                heapq.heappush(heap, (key[w], w))
    if len(order) != n:
        raise ValueError("unit graph has a cycle after merging strongly connected components")
    return order


def _readers(nodes: list[fx.Node], shapes: list[fx.Node]) -> dict[fx.Node, set[fx.Node]]:
    """Per unit node, the unit nodes that read its value: directly, or through a shape node computed from it."""
    in_units = set(nodes)
    readers = {n: {u for u in n.users if u in in_units} for n in nodes}
    sources = shape_sources(shapes)
    for s in shapes:
        for src in sources[s]:
            if src in readers:
                readers[src].update(u for u in s.users if u in in_units)
    return readers


def build_unit_graph(gm: fx.GraphModule, node_cost) -> UnitGraph:
    """Group compute nodes into units and weigh them; ``node_cost(node) -> seconds``."""
    shapes = shape_nodes(gm)
    copied = set(shapes)
    nodes = [n for n in gm.graph.nodes if n.op in _COMPUTE and n not in copied]
    pos = {n: i for i, n in enumerate(nodes)}
    readers = _readers(nodes, shapes)
    uf = _UnionFind(len(nodes))
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in pos:
                continue
            # Other non-tensor values (ints, tuples) never cross: keep them with their reader.
            if len(output_specs(a)) != 1 or isinstance(a.meta.get("val"), (tuple, list)):
                uf.union(pos[a], pos[n])
    groups: dict[int, list[int]] = {}
    for i in range(len(nodes)):
        groups.setdefault(uf.find(i), []).append(i)
    roots = sorted(groups)
    unit_of = [0] * len(nodes)
    for u, r in enumerate(roots):
        for i in groups[r]:
            unit_of[i] = u
    # Contracting edges can close loops (a -> outside -> b with a, b joined): merge SCCs.
    m = len(roots)
    succs: list[set[int]] = [set() for _ in range(m)]
    for n in nodes:
        for user in readers[n]:
            if unit_of[pos[user]] != unit_of[pos[n]]:
                succs[unit_of[pos[n]]].add(unit_of[pos[user]])
    comp = _sccs(m, succs)
    ncomp = max(comp) + 1 if comp else 0
    members: list[list[int]] = [[] for _ in range(ncomp)]
    for i in range(len(nodes)):
        members[comp[unit_of[i]]].append(i)
    csuccs: list[set[int]] = [set() for _ in range(ncomp)]
    for u in range(m):
        for w in succs[u]:
            if comp[u] != comp[w]:
                csuccs[comp[u]].add(comp[w])
    order = _topo_order(ncomp, csuccs, [min(ms) for ms in members])
    rank = {c: r for r, c in enumerate(order)}
    units = [[nodes[i] for i in sorted(members[c])] for c in order]
    final_of = {nodes[i]: rank[comp[unit_of[i]]] for i in range(len(nodes))}
    cost = [sum(node_cost(x) for x in us) for us in units]
    params = [sum(annotation(x).param_bytes for x in us) for us in units]
    values = []
    preds: list[set[int]] = [set() for _ in units]
    succ2: list[set[int]] = [set() for _ in units]
    for n in nodes:
        src = final_of[n]
        dsts = sorted({final_of[u] for u in readers[n] if final_of[u] != src})
        if not dsts:
            continue
        nbytes = sum(s.nbytes for s in output_specs(n))
        values.append((src, nbytes, tuple(dsts)))
        for d in dsts:
            succ2[src].add(d)
            preds[d].add(src)
    return UnitGraph(units, cost, params, values, preds, succ2, shapes)


def louvain_order(ug: UnitGraph, resolution: float, seed: int) -> tuple[list[int], int, int]:
    """Units laid out community by community in dependency order.

    Returns (sequence of unit ids, Louvain communities, communities after merging loops).
    """
    import community as community_louvain  # python-louvain
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from((u, {"cost": ug.cost[u]}) for u in range(ug.n))
    for src, nbytes, dsts in ug.values:
        for d in dsts:
            # +1: zero-byte edges still say "these belong together"
            w = g.get_edge_data(src, d, {"weight": 0})["weight"] + nbytes + 1
            g.add_edge(src, d, weight=w)
    found = community_louvain.best_partition(g, weight="weight", resolution=resolution, random_state=seed)
    labels = sorted(set(found.values()))
    com = [labels.index(found[u]) for u in range(ug.n)]
    nlouvain = len(labels)
    csuccs: list[set[int]] = [set() for _ in labels]
    for u in range(ug.n):
        for w in ug.succs[u]:
            if com[u] != com[w]:
                csuccs[com[u]].add(com[w])
    scc = _sccs(nlouvain, csuccs)
    merged = [scc[c] for c in com]
    nmerged = max(merged) + 1 if merged else 0
    msuccs: list[set[int]] = [set() for _ in range(nmerged)]
    first = [ug.n] * nmerged
    for u in range(ug.n):
        first[merged[u]] = min(first[merged[u]], u)
        for w in ug.succs[u]:
            if merged[u] != merged[w]:
                msuccs[merged[u]].add(merged[w])
    corder = _topo_order(nmerged, msuccs, first)
    buckets: list[list[int]] = [[] for _ in range(nmerged)]
    for u in range(ug.n):  # units are already topologically numbered
        buckets[merged[u]].append(u)
    return [u for c in corder for u in buckets[c]], nlouvain, nmerged


def _crossing(ug: UnitGraph, seq: Sequence[int]) -> list[int]:
    """crossing[i]: bytes live across a cut before seq[i] (i = 1..n-1)."""
    at = [0] * ug.n
    for i, u in enumerate(seq):
        at[u] = i
    diff = [0] * (ug.n + 1)
    for src, nbytes, dsts in ug.values:
        p, q = at[src], max(at[d] for d in dsts)
        if q > p:
            diff[p + 1] += nbytes
            diff[q + 1] -= nbytes
    out, run = [0] * ug.n, 0
    for i in range(ug.n):
        run += diff[i]
        out[i] = run
    return out


def min_max_cap(costs: Sequence[float], k: int, fill: float = 0.0) -> float:
    """Smallest max effective segment cost of a contiguous split into at most k segments (binary search).

    A segment's effective cost is its own plus ``fill`` times everything before it.
    Greedy segments are optimal for a given cap: starting a segment later only
    lowers its effective cost.
    """
    lo, hi = max(costs), sum(costs)
    for _ in range(50):
        mid = (lo + hi) / 2
        segs, run, before = 1, 0.0, 0.0
        for c in costs:
            if run + c + fill * before > mid:
                segs, before, run = segs + 1, before + run, c
            else:
                run += c
        if segs <= k:
            hi = mid
        else:
            lo = mid
    return hi


def balanced_stage_cost(total: float, k: int, fill: float) -> float:
    """The effective cost every one of k segments would have if the work divided perfectly.

    Segment j then costs ``T - fill * prefix_j``; summing them to ``total`` gives
    ``T = total * fill / (1 - (1 - fill) ** k)`` (``total / k`` when ``fill = 0``).
    """
    if fill <= 0.0:
        return total / k
    return total * fill / (1.0 - (1.0 - fill) ** k)


def effective_costs(costs: Sequence[float], fill: float) -> list[float]:
    """Per part (in pipeline order): own cost plus ``fill`` times the parts before it."""
    out, before = [], 0.0
    for c in costs:
        out.append(c + fill * before)
        before += c
    return out


def _dp(costs: Sequence[float], cross: Sequence[int], k: int, cap: float,
        fill: float = 0.0) -> tuple[float, list[int]] | None:
    """Cut ``costs`` into exactly k segments of effective cost <= cap, minimising the sum of cross[start].

    Segment [a, i) costs ``prefix[i] - (1 - fill) * prefix[a]``, which falls as ``a``
    grows, so the feasible starts for each end form a window that only slides right.
    """
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    eps = 1e-12 * max(prefix[-1], 1e-30)
    prev = [0.0 if prefix[i] <= cap + eps else inf for i in range(n + 1)]
    prev[0] = inf
    back: list[list[int]] = []
    keep, limit = 1.0 - fill, cap + eps
    for j in range(2, k + 1):
        val = [p + c for p, c in zip(prev, cross)]  # a segment starting at a: best before it + the cut at a
        cur = [inf] * (n + 1)
        arg = [-1] * (n + 1)
        window: deque[int] = deque()  # candidate starts a, increasing val[a]
        lo = 0
        for i in range(j, n + 1):
            a = i - 1  # the start this end admits (starts before j - 1 leave too few units)
            if prev[a] != inf:
                v = val[a]
                while window and val[window[-1]] >= v:
                    window.pop()
                window.append(a)
            while prefix[i] - keep * prefix[lo] > limit:
                lo += 1
            while window and window[0] < lo:
                window.popleft()
            if window:
                a = window[0]
                cur[i] = val[a]
                arg[i] = a
        back.append(arg)
        prev = cur
    if prev[n] == inf:
        return None
    cuts, i = [], n
    for arg in reversed(back):
        i = arg[i]
        cuts.append(i)
    return prev[n], sorted(cuts)


def cut_sequence(ug: UnitGraph, seq: Sequence[int], k: int, balance: float, fill: float = 0.0) -> list[int]:
    """Exactly k segments of ``seq`` -> partition index per unit."""
    costs = [max(ug.cost[u], 0.0) for u in seq]
    cross = _crossing(ug, seq)
    mean = balanced_stage_cost(sum(costs), k, fill)
    floor = min_max_cap(costs, k, fill)
    cap = max(balance * mean, floor * (1 + 1e-9))
    best = _dp(costs, cross, k, cap, fill)
    if best is None:  # numerical edge: the floor itself is always feasible
        cap = floor * 1.001
        best = _dp(costs, cross, k, cap, fill)
        assert best is not None
    # Among splits with the same cut, take the most balanced (bisect the cap).
    lo, hi = floor * (1 + 1e-9), cap
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = _dp(costs, cross, k, mid, fill)
        if trial is not None and trial[0] <= best[0]:
            best, hi = trial, mid
        else:
            lo = mid
    part = [0] * ug.n
    bounds = [0] + best[1] + [len(seq)]
    for p in range(k):
        for i in range(bounds[p], bounds[p + 1]):
            part[seq[i]] = p
    return part


def part_costs(ug: UnitGraph, part: Sequence[int], k: int) -> list[float]:
    out = [0.0] * k
    for u, p in enumerate(part):
        out[p] += ug.cost[u]
    return out


def cut_bytes(ug: UnitGraph, part: Sequence[int]) -> int:
    """Bytes sent between partitions: each value once per partition that reads it."""
    return sum(nbytes * len({part[d] for d in dsts} - {part[src]}) for src, nbytes, dsts in ug.values)


def forwarded_bytes(ug: UnitGraph, part: Sequence[int]) -> int:
    """Bytes over a pipeline chain: a value skipping stages is forwarded through each."""
    return sum(nbytes * max(0, max(part[d] for d in dsts) - part[src]) for src, nbytes, dsts in ug.values)


def is_monotone(ug: UnitGraph, part: Sequence[int]) -> bool:
    return all(part[d] >= part[src] for src, _, dsts in ug.values for d in dsts)


def refine_moves(ug: UnitGraph, part: list[int], k: int, cap: float, contiguous: bool, sweeps: int = 4,
                 fill: float = 0.0) -> list[int]:
    """Greedy single-unit moves to a neighbouring partition that lower the cut (effective costs stay <= cap)."""
    part = list(part)
    costs = part_costs(ug, part, k)
    count = [0] * k
    for p in part:
        count[p] += 1
    produced: list[list[int]] = [[] for _ in range(ug.n)]  # values a unit produces
    read: list[list[int]] = [[] for _ in range(ug.n)]  # values a unit reads
    for vi, (src, _, dsts) in enumerate(ug.values):
        produced[src].append(vi)
        for d in dsts:
            read[d].append(vi)

    def value_cost(vi: int) -> int:
        src, nbytes, dsts = ug.values[vi]
        if contiguous:
            return nbytes * max(0, max(part[d] for d in dsts) - part[src])
        return nbytes * len({part[d] for d in dsts} - {part[src]})

    for _ in range(sweeps):
        improved = False
        for u in range(ug.n):
            p = part[u]
            if count[p] == 1:
                continue
            lo = max((part[w] for w in ug.preds[u]), default=0)
            hi = min((part[w] for w in ug.succs[u]), default=k - 1)
            touched = produced[u] + read[u]
            before = sum(value_cost(v) for v in touched)
            best, best_gain = p, 0
            for q in (p - 1, p + 1):
                if q < lo or q > hi or q < 0 or q >= k:
                    continue
                costs[p] -= ug.cost[u]
                costs[q] += ug.cost[u]
                fits = max(effective_costs(costs, fill)) <= cap if fill else costs[q] <= cap
                costs[p] += ug.cost[u]
                costs[q] -= ug.cost[u]
                if not fits:
                    continue
                part[u] = q
                gain = before - sum(value_cost(v) for v in touched)
                part[u] = p
                if gain > best_gain:
                    best, best_gain = q, gain
            if best != p:
                part[u] = best
                costs[p] -= ug.cost[u]
                costs[best] += ug.cost[u]
                count[p] -= 1
                count[best] += 1
                improved = True
        if not improved:
            break
    return part
