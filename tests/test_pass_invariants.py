"""The pass manager's invariants: side effects survive every DCE, and ``modified`` cannot lie."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.ir.effects import has_side_effects
from autoglm.ir.pass_base import GraphPass, PassError, PassResult
from autoglm.pass_manager import PassManager
from tests.pass_check import capture_for_test


class Counter(nn.Module):
    """Counts its calls in a buffer nobody reads inside the graph (an in-place update with no users)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.lin(x).relu()


@pytest.mark.parametrize("frontend", ["symbolic", "export"])
@pytest.mark.parametrize("passes", ["dce", "quantize(mode=dynamic, progress=False)", "split_merge", "default"])
def test_in_place_buffer_updates_survive_every_pass(passes: str, frontend: str) -> None:
    model = Counter().eval()
    x = torch.randn(4, 16)
    cm = autoglm.compile(model, (x,), passes=passes, frontend=frontend)
    start = float(model.calls)
    cm(x)
    cm(x)
    assert float(model.calls) - start == 2.0


def test_one_side_effect_rule() -> None:
    g = torch.fx.Graph()
    x = g.placeholder("x")
    relu = g.call_function(torch.relu, (x,))
    add_ = g.call_method("add_", (x, 1))
    setitem = g.call_function(__import__("operator").setitem, (x, 0, relu))
    copy_ = g.call_function(torch.ops.aten.copy_.default, (x, relu))
    g.output(relu)
    assert [has_side_effects(n) for n in (relu, add_, setitem, copy_)] == [False, True, True, True]


class LyingPass(GraphPass):
    """Rewrites relu into sigmoid in place and claims nothing changed."""

    name = "lying"

    def run(self, gm, ctx):  # noqa: ANN001
        for n in gm.graph.nodes:
            if n.op == "call_function" and "relu" in str(n.target):
                n.target = torch.ops.aten.sigmoid.default
        return PassResult(gm, False)


def test_modified_false_with_a_changed_graph_is_an_error() -> None:
    gm, ctx = capture_for_test(Counter().eval(), (torch.randn(4, 16),), frontend="export")
    with pytest.raises(PassError, match="modified=False but changed the graph"):
        PassManager([LyingPass()]).run(gm, ctx)
