"""The pass manager's invariants: side effects survive every DCE, and ``modified`` cannot lie."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.ir.effects import has_side_effects
from autoglm.ir.pass_base import GraphPass, PassError, PassResult
from autoglm.ir.pass_manager import PassManager
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


def test_a_plan_invalidated_by_a_later_pass_is_dropped_and_said() -> None:
    """partition then split_merge: the plan no longer describes the graph, so it is not kept."""
    from examples.models import small_transformer

    model, inputs = small_transformer()
    with pytest.warns(UserWarning, match="partitioned"):
        cm = autoglm.compile(model, inputs, passes="partition(k=2),split_merge(high=0.05, low=0.01)", devices=["cpu", "cpu"])
    assert "partitioned" in cm.notes["invalidated"]
    assert cm.plan is None and "partition" not in cm.notes
    torch.testing.assert_close(cm(*inputs), model(*inputs))


class ClaimsPartitioned(GraphPass):
    name = "claims"
    ensures = ("partitioned",)

    def run(self, gm, ctx):  # noqa: ANN001
        return PassResult(gm, False)


def test_ensures_is_checked_on_the_graph() -> None:
    gm, ctx = capture_for_test(Counter().eval(), (torch.randn(4, 16),), frontend="export")
    with pytest.raises(PassError, match="claims it ensures 'partitioned'"):
        PassManager([ClaimsPartitioned()]).run(gm, ctx)


def test_ensures_without_a_check_is_refused() -> None:
    class Unchecked(GraphPass):
        name = "unchecked"
        ensures = ("fast",)

    with pytest.raises(TypeError, match="no check"):
        PassManager([Unchecked()])


def test_the_shape_check_fires_on_a_node_never_annotated() -> None:
    from autoglm.ir.meta import annotation
    from autoglm.ir.verify import VerificationError, verify_graph

    gm, _ = capture_for_test(Counter().eval(), (torch.randn(4, 16),), frontend="export")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        extra = gm.graph.call_function(torch.ops.aten.sigmoid.default, (out.args[0][0],))
    annotation(extra).created_by = "some_pass"  # what the manager records for every new node
    with pytest.raises(VerificationError, match="never annotated"):
        verify_graph(gm)


@pytest.mark.parametrize("spec", ["partition(method=spectral)", "partition(k=0)", "quantize(mode=fast)",
                                  "quantize(observer=max)"])
def test_bad_options_fail_before_the_model_runs(spec: str) -> None:
    from autoglm.passes.spec import SpecError

    class Exploding(nn.Module):
        def forward(self, x):
            raise AssertionError("the model ran before the options were checked")

    with pytest.raises(SpecError):
        autoglm.compile(Exploding(), (torch.randn(2),), passes=spec, devices=["cpu", "cpu"])
