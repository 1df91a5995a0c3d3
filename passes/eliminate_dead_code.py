"""Remove nodes whose results nobody uses (impure ops are kept).

    before:  x -> relu -> out ;  x -> sin (unused)
    after:   x -> relu -> out
"""
from __future__ import annotations

import torch.fx as fx

from autoglm.ir.pass_base import GraphPass, PassContext, PassResult

__all__ = ["EliminateDeadCode"]


def _is_impure(node: fx.Node) -> bool:
    """FX's own rule plus in-place updates, which FX treats as pure.

    ``buf.copy_(x)`` or ``aten.add_.Tensor`` with no users still changes state (a
    module updating its buffer in forward); dropping it would change later calls.
    """
    if node.is_impure():
        return True
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__")
    if node.op == "call_function":
        schema = getattr(node.target, "_schema", None)
        if schema is not None:
            return bool(schema.is_mutable)
        name = getattr(node.target, "__name__", "")
        return name.endswith("_") and not name.startswith("__")
    return False


class EliminateDeadCode(GraphPass):
    name = "dce"
    summary = "remove unused nodes and the attributes only they read"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = gm.graph.eliminate_dead_code(is_impure_node=_is_impure)
        if modified:
            gm.delete_all_unused_submodules()
        return PassResult(gm, modified)
