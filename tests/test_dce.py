import torch
import torch.nn as nn

from autoglm.passes.eliminate_dead_code import EliminateDeadCode
from tests.pass_check import check_pass, op_sequence


class Dead(nn.Module):
    def forward(self, x):
        unused = torch.sin(x)  # noqa: F841 - dead on purpose
        return torch.relu(x)


class Alive(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1


def test_dce_removes_unused_node():
    gm = check_pass(EliminateDeadCode(), Dead(), (torch.randn(3, 4),),
                    changed=lambda g: "fn:sin" not in op_sequence(g))
    assert op_sequence(gm) == ["fn:relu"]


def test_dce_keeps_live_graph():
    check_pass(EliminateDeadCode(), Alive(), (torch.randn(3, 4),), expect_modified=False)


class Counter(nn.Module):
    """Updates a buffer in place and never reads the update's result."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        return x * self.calls


def test_dce_keeps_in_place_buffer_updates():
    import autoglm

    eager, compiled_src = Counter(), Counter()
    x = torch.randn(3)
    cm = autoglm.compile(compiled_src, (x,), passes="dce")
    for _ in range(4):
        torch.testing.assert_close(cm(x), eager(x))
    assert "method:add_" in op_sequence(cm.graph_module)
