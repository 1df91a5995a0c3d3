"""Remove nodes whose results nobody uses (side effects are kept: ``autoglm.ir.effects``).

    before:  x -> relu -> out ;  x -> sin (unused)
    after:   x -> relu -> out
"""
from __future__ import annotations

import torch.fx as fx

from autoglm.ir.effects import eliminate_dead_code
from autoglm.ir.pass_base import GraphPass, PassContext, PassResult

__all__ = ["EliminateDeadCode"]


class EliminateDeadCode(GraphPass):
    name = "dce"
    summary = "remove unused nodes and the attributes only they read"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        return PassResult(gm, eliminate_dead_code(gm))
