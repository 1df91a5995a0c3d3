"""Predict each pipeline stage's forward time before running it.

    from autoglm.stage_time import calibrate_dispatch, predict_stage_times
    calibration = calibrate_dispatch()                    # this machine, ~1 s, once
    preds = predict_stage_times(cm.graph_module, microbatch_inputs, microbatches=4,
                                calibration=calibration)
    preds[0].per_step_s                                   # stage 0, one step (all microbatches)

A stage's time for one microbatch is built from parts that are measured
before any stage runs:

    per_microbatch_s = per_call_s + sum(node_cost(n) + per_op_s for n in stage)
                       + per_module_s * (call_module nodes in stage)

* ``node_cost`` comes from ``autoglm.cost.CostModel``: ``"measured"`` (default)
  times every node on its real inputs *at microbatch size* (cached by op and
  shapes, so identical layers are timed once); ``"analytic"`` is the roofline.
* ``per_op_s`` / ``per_call_s`` / ``per_module_s`` (``DispatchCalibration``)
  correct for how the node timings were taken: each node is timed alone through
  an interpreter (submodule calls also through the annotator's module hooks),
  while a stage runs the ``GraphModule``'s generated code with one Python call.
  ``calibrate_dispatch`` measures them on small synthetic chains (never on the
  graph being predicted): the difference between a chain's own run time and the
  sum of its nodes' timings, fitted over two chain lengths (slope = per op,
  intercept = per call), plus a chain of ``call_module`` nodes for the extra per
  module. Corrections can be negative (timing a node alone pays a timer and an
  interpreter call that generated code does not).

Why not the roofline alone: on a 1-thread CPU it misses what small or oddly
shaped ops really take (about 4x low on the Inception net's stages, whose 3x3
max-pools run far below peak bandwidth); measured node costs carry launch,
allocation and cache effects with them. Stages are numbered as the
pipeline runs them (``autoglm.runtime.partition_graphs.partition_order``).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx

from autoglm.cost import CostKind, CostModel
from autoglm.ir.meta import NodeAnnotation, iter_compute_nodes

__all__ = ["DispatchCalibration", "StagePrediction", "calibrate_dispatch", "predict_stage_times"]


@dataclass
class DispatchCalibration:
    """Seconds to add to the summed node timings when the nodes run as one ``GraphModule``."""

    per_op_s: float  # per node: generated code vs timing the node alone (may be negative)
    per_call_s: float  # per call of the stage module (argument binding, output tuple)
    # extra per ``call_module`` node: timing a submodule alone goes through the annotator's
    # module hooks (its FLOP counter tracks modules), which the stage does not pay
    per_module_s: float = 0.0

    def overhead(self, nodes: int, modules: int = 0) -> float:
        return self.per_call_s + nodes * self.per_op_s + modules * self.per_module_s


NO_CALIBRATION = DispatchCalibration(0.0, 0.0, 0.0)


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


def _residual(gm: fx.GraphModule, repeats: int, rounds: int) -> tuple[float, int]:
    """(chain run time - sum of its nodes' timings, node count)."""
    x = torch.randn(64)
    cost = CostModel("measured", repeats=repeats)
    cost.measure(gm, [x])
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


def calibrate_dispatch(short: int = 12, long: int = 240, repeats: int = 5, rounds: int = 51) -> DispatchCalibration:
    """Measure this machine's per-op and per-call correction (about a second).

    Run it under the same thread count as the stages (``torch.set_num_threads``).
    """
    if not 0 < short < long:
        raise ValueError(f"calibrate_dispatch: need 0 < short < long chain lengths, got short={short}, long={long}")
    r_short, n_short = _residual(_calibration_chain(short), repeats, rounds)
    r_long, n_long = _residual(_calibration_chain(long), repeats, rounds)
    per_op = (r_long - r_short) / (n_long - n_short)
    per_call = r_short - n_short * per_op
    r_mod, n_mod = _residual(_module_chain(long), repeats, rounds)
    per_module = (r_mod - per_call) / n_mod - per_op
    return DispatchCalibration(per_op_s=per_op, per_call_s=per_call, per_module_s=per_module)


def _private_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy whose annotations can be re-measured: deepcopy shares ``node.meta`` values."""
    clone = copy.deepcopy(gm)
    for n in clone.graph.nodes:
        n.meta = {k: copy.copy(v) if isinstance(v, NodeAnnotation) else v for k, v in n.meta.items()}
    return clone


def predict_stage_times(gm: fx.GraphModule, microbatch_inputs: Sequence[Any] | None = None, microbatches: int = 1,
                        cost: CostKind | CostModel = "measured",
                        calibration: DispatchCalibration | None = None) -> list[StagePrediction]:
    """Predicted forward time of every pipeline stage of a partitioned graph.

    ``microbatch_inputs``: flat inputs of one microbatch; with a measured cost model
    every node is timed on them (on a copy of ``gm``: the caller's annotations keep
    their shapes). Without them, latencies already on the nodes are used (nodes never
    timed fall back to the analytic estimate, as ``CostModel.node_cost`` does).
    ``calibration``: ``calibrate_dispatch()``'s result; ``None`` adds nothing.
    """
    from autoglm.runtime.partition_graphs import node_partitions, partition_order

    if microbatches < 1:
        raise ValueError(f"predict_stage_times: microbatches must be >= 1, got {microbatches}")
    model = cost if isinstance(cost, CostModel) else CostModel(cost)
    if model.kind == "measured" and microbatch_inputs is not None:
        gm = _private_copy(gm)
        with torch.no_grad():
            model.measure(gm, list(microbatch_inputs))
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
