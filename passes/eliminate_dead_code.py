"""Remove nodes whose results nobody uses (impure ops are kept).

    before:  x -> relu -> out ;  x -> sin (unused)
    after:   x -> relu -> out
"""
from __future__ import annotations

import torch.fx as fx

from autoglm.ir.pass_base import GraphPass, PassContext, PassResult

__all__ = ["EliminateDeadCode"]


class EliminateDeadCode(GraphPass):
    name = "dce"
    summary = "remove unused nodes and the attributes only they read"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = gm.graph.eliminate_dead_code()
        if modified:
            gm.delete_all_unused_submodules()
        return PassResult(gm, modified)
