"""Branching models: steady-state latency, guard overhead, time to first result after a flip.

Two models, inputs alternating between paths:
  * two-way: ``if h.sum() > 0: a(h) else: b(h)``
  * top-2 of 4 experts: ``for i, s in enumerate(scores): if i in top_k: out += s * experts[i](x)``

Measured side by side in one run (threads pinned to 1, variants interleaved,
medians of per-call times):
  * steady-state per-call latency: ours / eager and ours / torch.compile;
  * guard overhead per call per branch point on the hit path: ours minus a
    straight-line driver that calls the same compiled segments with no plan
    lookup, divided by the branch points the path passes;
  * time to the first result after a branch flips to a path not seen yet:
    ours (trace + passes + run) vs torch.compile (its recompile of the new path).

    .venv/bin/python benchmarks/branches.py            # both models, torch.compile included
    .venv/bin/python benchmarks/branches.py --no-torch-compile --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Sequence

import common  # noqa: F401  (first: the repository root on sys.path, benchmarks/onnx.py off it)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import autoglm  # noqa: E402
from autoglm.program.program import Program  # noqa: E402
from examples.branching import TopKExperts  # noqa: E402

torch.set_num_threads(1)


class TwoWay(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc, self.a, self.b = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > 0:
            return self.a(torch.relu(h))
        return self.b(torch.tanh(h))


def _two_way_inputs(model: nn.Module, d: int, batch: int) -> list[torch.Tensor]:
    """One input per path, found by trying random inputs in eager."""
    g = torch.Generator().manual_seed(0)
    found: dict[bool, torch.Tensor] = {}
    while len(found) < 2:
        x = torch.randn(batch, d, generator=g)
        with torch.no_grad():
            found.setdefault(bool(model.fc(x).sum() > 0), x)
    return [found[True], found[False]]


def _expert_inputs(model: TopKExperts, d: int, batch: int, n_paths: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    found: dict[frozenset, torch.Tensor] = {}
    for _ in range(2000):
        x = torch.randn(batch, d, generator=g) + torch.randn(1, d, generator=g)
        with torch.no_grad():
            top = frozenset(torch.topk(torch.softmax(model.gate(x).mean(0), -1), model.top).indices.tolist())
        found.setdefault(top, x)
        if len(found) == n_paths:
            break
    return list(found.values())


def _block(calls: Sequence[tuple[Callable[[torch.Tensor], Any], torch.Tensor]]) -> float:
    """Seconds per call over one pass through ``calls`` (callable, input) pairs."""
    t0 = time.perf_counter()
    for fn, x in calls:
        fn(x)
    return (time.perf_counter() - t0) / len(calls)


def _straight_line(cm: Program, x: torch.Tensor) -> tuple[Callable[[torch.Tensor], Any], int]:
    """The same compiled segments of ``x``'s path, called back to back with no plan lookup."""
    cm(x)
    flat = cm.signature.flatten_inputs((x,), {})
    chain, node, env = [], cm.cache.root, {}
    while True:
        chain.append(node)
        out = node.run(*flat, *[env[n] for n in node.imports])
        if node.branch is None:
            break
        env.update(zip(node.exports, out[1:]))
        node = node.children[node.decide(out[0])]
    # Where each import comes from: (segment index, output index), resolved once.
    where: dict[str, tuple[int, int]] = {}
    plan = []
    for i, seg in enumerate(chain):
        plan.append((seg.run, [where[n] for n in seg.imports]))
        for j, name in enumerate(seg.exports):
            where[name] = (i, j + 1)

    last = len(plan) - 1

    def run(x_: torch.Tensor) -> Any:
        outs: list[Any] = []
        for k, (fn, srcs) in enumerate(plan):
            out = fn(x_, *[outs[i][j] for i, j in srcs])
            outs.append(out)
            if k < last:
                bool(out[0])  # reading the predicate is work eager does too (its `if`)
        return outs[-1]

    return run, len(chain) - 1


def _first_call_s(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def bench_model(name: str, model: nn.Module, inputs: list[torch.Tensor], rounds: int, reps: int,
                use_torch_compile: bool) -> dict[str, Any]:
    model.eval()
    row: dict[str, Any] = {"model": name, "paths_in_inputs": len(inputs)}
    with torch.no_grad():
        # Time to first result after a flip: compile on path 0, warm it, then take path 1.
        cm = autoglm.compile(model, (inputs[0],))
        assert isinstance(cm, Program)
        for _ in range(3):
            cm(inputs[0])
        row["ours_flip_s"] = _first_call_s(cm, inputs[1])
        for x in inputs:  # every path compiled; the rest is steady state
            torch.testing.assert_close(cm(x), model(x))
        tc = None
        if use_torch_compile:
            torch._dynamo.reset()
            tc = torch.compile(model)
            row["tc_first_call_s"] = _first_call_s(tc, inputs[0])
            for _ in range(3):
                tc(inputs[0])
            row["tc_flip_s"] = _first_call_s(tc, inputs[1])
            for x in inputs:
                torch.testing.assert_close(tc(x), model(x), rtol=1e-4, atol=1e-4)
        lines = [_straight_line(cm, x) for x in inputs]
        alternating = inputs * 4
        variants: dict[str, list] = {
            "eager": [(model, x) for x in alternating],
            "ours": [(cm, x) for x in alternating],
            # the same segments per input, chosen by index: no guard, no plan lookup
            "straight": [(lines[i % len(inputs)][0], x) for i, x in enumerate(alternating)],
        }
        if tc is not None:
            variants["torch_compile"] = [(tc, x) for x in alternating]
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds * reps):  # short blocks, interleaved: machine load hits all variants alike
            for k, calls in variants.items():
                times[k].append(_block(calls))
        branch_points = statistics.mean(n for _, n in lines)
    eager, ours, straight = (statistics.median(times[k]) for k in ("eager", "ours", "straight"))
    row.update({"eager_us": eager * 1e6, "ours_us": ours * 1e6, "ours_over_eager": ours / eager,
                "branch_points_per_call": branch_points,
                "guard_overhead_us_per_branch": (ours - straight) * 1e6 / max(branch_points, 1),
                "replans": cm.stats.replans, "paths": cm.stats.paths})
    if tc is not None:
        tcs = statistics.median(times["torch_compile"])
        row.update({"torch_compile_us": tcs * 1e6, "ours_over_torch_compile": ours / tcs,
                    "flip_ours_over_torch_compile": row["ours_flip_s"] / row["tc_flip_s"]})
        try:
            from torch._dynamo.utils import counters

            row["tc_graph_breaks"] = sum(counters["graph_break"].values())
            row["tc_unique_graphs"] = counters["stats"]["unique_graphs"]
        except Exception:  # counters are internal; the latency figures stand without them
            pass
    return row


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile (slow on 2 cores)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    two = TwoWay(args.dim).eval()
    rows.append(bench_model("two-way", two, _two_way_inputs(two, args.dim, args.batch), args.rounds, args.reps,
                            not args.no_torch_compile))
    moe = TopKExperts(args.dim, mlp=True).eval()
    rows.append(bench_model("top-2-of-4", moe, _expert_inputs(moe, args.dim, args.batch, 6), args.rounds,
                            args.reps, not args.no_torch_compile))
    print(f"threads=1 dim={args.dim} batch={args.batch} rounds={args.rounds} reps={args.reps}")
    for r in rows:
        print(f"\n[{r['model']}] {r['paths_in_inputs']} paths alternating, {r['branch_points_per_call']:.1f} branch "
              f"points per call, {r['replans']} re-plans for {r['paths']} paths")
        print(f"  steady state: eager {r['eager_us']:.1f} us, ours {r['ours_us']:.1f} us "
              f"-> ours/eager {r['ours_over_eager']:.3f}")
        if "torch_compile_us" in r:
            print(f"  torch.compile {r['torch_compile_us']:.1f} us -> ours/torch.compile "
                  f"{r['ours_over_torch_compile']:.3f} (graph breaks {r.get('tc_graph_breaks', '?')}, "
                  f"unique graphs {r.get('tc_unique_graphs', '?')})")
        print(f"  guard overhead: {r['guard_overhead_us_per_branch']:.2f} us per branch point per call")
        flip = f"  first result after a flip: ours {r['ours_flip_s'] * 1e3:.1f} ms"
        if "tc_flip_s" in r:
            flip += (f", torch.compile {r['tc_flip_s'] * 1e3:.1f} ms (its first call "
                     f"{r['tc_first_call_s'] * 1e3:.0f} ms) -> ours/torch.compile "
                     f"{r['flip_ours_over_torch_compile']:.3f}")
        print(flip)


if __name__ == "__main__":
    main()
