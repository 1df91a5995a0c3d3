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
