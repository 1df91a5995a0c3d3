"""Pipeline throughput: autoglm's louvain partition vs torch.distributed.pipelining's own split.

    python benchmarks/pipeline_vs_torch.py                       # gpt2-12, inception, googlenet; GPipe, 3 rounds
    python benchmarks/pipeline_vs_torch.py --schedule 1f1b --rounds 5 --graphs gpt2

Both sides run the same model (same seed, same weights), the same full batch,
2 stage processes (torchrun, gloo, CPU, 1 intra-op thread each,
``OMP_NUM_THREADS=1``), the same schedule (``ScheduleGPipe`` / ``Schedule1F1B``,
forward only via ``schedule.eval``), microbatches, warm-up and measured steps.
Steps/s = measured steps / summed wall time of ``schedule.eval`` on the last
stage, as ``autoglm.runtime.pipeline.worker`` reports it. Runs are interleaved
round by round (ours, torch, ours, torch, ...) so load drifts hit both alike.

* **autoglm**: ``autoglm.compile(model, microbatch_inputs,
  passes="partition(k=2,contiguous=True)")`` (louvain), saved, then
  ``autoglm.runtime.pipeline.driver.run_pipeline`` (torchrun +
  ``autoglm.runtime.pipeline.worker``).
* **torch**: ``torch.distributed.pipelining.pipeline(model, microbatch_args,
  split_policy=split_into_equal_size(2))``, then ``pipe.build_stage(rank, cpu)``
  in a torchrun worker (this file, ``--worker``). torch 2.13 no longer ships
  ``split_into_equal_size`` (it lived in PiPPy's ``ModelSplit.py`` and torch's
  former ``pipelining/_split``); ``split_into_equal_size`` below re-implements
  that policy: walk the exported graph in order, count each node's new parameter
  and buffer elements, and start a new stage before the node that would push the
  current one past ``total / nstages``.

Fixed batch: ``torch.export`` (torch's frontend) captures a static batch, and so
may ours. Both sides therefore compile/trace **at microbatch size** (the full
batch's first ``batch / microbatches`` rows) and are fed the full batch, which the
schedules split into microbatches of exactly that size. Outputs of both are
checked with ``assert_close`` against eager run microbatch by microbatch
(``common.eager_by_microbatch``: conv kernels are batch-size dependent). When torch's
frontend cannot trace or run a model, the row says so (with the error) instead
of a number.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from common import ROOT, eager_by_microbatch  # first: keeps benchmarks/onnx.py from shadowing the onnx package

import torch  # noqa: E402
import torch.fx as fx  # noqa: E402

torch.set_num_threads(1)

# name -> (factory in examples.graphs, factory kwargs besides batch, kind)
GRAPHS: dict[str, tuple[str, dict[str, Any], str]] = {
    "gpt2": ("gpt2_decoder", {"seq": 64}, "chain"),
    "inception": ("inception_net", {"size": 16}, "branchy"),
    "googlenet": ("googlenet", {"size": 112}, "branchy"),
    "resnet": ("resnet_cnn", {"size": 32}, "chain"),
    "moe": ("moe_block", {"seq": 64}, "branchy"),
}
GOAL = {"chain": 1.0, "branchy": 1.1}


def build(graph: str, batch: int) -> tuple[torch.nn.Module, tuple]:
    import examples.graphs as graphs

    factory, kwargs, _ = GRAPHS[graph]
    return getattr(graphs, factory)(batch=batch, **kwargs)


# ---------------------------------------------------------------- torch's equal-size split policy
def split_into_equal_size(nstages: int) -> Callable[[fx.GraphModule], fx.GraphModule]:
    """torch/PiPPy's equal-size split policy (parameter + buffer elements), for ``pipeline(split_policy=)``."""
    from torch.distributed.pipelining._IR import aten_pipe_split_alias

    def policy(gm: fx.GraphModule) -> fx.GraphModule:
        state = gm.state_dict()
        total = sum(p.numel() for p in gm.parameters()) + sum(b.numel() for b in gm.buffers())
        threshold = total // nstages
        # parameters each node reads: through get_attr, or a whole called submodule's
        uses: dict[fx.Node, dict[str, int]] = {}
        for n in gm.graph.nodes:
            if n.op == "get_attr" and n.target in state:
                for user in n.users:
                    uses.setdefault(user, {}).setdefault(str(n.target), state[n.target].numel())
            elif n.op == "call_module":
                params = {k: p.numel() for k, p in gm.get_submodule(str(n.target)).named_parameters()}
                if params:
                    uses[n] = params
        cuts: list[fx.Node] = []
        size, seen = 0, set()
        for n in gm.graph.nodes:
            if n not in uses:
                continue
            if n.op == "call_module":
                new, repeated = dict(uses[n]), {}
            else:
                new = {k: v for k, v in uses[n].items() if k not in seen}
                repeated = {k: v for k, v in uses[n].items() if k in seen}
            grow = sum(new.values())
            if size + grow <= threshold:
                size += grow
                seen.update(new)
            elif size == 0:  # one node heavier than a stage: it is a stage of its own
                cuts.append(n.next)
            else:
                cuts.append(n)
                size = grow + sum(repeated.values())
                seen = set(new) | set(repeated)
        for n in cuts[: nstages - 1]:
            with gm.graph.inserting_before(n):
                gm.graph.call_function(aten_pipe_split_alias, (), {})
        gm.recompile()
        return gm

    return policy


def _use_codegen(module: torch.nn.Module) -> None:
    """Run torch's stage submodules through their generated code instead of ``fx.Interpreter``.

    torch's frontend outlines each stage's module hierarchy as ``InterpreterModule``s,
    which by default interpret their graph node by node in Python. The generated
    code is what ``torch.export.unflatten``'s private ``_disable_interpreter()``
    switches to; we set the same per-module flag (private in torch 2.13).
    """
    from torch.export.unflatten import InterpreterModule

    for sub in module.modules():
        if isinstance(sub, InterpreterModule):
            sub._run_with_interpreter = False


def torch_worker(args: argparse.Namespace) -> int:
    """One torchrun rank of torch's own pipeline (``--worker``)."""
    from datetime import timedelta

    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, pipeline

    torch.set_num_threads(args.threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    result: dict[str, Any] = {"rank": rank}
    try:
        full = load_file(args.inputs)
        full_inputs = [full[f"input_{i}"] for i in range(len(full))]
        mb = full_inputs[0].shape[0] // args.microbatches
        model, _ = build(args.graph, mb)
        pipe = pipeline(model, tuple(t[:mb] for t in full_inputs), split_policy=split_into_equal_size(world))
        if pipe.num_stages != world:
            raise RuntimeError(f"torch's split made {pipe.num_stages} stages, expected {world}")
        stage = pipe.build_stage(rank, torch.device("cpu"))
        if args.codegen:
            _use_codegen(stage.submod)
        forward_s = [0.0]

        def before(mod: Any, inp: Any) -> None:
            forward_s.append(-time.perf_counter())

        def after(mod: Any, inp: Any, out: Any) -> None:
            forward_s[-1] += time.perf_counter()

        stage.submod.register_forward_pre_hook(before)
        stage.submod.register_forward_hook(after)
        kind = ScheduleGPipe if args.schedule == "gpipe" else Schedule1F1B
        schedule = kind(stage, n_microbatches=args.microbatches)
        step_s, out = [], None
        with torch.no_grad():
            for step in range(args.warmup + args.steps):
                if step == args.warmup:
                    forward_s[:] = [0.0]
                t0 = time.perf_counter()
                out = schedule.eval(*full_inputs) if rank == 0 else schedule.eval()
                if step >= args.warmup:
                    step_s.append(time.perf_counter() - t0)
        result.update(step_s=step_s, stage_forward_s=sum(forward_s) / args.steps,
                      params=sum(p.numel() for p in stage.submod.parameters()))
        if rank == world - 1:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            save_file({f"output_{i}": t.contiguous() for i, t in enumerate(outs)}, args.out)
    except Exception as exc:  # reported by the driver, not hidden
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    finally:
        Path(f"{args.result}.rank{rank}").write_text(json.dumps(result))
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0 if "error" not in result else 1


def run_torch(graph: str, inputs: list[torch.Tensor], work: Path, schedule: str, microbatches: int, steps: int,
              warmup: int, codegen: bool = False) -> dict[str, Any]:
    """Launch torch's pipeline under torchrun; returns steps/s, per-stage forward time and outputs (or error)."""
    from safetensors.torch import load_file, save_file

    save_file({f"input_{i}": t.contiguous() for i, t in enumerate(inputs)}, str(work / "inputs.safetensors"))
    result, out = work / "torch_result", work / "torch_out.safetensors"
    for p in [*work.glob("torch_result.rank*"), out]:
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=0",
           str(Path(__file__).resolve()), "--worker", "--graph", graph, "--inputs", str(work / "inputs.safetensors"),
           "--out", str(out), "--result", str(result), "--schedule", schedule, "--microbatches", str(microbatches),
           "--steps", str(steps), "--warmup", str(warmup)] + (["--codegen"] if codegen else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    ranks = []
    for r in range(2):
        try:
            ranks.append(json.loads(Path(f"{result}.rank{r}").read_text()))
        except (OSError, ValueError):
            ranks.append({"error": f"rank {r} wrote no result (torchrun exit {proc.returncode}): "
                                   f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"})
    errors = [f"rank {i}: {r['error']}" for i, r in enumerate(ranks) if "error" in r]
    if errors:
        # a rank that lost its peer reports "Connection closed by peer": list the cause first
        errors.sort(key=lambda e: "closed by peer" in e)
        return {"error": "; ".join(e[:160] for e in errors)}
    stored = load_file(str(out))
    return {"rate": len(ranks[1]["step_s"]) / sum(ranks[1]["step_s"]),
            "stage_ms": [r["stage_forward_s"] * 1e3 for r in ranks],
            "params": [r["params"] for r in ranks],
            "outputs": [stored[f"output_{i}"] for i in range(len(stored))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", default="gpt2,inception,googlenet", help=f"comma list of {', '.join(GRAPHS)}")
    ap.add_argument("--schedule", default="gpipe", choices=("gpipe", "1f1b"))
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--microbatch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partition", default="partition(k=2,contiguous=True,microbatches={m})",
                    help="autoglm's pass spec; {m} becomes --microbatches")
    ap.add_argument("--cost", default="measured", choices=("measured", "analytic"),
                    help="autoglm's cost model for the partition (measured: node timings at microbatch size)")
    ap.add_argument("--torch-variants", default="default,codegen",
                    help="torch baselines: default (stages run by fx.Interpreter, as torch ships them) and/or "
                         "codegen (the same stages through generated code: a stronger baseline)")
    # worker mode (started by torchrun; not for direct use)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--graph", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--codegen", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sys.exit(torch_worker(args))
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        ap.error(f"unknown graph(s) {unknown}; choose from {', '.join(GRAPHS)}")
    compare(graphs, args)


def compare(graphs: list[str], args: argparse.Namespace) -> None:
    import autoglm
    from autoglm.runtime.pipeline.driver import PipelineFault, run_pipeline

    work = Path(tempfile.mkdtemp(prefix="autoglm-vs-torch-"))
    batch = args.microbatch_size * args.microbatches
    print(f"2 stage processes (torchrun, gloo, CPU), {args.schedule}, {args.microbatches} microbatches of "
          f"{args.microbatch_size}, {args.warmup} warm-up + {args.steps} measured steps, 1 thread each, "
          f"{args.rounds} interleaved rounds")
    summary = []
    for graph in graphs:
        model, inputs = build(graph, batch)
        mb_inputs = tuple(t[: args.microbatch_size] for t in inputs)
        ref = eager_by_microbatch(model, inputs, args.microbatches)
        t0 = time.perf_counter()
        spec = args.partition.format(m=args.microbatches)
        cm = autoglm.compile(model, mb_inputs, passes=spec, devices=["cpu", "cpu"], cost=args.cost)
        compile_s = time.perf_counter() - t0
        art = work / f"{graph}-louvain"
        cm.save(art)
        plan = cm.plan
        print(f"\n{graph} ({GRAPHS[graph][2]}): {spec} compiled by {cm.frontend} at microbatch size, {args.cost} cost, "
              f"in {compile_s:.1f} s; "
              f"louvain stages: params {[p.param_bytes // 4 for p in plan.parts]}, "
              f"forwarded {plan.forwarded_bytes / 1e3:.0f} KB, imbalance {plan.imbalance:.2f}")
        variants = [v.strip() for v in args.torch_variants.split(",") if v.strip()]
        sides = ["autoglm"] + [f"torch-{v}" for v in variants]
        rates: dict[str, list[float]] = {side: [] for side in sides}
        torch_error: dict[str, str] = {}
        for rnd in range(args.rounds):
            try:
                out, stats = run_pipeline(art, list(inputs), nproc=2, schedule=args.schedule,
                                          microbatches=args.microbatches, steps=args.steps, warmup=args.warmup,
                                          return_stats=True, step_timeout_s=120)
                torch.testing.assert_close(out[0], ref)
                rates["autoglm"].append(len(stats.step_s) / sum(stats.step_s))
                ours = [round(s / args.steps * 1e3, 2) for s in stats.stage_forward_s]
                print(f"  round {rnd}  {'autoglm':15} {rates['autoglm'][-1]:7.2f} steps/s  stage forward ms/step {ours}")
            except PipelineFault as fault:
                print(f"  round {rnd}  autoglm FAILED: {fault}")
            for v in variants:
                side = f"torch-{v}"
                if side in torch_error:
                    continue
                res = run_torch(graph, list(inputs), work, args.schedule, args.microbatches, args.steps, args.warmup,
                                codegen=v == "codegen")
                if "error" in res:
                    torch_error[side] = res["error"]
                    print(f"  round {rnd}  {side:15} cannot run this model: {res['error']}")
                    continue
                torch.testing.assert_close(res["outputs"][0], ref)
                rates[side].append(res["rate"])
                print(f"  round {rnd}  {side:15} {res['rate']:7.2f} steps/s  stage forward ms/step "
                      f"{[round(s, 2) for s in res['stage_ms']]}  stage params {res['params']}")
        kind = GRAPHS[graph][2]
        for side in sides[1:]:
            if rates["autoglm"] and rates[side]:
                ratio = statistics.median(rates["autoglm"]) / statistics.median(rates[side])
                per_round = [a / t for a, t in zip(rates["autoglm"], rates[side])]
                verdict = "meets" if ratio >= GOAL[kind] else "misses"
                line = (f"{graph:10} {kind:8} vs {side:14} autoglm {statistics.median(rates['autoglm']):6.2f} / "
                        f"{statistics.median(rates[side]):6.2f} steps/s (medians) = {ratio:.2f}x  "
                        f"per round {[round(r, 2) for r in per_round]}  goal >= {GOAL[kind]} {verdict}")
            elif side in torch_error:
                line = f"{graph:10} {kind:8} vs {side:14} no ratio: torch's pipeline failed: {torch_error[side]}"
            else:
                line = f"{graph:10} {kind:8} vs {side:14} no ratio: autoglm's pipeline failed"
            summary.append(line)
    print("\nsummary (" + args.schedule + "):")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
