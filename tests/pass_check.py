"""The shared check every pass test uses.

1. the structural change happened (a caller-supplied predicate on the graph),
2. ``modified`` agrees with whether the graph changed,
3. a second run is a no-op (``modified=False``, same graph),
4. outputs ``assert_close`` to eager (exact passes) or meet a stated SQNR (lossy).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from autoglm.capture import capture
from autoglm.cost.model import CostModel
from autoglm.ir.annotate import annotate
from autoglm.ir.fingerprint import graph_fingerprint
from autoglm.ir.pass_base import GraphPass, PassContext
from autoglm.ir.pass_manager import PassManager, sqnr_db


def capture_for_test(model: torch.nn.Module, inputs: tuple, devices: Sequence[str] = ("cpu",),
                     kwargs: dict | None = None, calibration: Any = None,
                     frontend: str = "auto", profile: Any = None) -> tuple[fx.GraphModule, PassContext]:
    """Capture and annotate; costs are analytic with ``profile`` (default: the fixed reference profile)."""
    model.eval()
    cap = capture(model, inputs, kwargs or {}, frontend=frontend)
    gm = cap.graph_module
    annotate(gm, cap.flat_inputs)
    cost = CostModel("analytic", profile=profile)
    cost.annotate_costs(gm)
    return gm, PassContext(cap.flat_inputs, devices=list(devices), cost=cost, calibration=calibration)


def op_sequence(gm: fx.GraphModule) -> list[str]:
    """Ops in use-def order, spelled without generated node names (for golden tests)."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            out.append(f"module:{type(gm.get_submodule(str(n.target))).__name__}")
        elif n.op == "call_function":
            out.append(f"fn:{getattr(n.target, '__name__', str(n.target))}")
        elif n.op == "call_method":
            out.append(f"method:{n.target}")
    return out


def _flat(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def check_pass(p: GraphPass, model: torch.nn.Module, inputs: tuple, *, devices: Sequence[str] = ("cpu",),
               changed: Callable[[fx.GraphModule], bool] | None = None, expect_modified: bool = True,
               min_sqnr_db: float | None = None, calibration: Any = None,
               frontend: str = "auto", profile: Any = None) -> fx.GraphModule:
    """Run the shared checks; returns the rewritten graph module."""
    gm, ctx = capture_for_test(model, inputs, devices, calibration=calibration, frontend=frontend, profile=profile)
    with torch.no_grad():
        eager = _flat(model(*inputs))
    before = graph_fingerprint(gm)  # not gm.code: a pass editing a node in place leaves the code stale
    manager = PassManager([p])
    gm = manager.run(gm, ctx)
    record = manager.records[-1]
    assert record.modified == expect_modified, f"{p.name}: modified={record.modified}, expected {expect_modified}"
    assert (graph_fingerprint(gm) != before) == record.modified, f"{p.name}: modified flag disagrees with the graph change"
    if changed is not None and expect_modified:
        assert changed(gm), f"{p.name}: expected structural change not found:\n{gm.code}"
    # A second run must be a no-op.
    again = PassManager([type(p)(p.options)])
    code = graph_fingerprint(gm)
    gm = again.run(gm, ctx)
    assert not again.records[-1].modified, f"{p.name}: second run reported modified"
    assert graph_fingerprint(gm) == code, f"{p.name}: second run changed the graph"
    with torch.no_grad():
        got = _flat(gm(*ctx.example_inputs))
    if p.exact:
        for g, e in zip(got, eager):
            torch.testing.assert_close(g, e)
    else:
        assert min_sqnr_db is not None, "lossy passes must state an SQNR bound"
        s = sqnr_db(eager, got)
        assert s >= min_sqnr_db, f"{p.name}: SQNR {s:.1f} dB < {min_sqnr_db}"
    return gm
