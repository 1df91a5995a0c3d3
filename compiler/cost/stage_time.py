"""Predict each pipeline stage's forward time before running it.

    from autoglm.cost.stage_time import calibrate_dispatch, predict_stage_times
    calibration = calibrate_dispatch()                    # this machine, ~1 s, once
    preds = predict_stage_times(cm.graph_module, microbatch_inputs, microbatches=4,
                                calibration=calibration)
    preds[0].per_step_s                                   # stage 0, one step (all microbatches)

A stage's time for one microbatch is built from parts that are measured
before any stage runs:

    per_microbatch_s = per_call_s + sum(node_cost(n) + per_op_s for n in stage)
                       + per_module_s * (call_module nodes in stage)

* ``node_cost`` is measured at *microbatch size* on a private copy of the graph.
  ``timing="in_context"`` (default) times every node where it sits: the whole
  graph runs in order, each node timed once per run, median over runs. A node
  then meets the caches a real run leaves it (its weights evicted by the nodes
  before it, its inputs just written), which timing it alone in a tight loop
  hides: on the GoogLeNet layout's late stage (24 MB of weights, L2 2 MB per
  core) isolated timings summed to 18% below the stage's run time, in-context
  ones to within 1%. ``timing="isolated"`` is ``CostModel("measured")``: each
  node timed alone, repeated, cached by op and shapes. ``cost="analytic"`` is
  the roofline (kept for reference: ~4x low on the Inception stages, whose 3x3
  max-pools run far below peak bandwidth).
* ``per_op_s`` / ``per_call_s`` / ``per_module_s`` (``DispatchCalibration``)
  correct for how the node timings were taken (through an interpreter, one timer
  per node) versus how a stage runs them (the ``GraphModule``'s generated code,
  one Python call). ``calibrate_dispatch`` measures them on small synthetic
  chains with the same timing method, never on the graph being predicted: the
  difference between a chain's own run time and the sum of its nodes' timings,
  fitted over two chain lengths (slope = per op, intercept = per call), plus a
  chain of ``call_module`` nodes for the extra per module. Corrections can be
  negative.

Stages are numbered as the pipeline runs them
(``autoglm.ir.partitions.partition_order``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx

from autoglm.cost.model import CostKind, CostModel
from autoglm.ir.annotate import annotate
from autoglm.ir.meta import annotation, iter_compute_nodes, private_copy

__all__ = ["DispatchCalibration", "StagePrediction", "calibrate_dispatch", "predict_stage_times", "time_in_context",
           "TIMINGS"]

TIMINGS = ("in_context", "isolated")


@dataclass
class DispatchCalibration:
    """Seconds to add to the summed node timings when the nodes run as one ``GraphModule``."""

    per_op_s: float  # per node: generated code vs timing the node alone (may be negative)
    per_call_s: float  # per call of the stage module (argument binding, output tuple)
    # extra per ``call_module`` node: timing a submodule alone goes through the annotator's
    # module hooks (its FLOP counter tracks modules), which the stage does not pay
    per_module_s: float = 0.0
    timing: str = "in_context"  # the node-timing method it corrects (TIMINGS)

    def overhead(self, nodes: int, modules: int = 0) -> float:
        return self.per_call_s + nodes * self.per_op_s + modules * self.per_module_s


NO_CALIBRATION = DispatchCalibration(0.0, 0.0, 0.0)


class _InContextTimer(fx.Interpreter):
    """Runs the graph in order and times every compute node once per run."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        self.samples: dict[fx.Node, list[float]] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "output", "get_attr"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        fn = getattr(self, n.op)
        t0 = time.perf_counter()
        result = fn(n.target, args, kwargs)
        self.samples.setdefault(n, []).append(time.perf_counter() - t0)
        return result


def time_in_context(gm: fx.GraphModule, inputs: Sequence[Any], runs: int = 9, warmup: int = 2) -> dict[fx.Node, float]:
    """Median seconds of every compute node over ``runs`` in-order runs of the whole graph."""
    timer = _InContextTimer(gm)
    with torch.no_grad():
        for _ in range(warmup + runs):
            timer.run(*inputs)
    return {n: statistics.median(ts[warmup:]) for n, ts in timer.samples.items()}


def _node_latencies(gm: fx.GraphModule, inputs: Sequence[Any], timing: str, given: CostModel) -> CostModel:
    """Write ``latency_s`` on ``gm``'s nodes, timed on ``inputs`` the ``timing`` way (isolated timings
    land in ``given``'s cache, so a caller holding that cost model sees the same numbers)."""
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    model = CostModel("measured", repeats=given.repeats, timings=given.timings)
    if timing == "isolated":
        model.measure(gm, list(inputs))
        return model
    with torch.no_grad():
        annotate(gm, list(inputs))  # shapes at these inputs
    for n, seconds in time_in_context(gm, inputs, runs=max(2 * model.repeats - 1, 3)).items():
        annotation(n).latency_s = seconds
    return model


@dataclass
class StagePrediction:
    stage: int  # position in the pipeline
    partition: int  # the partition annotation it runs
    nodes: int  # compute nodes in the stage
    node_s: float  # sum of the cost model's node costs, one microbatch
    overhead_s: float  # DispatchCalibration.overhead(nodes), one microbatch
    microbatches: int

    @property
    def per_microbatch_s(self) -> float:
        return self.node_s + self.overhead_s

    @property
    def per_step_s(self) -> float:
        """Forward time of the stage over one step (every microbatch once)."""
        return self.per_microbatch_s * self.microbatches


def _module_chain(length: int) -> fx.GraphModule:
    """A chain of ``call_module`` nodes (ReLU submodules): what module calls cost beyond a function."""
    root = torch.nn.Module()
    g = fx.Graph()
    x = g.placeholder("x")
    for i in range(length):
        root.add_module(f"act{i}", torch.nn.ReLU())
        x = g.call_module(f"act{i}", (x,))
    g.output((x,))
    return fx.GraphModule(root, g)


def _calibration_chain(length: int) -> fx.GraphModule:
    """A chain of small ops like those between a stage's GEMMs (add, activation, views)."""
    g = fx.Graph()
    x = g.placeholder("x")
    pattern = [
        lambda v: g.call_function(torch.add, (v, 1.0)),
        lambda v: g.call_function(torch.relu, (v,)),
        lambda v: g.call_method("view", (v, 8, 8)),
        lambda v: g.call_method("transpose", (v, 0, 1)),
        lambda v: g.call_method("reshape", (v, 64)),
        lambda v: g.call_function(torch.mul, (v, 0.5)),
    ]
    for i in range(length):
        x = pattern[i % len(pattern)](x)
    g.output((x,))
    return fx.GraphModule(torch.nn.Module(), g)


def _residual(gm: fx.GraphModule, repeats: int, rounds: int, timing: str) -> tuple[float, int]:
    """(chain run time - sum of its nodes' timings, node count)."""
    x = torch.randn(64)
    cost = _node_latencies(gm, [x], timing, CostModel("measured", repeats=repeats))
    nodes = list(iter_compute_nodes(gm.graph))
    summed = sum(cost.node_cost(n) for n in nodes)
    with torch.no_grad():
        gm(x)
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            gm(x)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) - summed, len(nodes)


def calibrate_dispatch(short: int = 12, long: int = 240, repeats: int = 5, rounds: int = 51,
                       timing: str = "in_context") -> DispatchCalibration:
    """Measure this machine's per-op and per-call correction for ``timing`` (about a second).

    Run it under the same thread count as the stages (``torch.set_num_threads``).
    """
    if not 0 < short < long:
        raise ValueError(f"calibrate_dispatch: need 0 < short < long chain lengths, got short={short}, long={long}")
    r_short, n_short = _residual(_calibration_chain(short), repeats, rounds, timing)
    r_long, n_long = _residual(_calibration_chain(long), repeats, rounds, timing)
    per_op = (r_long - r_short) / (n_long - n_short)
    per_call = r_short - n_short * per_op
    r_mod, n_mod = _residual(_module_chain(long), repeats, rounds, timing)
    per_module = (r_mod - per_call) / n_mod - per_op
    return DispatchCalibration(per_op_s=per_op, per_call_s=per_call, per_module_s=per_module, timing=timing)


def predict_stage_times(gm: fx.GraphModule, microbatch_inputs: Sequence[Any] | None = None, microbatches: int = 1,
                        cost: CostKind | CostModel = "measured",
                        calibration: DispatchCalibration | None = None,
                        timing: str = "in_context") -> list[StagePrediction]:
    """Predicted forward time of every pipeline stage of a partitioned graph.

    ``microbatch_inputs``: flat inputs of one microbatch; with a measured cost model
    every node is timed on them the ``timing`` way (on a copy of ``gm``: the caller's
    annotations keep their shapes). Without them, latencies already on the nodes are
    used (nodes never timed fall back to the analytic estimate, as
    ``CostModel.node_cost`` does). ``calibration``: ``calibrate_dispatch()``'s result
    for the same ``timing``; ``None`` adds nothing.
    """
    from autoglm.ir.partitions import node_partitions, partition_order

    if microbatches < 1:
        raise ValueError(f"predict_stage_times: microbatches must be >= 1, got {microbatches}")
    if calibration is not None and calibration.timing != timing:
        raise ValueError(f"predict_stage_times: the calibration corrects {calibration.timing!r} timings, "
                         f"but timing={timing!r}")
    model = cost if isinstance(cost, CostModel) else CostModel(cost)
    if model.kind == "measured" and microbatch_inputs is not None:
        gm = private_copy(gm)
        model = _node_latencies(gm, microbatch_inputs, timing, model)
    parts = node_partitions(gm)
    if not parts:
        raise ValueError("predict_stage_times: the graph has no compute nodes")
    order = partition_order(gm, parts)
    cal = calibration or NO_CALIBRATION
    result = []
    for stage, p in enumerate(order):
        nodes = [n for n in iter_compute_nodes(gm.graph) if parts[n] == p]
        node_s = sum(model.node_cost(n) for n in nodes)
        modules = sum(n.op == "call_module" for n in nodes)
        result.append(StagePrediction(stage, p, len(nodes), node_s, cal.overhead(len(nodes), modules), microbatches))
    return result
