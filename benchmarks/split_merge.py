"""Acceptance figures for the ``split_merge`` pass and the cost model (issue 4).

    .venv/bin/python benchmarks/split_merge.py            # all sections, ~2-4 minutes on 2 cores
    .venv/bin/python benchmarks/split_merge.py --only loads|merge|rank

1. loads: BERT-base-sized encoder and the wide MLP (hidden 8192), 2 and 4
   devices: the largest node's load (cost / per-device budget) before and after
   the pass, and the imbalance (max part cost / mean) of an even contiguous
   split of the node order by cost, before and after. Analytic costs; the budget
   is the one the pass used (total cost before the pass / devices).
2. merge: node count before/after on the small transformer (both frontends) and
   the compiled-vs-eager latency ratio with and without the pass, timed
   interleaved (blocks of 5 calls; min and median over blocks: on a shared
   machine the minimum is the stable figure).
3. rank: Spearman rank correlation between analytic and measured cost over the
   BERT-base-sized encoder's compute nodes.

Torch runs on one thread so the 2-core machine's neighbours disturb less;
latencies are reported as ratios measured side by side.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import autoglm  # noqa: E402
from autoglm.capture import capture  # noqa: E402
from autoglm.cost.model import CostModel  # noqa: E402
from autoglm.ir.annotate import annotate  # noqa: E402
from autoglm.ir.meta import iter_compute_nodes, output_specs  # noqa: E402
from autoglm.ir.pass_base import PassContext  # noqa: E402
from autoglm.ir.pass_manager import PassManager  # noqa: E402
from autoglm.passes.split_merge.split_merge import SplitMerge  # noqa: E402
from examples.models import bert_base_encoder, small_transformer, wide_mlp  # noqa: E402


def even_contiguous_split(costs: Sequence[float], parts: int) -> list[float]:
    """Cut the node order into ``parts`` contiguous pieces at the prefix sums nearest
    to equal shares of the total; returns each piece's cost (a naive balancer's view)."""
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    total, cuts = prefix[-1], [0]
    for j in range(1, parts):
        target = j * total / parts
        best = min(range(cuts[-1], len(prefix)), key=lambda i: abs(prefix[i] - target))
        cuts.append(best)
    cuts.append(len(costs))
    return [prefix[b] - prefix[a] for a, b in zip(cuts[:-1], cuts[1:])]


def imbalance(costs: Sequence[float], parts: int) -> float:
    pieces = even_contiguous_split(costs, parts)
    return max(pieces) / (sum(pieces) / parts)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their average rank)."""
    def ranks(xs: Sequence[float]) -> list[float]:
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        out = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var


def _captured(model: torch.nn.Module, inputs: tuple, devices: int, frontend: str = "auto"):
    cap = capture(model, inputs, {}, frontend=frontend)
    gm = cap.graph_module
    with torch.no_grad():
        annotate(gm, cap.flat_inputs)
    cost = CostModel("analytic")
    cost.annotate_costs(gm)
    return gm, PassContext(cap.flat_inputs, devices=["cpu"] * devices, cost=cost)


def loads_section() -> None:
    print("== loads: largest node load and even-contiguous-split imbalance (analytic cost)")
    print(f"{'model':10s} {'dev':>3s} {'nodes':>11s} {'max load':>15s} {'imbalance':>15s}  split")
    for name, factory in [("bert-base", bert_base_encoder), ("wide-mlp", wide_mlp)]:
        model, inputs = factory()
        for devices in (2, 4):
            gm, ctx = _captured(model, inputs, devices)
            cost = ctx.cost
            before = [cost.node_cost(n) for n in iter_compute_nodes(gm.graph)]
            nodes_before = len(gm.graph.nodes)
            gm = PassManager([SplitMerge()]).run(gm, ctx)
            cost.annotate_costs(gm)
            after = [cost.node_cost(n) for n in iter_compute_nodes(gm.graph)]
            notes = ctx.notes["split_merge"]
            budget = notes["budget_s"]
            splits = ", ".join(f"{s['node']}x{s['shards']}" for s in notes["splits"]) or "none"
            print(f"{name:10s} {devices:3d} {nodes_before:5d}->{len(gm.graph.nodes):<5d} "
                  f"{max(before) / budget:6.2f}->{max(after) / budget:<6.2f}  "
                  f"{imbalance(before, devices):6.2f}->{imbalance(after, devices):<6.2f}  {splits}")
        del model


def _timed(fns: dict[str, Callable[[], object]], blocks: int, calls: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f()  # warm-up
        for _ in range(blocks):
            for k, f in fns.items():  # interleaved: load on the machine hits every variant alike
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                samples[k].append((time.perf_counter() - t0) / calls)
    return samples


def merge_section(blocks: int) -> None:
    print("== merge: small transformer (batch 2, seq 16), devices=['cpu','cpu']")
    model, inputs = small_transformer()
    for frontend in ("symbolic", "export"):
        plain = autoglm.compile(model, inputs, passes="none", devices=["cpu", "cpu"], frontend=frontend)
        merged = autoglm.compile(model, inputs, passes="split_merge", devices=["cpu", "cpu"], frontend=frontend)
        with torch.no_grad():
            torch.testing.assert_close(merged(*inputs), model(*inputs))
        fused = sum(1 for n in merged.graph_module.graph.nodes if n.op == "call_module"
                    and str(n.target).startswith("fused_"))
        samples = _timed({"eager": lambda: model(*inputs), "compiled": lambda: plain(*inputs),
                          "compiled+merge": lambda: merged(*inputs)}, blocks, calls=5)
        print(f"[{frontend}] nodes {len(plain.graph_module.graph.nodes)} -> "
              f"{len(merged.graph_module.graph.nodes)} ({fused} fused modules)")
        e, c, m = samples["eager"], samples["compiled"], samples["compiled+merge"]
        # Minima approximate the unloaded machine; medians show the typical shared-machine run.
        for stat, fn in (("min", min), ("median", statistics.median)):
            print(f"  {stat:6s} eager {fn(e) * 1e6:7.1f} us | compiled/eager {fn(c) / fn(e):.3f} | "
                  f"compiled+merge/eager {fn(m) / fn(e):.3f} | merge/no-merge {fn(m) / fn(c):.3f}")


def rank_section(layers: int) -> None:
    print(f"== rank: analytic vs measured cost, BERT-base-sized encoder ({layers} layers, seq 128)")
    model, inputs = bert_base_encoder(layers=layers)
    gm, ctx = _captured(model, inputs, 1)
    analytic = CostModel("analytic")
    measured = CostModel("measured", repeats=5)
    t0 = time.perf_counter()
    measured.measure(gm, ctx.example_inputs)
    wall = time.perf_counter() - t0
    nodes = list(iter_compute_nodes(gm.graph))
    a = [analytic.analytic(n) for n in nodes]
    m = [measured.node_cost(n) for n in nodes]
    tensor_nodes = [i for i, n in enumerate(nodes) if output_specs(n)]
    print(f"  {len(nodes)} compute nodes timed in {wall:.1f} s")
    print(f"  spearman rho, all compute nodes:     {spearman(a, m):.3f}")
    print(f"  spearman rho, tensor-producing only: "
          f"{spearman([a[i] for i in tensor_nodes], [m[i] for i in tensor_nodes]):.3f} ({len(tensor_nodes)} nodes)")
    # Timings are cached by (op, shapes): the 12 layers share them. Rank the distinct ones too.
    distinct = sorted(set(zip(a, m)))
    print(f"  spearman rho, distinct (op, shape) timings: "
          f"{spearman([x for x, _ in distinct], [y for _, y in distinct]):.3f} ({len(distinct)} distinct)")
    print(f"  total: analytic {sum(a) * 1e3:.1f} ms, measured (sum of node medians) {sum(m) * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["loads", "merge", "rank"])
    parser.add_argument("--blocks", type=int, default=300, help="timing blocks per variant (merge section)")
    parser.add_argument("--layers", type=int, default=12, help="encoder layers for the rank section")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.only in (None, "loads"):
        loads_section()
    if args.only in (None, "merge"):
        merge_section(args.blocks)
    if args.only in (None, "rank"):
        rank_section(args.layers)


if __name__ == "__main__":
    main()
