"""Partition quality and pipeline throughput: louvain vs metis vs even.

    python benchmarks/partition.py                  # quality table (about a minute)
    python benchmarks/partition.py --pipeline       # + 2-process pipeline throughput (a few minutes)
    python benchmarks/partition.py --compression    # + boundary compression bytes/error

Quality: for each benchmark graph and K in {2, 4, 8}, every method's cut bytes
(each value once per partition that reads it), imbalance (max/mean partition
cost), partitioning time, and validity (loop-free, exactly K non-empty parts,
outputs ``assert_close`` to eager through the local executor). Louvain runs at
the goal's balance: 1.10 on chains, 1.25 on branchy graphs. METIS's raw result
is marked ``(loop)`` when its parts depend on each other in a loop (it is then
repaired, and left out of the louvain-vs-metis comparison).

Pipeline (GPT-2, ResNet, Inception, GoogLeNet): the same graph compiled with
``partition(k=2, contiguous=True, microbatches=M)`` and measured costs by louvain
and by ``even`` (the equal-parameter split torch.distributed.pipelining's
``split_into_equal_size`` makes), run as 2 gloo stage processes with the same
schedule, microbatches and 1 thread each; steps/s ratio. Stage times are
predicted before the runs (``autoglm.cost.stage_time``: node costs timed in context
at microbatch size + a calibrated per-op/per-call correction) and printed
against each stage's forward time run alone here and inside the pipeline (wall
and CPU), with the error %, the analytic roofline beside them for reference.
torch's own pipelining frontend as the baseline: ``benchmarks/pipeline_vs_torch.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import eager_by_microbatch  # first: keeps benchmarks/onnx.py from shadowing the onnx package

import torch  # noqa: E402

torch.set_num_threads(1)

import autoglm  # noqa: E402
from autoglm.passes.partition.partition import Partition  # noqa: E402
from autoglm.runtime.local import LocalExecutor  # noqa: E402
from autoglm.ir.partitions import node_partitions, partition_order  # noqa: E402
from examples.graphs import (BENCHMARK_GRAPHS, BRANCHY_GRAPHS, googlenet, gpt2_decoder, inception_net,  # noqa: E402
                             resnet_cnn)
from tests.pass_check import capture_for_test  # noqa: E402

METHODS = ("louvain", "metis", "even")


def _valid(gm, ctx, k: int, ref: torch.Tensor) -> bool:
    parts = node_partitions(gm)
    partition_order(gm, parts)  # raises on a loop
    assert set(parts.values()) == set(range(k)), "not exactly k non-empty partitions"
    with torch.no_grad():
        torch.testing.assert_close(LocalExecutor(gm, ["cpu"] * k)(*ctx.example_inputs)[0], ref)
    return True


def quality(ks: tuple[int, ...]) -> None:
    print(f"{'graph':10} {'nodes':>5} {'k':>2}  " + "  ".join(f"{m + ' cut KB / imb / ms':>30}" for m in METHODS)
          + "  louvain<=metis")
    wins = total = valid = cases = 0
    for name, factory in BENCHMARK_GRAPHS.items():
        model, inputs = factory()
        with torch.no_grad():
            ref = model(*inputs)
        balance = 1.25 if name in BRANCHY_GRAPHS else 1.10
        for k in ks:
            # A fresh capture per k: louvain (first) may split heavy nodes to reach the
            # balance; metis and even then cut the same, finer graph.
            gm, ctx = capture_for_test(model, inputs)
            nodes = len(gm.graph.nodes)
            plans = {}
            for method in METHODS:
                Partition(k=k, method=method, balance=balance).run(gm, ctx)
                plans[method] = ctx.notes["partition"]["plan"]
                cases += 1
                valid += _valid(gm, ctx, k, ref)
            cells = []
            for m in METHODS:
                p = plans[m]
                loop = " (loop)" if p.metis_raw_loop_free is False else ""
                cells.append(f"{p.cut_bytes / 1e3:9.0f} / {p.imbalance:4.2f} / {p.time_s * 1e3:5.0f}{loop}")
            lv, mt = plans["louvain"], plans["metis"]
            verdict = "-"
            if mt.metis_raw_loop_free:
                total += 1
                ok = lv.cut_bytes <= mt.cut_bytes
                wins += ok
                verdict = "yes" if ok else f"no ({lv.cut_bytes / mt.cut_bytes:.2f}x)"
                if not ok and mt.imbalance > lv.imbalance:  # same-imbalance comparison, for the record
                    Partition(k=k, balance=mt.imbalance).run(gm, ctx)
                    same = ctx.notes["partition"]["plan"]
                    verdict += f"; at METIS's imbalance {mt.imbalance:.2f}: {same.cut_bytes / 1e3:.0f} KB"
            split = f"  (louvain split {len(lv.splits)} nodes)" if lv.splits else ""
            print(f"{name:10} {nodes:5} {k:2}  " + "  ".join(f"{c:>30}" for c in cells) + f"  {verdict}{split}")
    print(f"validity: {valid}/{cases} cases loop-free, exactly k non-empty, assert_close to eager")
    print(f"louvain cut <= metis cut on {wins}/{total} cases where METIS was loop-free")


def _predict(cm, inputs, microbatches: int, calibration):
    """Each stage's forward time per step, predicted before the pipeline runs.

    Measured node costs at microbatch size plus the calibrated per-op/per-call
    correction (``autoglm.cost.stage_time``); the analytic roofline for reference.
    """
    from autoglm.cost.stage_time import predict_stage_times

    mb_inputs = [t[: t.shape[0] // microbatches] for t in inputs]
    measured = predict_stage_times(cm.graph_module, mb_inputs, microbatches, cost="measured", calibration=calibration)
    analytic = predict_stage_times(cm.graph_module, None, microbatches, cost="analytic")
    # The graph is annotated at the compile batch; the analytic model then sees the
    # whole batch, so scale to one microbatch (costs are linear in batch at these sizes).
    return [p.per_step_s for p in measured], [p.per_step_s / microbatches for p in analytic]


def _alone(cm, inputs, microbatches: int, repeats: int = 15) -> tuple[list[float], list[float]]:
    """Each stage's submodule run alone here at microbatch size: (wall, CPU) seconds per step.

    CPU time (``time.thread_time``) leaves out time the process was preempted by
    others' work on a shared machine; wall time does not.
    """
    from autoglm.ir.partitions import extract_stages

    args = [t[: t.shape[0] // microbatches] for t in inputs]
    wall, cpu = [], []
    with torch.no_grad():
        for stage in extract_stages(cm.graph_module):
            out = stage.module(*args)  # warm-up
            w, c = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.thread_time()
                out = stage.module(*args)
                w.append(time.perf_counter() - t0)
                c.append(time.thread_time() - c0)
            wall.append(statistics.median(w) * microbatches)
            cpu.append(statistics.median(c) * microbatches)
            args = list(out)
    return wall, cpu


def _err(pred: float, meas: float) -> float:
    return (pred / meas - 1) * 100


def pipeline(rounds: int, steps: int, microbatches: int, schedule: str, only: str = "") -> None:
    from autoglm.runtime.pipeline.driver import run_pipeline
    from autoglm.cost.stage_time import calibrate_dispatch

    work = Path(tempfile.mkdtemp(prefix="autoglm-bench-"))
    cases = {"gpt2-12 (chain)": lambda: gpt2_decoder(batch=8, seq=64),
             "resnet (chain)": lambda: resnet_cnn(batch=8, size=32),
             "inception (branchy)": lambda: inception_net(batch=8, size=16),
             "googlenet (branchy)": lambda: googlenet(batch=8, size=112)}
    if only:
        cases = {name: f for name, f in cases.items() if name.split()[0] in only.split(",")}
    calibration = calibrate_dispatch()
    print(f"\npipeline: 2 stage processes (gloo), {schedule}, {microbatches} microbatches, {steps} steps, 1 thread")
    print(f"  dispatch calibration: {calibration.per_op_s * 1e6:+.2f} us/op, {calibration.per_call_s * 1e6:+.2f} us/call, "
          f"{calibration.per_module_s * 1e6:+.2f} us/module call")
    errors: dict[str, list[float]] = {"alone wall": [], "alone cpu": [], "pipeline": [], "pipeline cpu": []}
    for name, factory in cases.items():
        model, inputs = factory()
        arts = {}
        for method in ("louvain", "even"):
            spec = f"partition(k=2,contiguous=True,method={method},microbatches={microbatches})"
            cm = autoglm.compile(model, inputs, passes=spec, devices=["cpu", "cpu"], cost="measured")
            path = work / f"{name.split()[0]}-{method}"
            cm.save(path)
            arts[method] = (path, cm, _predict(cm, inputs, microbatches, calibration))  # before any stage runs
        ref = eager_by_microbatch(model, inputs, microbatches)
        rates: dict[str, list[float]] = {"louvain": [], "even": []}
        measured: dict[str, list[list[float]]] = {"louvain": [], "even": []}
        measured_cpu: dict[str, list[list[float]]] = {"louvain": [], "even": []}
        for _ in range(rounds):
            for method in ("louvain", "even"):  # interleaved: same machine load for both
                path, cm, _ = arts[method]
                out, stats = run_pipeline(path, list(inputs), nproc=2, schedule=schedule, microbatches=microbatches,
                                          steps=steps, warmup=2, return_stats=True, step_timeout_s=120)
                torch.testing.assert_close(out[0], ref)
                rates[method].append(len(stats.step_s) / sum(stats.step_s))
                measured[method].append([s / steps for s in stats.stage_forward_s])
                measured_cpu[method].append([s / steps for s in stats.stage_forward_cpu_s])
        for method in ("louvain", "even"):
            path, cm, (pred, analytic) = arts[method]
            wall, cpu = _alone(cm, inputs, microbatches)
            print(f"  {name:20} {method:8} steps/s {[round(r, 2) for r in rates[method]]}"
                  f"  cut {cm.plan.forwarded_bytes / 1e3:5.0f} KB  imbalance {cm.plan.imbalance:4.2f}"
                  f"  load avg {os.getloadavg()[0]:.2f}")
            for s, p in enumerate(pred):
                runs = [m[s] for m in measured[method]]
                med = statistics.median(runs)
                med_cpu = statistics.median(m[s] for m in measured_cpu[method])
                errs = {"alone wall": _err(p, wall[s]), "alone cpu": _err(p, cpu[s]), "pipeline": _err(p, med),
                        "pipeline cpu": _err(p, med_cpu)}
                for k, e in errs.items():
                    errors[k].append(e)
                print(f"      stage {s}: predicted {p * 1e3:6.2f} ms/step | alone wall {wall[s] * 1e3:6.2f} "
                      f"({errs['alone wall']:+5.1f}%) cpu {cpu[s] * 1e3:6.2f} ({errs['alone cpu']:+5.1f}%) | pipeline "
                      f"{[round(r * 1e3, 1) for r in runs]} median {med * 1e3:6.2f} ({errs['pipeline']:+5.1f}%)"
                      f" cpu {med_cpu * 1e3:6.2f} ({errs['pipeline cpu']:+5.1f}%)"
                      f" | analytic {analytic[s] * 1e3:6.2f} ({_err(analytic[s], med):+4.0f}%)")
        ratio = (sum(rates["louvain"]) / len(rates["louvain"])) / (sum(rates["even"]) / len(rates["even"]))
        print(f"  {name:20} throughput louvain / even = {ratio:.2f}")
    for k, errs in errors.items():
        within = sum(abs(e) <= 15 for e in errs)
        print(f"  stage-time prediction vs {k:10}: {within}/{len(errs)} stages within 15%, "
              f"max |error| {max(abs(e) for e in errs):5.1f}%, mean |error| {sum(abs(e) for e in errs) / len(errs):5.1f}%")


def compression() -> None:
    from autoglm.runtime.compression import sqnr_db

    model, inputs = gpt2_decoder()
    cm = autoglm.compile(model, inputs, passes="partition(k=2)", devices=["cpu", "cpu"])
    with torch.no_grad():
        ref = model(*inputs)
        print("\nboundary compression, gpt2-12, k=2:")
        for mode in ("none", "fp16", "int8"):
            ex = LocalExecutor(cm.graph_module, ["cpu", "cpu"], compression=mode)
            out = ex(*cm.example_inputs)[0]
            s = ex.stats
            print(f"  {mode:5} sent {s.sent_bytes:9,} B of {s.raw_bytes:9,} B (saved {s.saved_bytes / max(s.raw_bytes, 1):5.1%})"
                  f"  output SQNR {sqnr_db([ref], [out]):6.1f} dB  max abs err {(out - ref).abs().max():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="2,4,8")
    ap.add_argument("--pipeline", action="store_true")
    ap.add_argument("--compression", action="store_true")
    ap.add_argument("--no-quality", action="store_true", help="skip the quality table (pipeline runs only)")
    ap.add_argument("--pipeline-graphs", default="", help="comma list (gpt2-12,resnet,inception,googlenet); default all")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--schedule", default="gpipe", choices=("gpipe", "1f1b"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not args.no_quality:
        quality(tuple(int(x) for x in args.k.split(",")))
    if args.compression:
        compression()
    if args.pipeline:
        pipeline(args.rounds, args.steps, args.microbatches, args.schedule, args.pipeline_graphs)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}, pid {os.getpid()}")


if __name__ == "__main__":
    main()
