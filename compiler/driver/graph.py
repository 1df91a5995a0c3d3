"""The one compile driver: a captured graph in, an annotated, rewritten, runnable graph out.

    captured graph --annotate--> shapes, FLOPs --cost--> seconds per node
                   --PassManager--> rewritten graph --executor--> callable

Every way into the compiler goes through ``compile_graph``: ``autoglm.compile``
on a whole model, each path segment of a branching ``Program``, and every
subgraph the ``torch.compile`` backend receives. ``build_executor`` is also
what ``autoglm.load`` uses, so a loaded artifact runs the way it was compiled.
Before this module the three copies had drifted apart (the backend planned
partitions and then ran on one device; branching segments never saw
``calibration=``; the effective config was built twice).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.capture.dynamic import DynamicDims, infer_dims
from autoglm.cost.model import CostModel
from autoglm.ir.annotate import annotate
from autoglm.ir.meta import annotation, has_annotation
from autoglm.ir.pass_base import GraphPass, PassContext
from autoglm.ir.pass_manager import PassManager, PassRecord
from autoglm.ir.sizes import state_bytes
from autoglm.ir.snapshot import CAPTURED_NOTE, captured_copy

__all__ = ["DriverOptions", "CompiledGraph", "compile_graph", "build_executor", "executor_for_loaded",
           "preserved_buffers"]


@dataclass
class DriverOptions:
    """How a graph is compiled; the same fields for every entry point."""

    passes: list[GraphPass]
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    verify: bool = False
    cost: str = "analytic"
    calibration: Any = None
    measure: bool = False
    # Keep a copy of the graph as captured (notes["captured"]) for the report's before/after and its
    # default accuracy/latency check; it shares the weights, see autoglm.ir.snapshot.
    keep_captured: bool = True

    def config(self, **extra: Any) -> dict[str, Any]:
        """The effective configuration an artifact records (built here only)."""
        return {"passes": [p.spec() for p in self.passes], "devices": list(self.devices), "cost": self.cost,
                "verify": self.verify, **extra}


@dataclass
class CompiledGraph:
    graph_module: fx.GraphModule
    executor: Callable[..., Any]
    records: list[PassRecord]
    notes: dict[str, Any]


def compile_graph(gm: fx.GraphModule, flat_inputs: Sequence[Any], options: DriverOptions,
                  cost_model: CostModel | None = None, timings: dict[str, float] | None = None,
                  dynamic: DynamicDims | None = None) -> CompiledGraph:
    """Annotate ``gm`` on ``flat_inputs``, cost it, run the passes and pick its executor.

    ``cost_model``: share one across calls (a branching program's segments) so measured
    timings are reused; ``timings`` receives ``annotate_s`` and ``passes_s``.
    ``dynamic``: for a graph without fake values (symbolic frontend, branching segments), the
    input dims that may change between calls, so passes never fix them to the example (the
    capture's ``signature.dynamic``); None infers batch and sequence (``infer_dims``), ``{}``
    says every shape is the example's. A torch.export graph's own symbolic dims win.
    """
    if dynamic is None:
        dynamic = infer_dims([t if isinstance(t, torch.Tensor) else torch.empty(()) for t in flat_inputs])
    cost = cost_model if cost_model is not None else CostModel(options.cost)
    measured = options.measure or options.cost == "measured"
    t0 = time.perf_counter()
    with torch.no_grad():
        reference = annotate(gm, list(flat_inputs), measure=measured, dynamic=dynamic)
    cost.annotate_costs(gm, None if cost.kind == "analytic" else list(flat_inputs))
    t1 = time.perf_counter()
    captured_bytes = state_bytes(gm)  # before the passes, for "22 MiB (was 87 MiB)"
    ctx = PassContext(list(flat_inputs), devices=list(options.devices), cost=cost, calibration=options.calibration)
    if options.keep_captured:
        ctx.notes[CAPTURED_NOTE] = captured_copy(gm)  # before the passes rewrite gm in place
    manager = PassManager(options.passes, verify=options.verify)
    gm = manager.run(gm, ctx, reference=reference)
    cost.annotate_costs(gm)
    if timings is not None:
        timings["annotate_s"] = timings.get("annotate_s", 0.0) + t1 - t0
        timings["passes_s"] = timings.get("passes_s", 0.0) + time.perf_counter() - t1
    executor = build_executor(gm, ctx.devices, "partitioned" in ctx.properties)
    ctx.notes["sizes"] = {"captured_parameter_bytes": captured_bytes}
    return CompiledGraph(gm, executor, list(manager.records), ctx.notes)


def build_executor(gm: fx.GraphModule, devices: Sequence[str], partitioned: bool) -> Any:
    """A partitioned graph runs on the multi-device executor; anything else runs as is."""
    if partitioned:
        from autoglm.runtime.local import LocalExecutor

        return LocalExecutor(gm, list(devices))
    from autoglm.runtime.direct import DirectExecutor

    return DirectExecutor(gm)


def executor_for_loaded(gm: fx.GraphModule, config: dict[str, Any]) -> Any:
    """The executor a loaded graph gets, as compile would pick it. The graph is not run: its
    annotations (shapes, costs, partitions) were read from the file."""
    partitioned = any(has_annotation(n) and annotation(n).partition is not None for n in gm.graph.nodes)
    return build_executor(gm, list(config.get("devices", ["cpu"])), partitioned)


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Compile-time executions (capture's eager run, annotation, verification, a
    branching path's first compile) leave no trace in the user's model: a module
    that updates its buffers in forward starts its first real call where it was."""
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in saved and saved[name].shape == b.shape:
                    b.copy_(saved[name])
