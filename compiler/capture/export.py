"""The ``export`` frontend: ``torch.export.export(strict=False)``.

For models plain FX cannot trace (Hugging Face transformers, in-place item
assignment, ...). The result is an aten-level graph; we unlift it
(``ep.module()``) so weights are ``get_attr`` nodes like in the symbolic graph,
drop the input-guard call torch inserts, and switch back to the plain flat
calling convention (our ``FlatSignature`` handles structure instead).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.ir.effects import has_side_effects

__all__ = ["export_capture"]


def export_capture(root: nn.Module, flat_inputs: Sequence[torch.Tensor]) -> fx.GraphModule:
    ep = torch.export.export(root, tuple(flat_inputs), strict=False)
    gm = ep.module()
    graph = gm.graph
    for node in list(graph.nodes):
        # torch >= 2.9 calls a `_guards_fn` submodule that re-checks input shapes; our
        # FlatSignature checks structure and the graph is shape-specialised anyway.
        if node.op == "call_module" and str(node.target).startswith("_guards_fn") and not node.users:
            graph.erase_node(node)
    for name, _ in list(gm.named_children()):
        if name.startswith("_guards_fn"):
            delattr(gm, name)
    graph.set_codegen(fx.graph.CodeGen())
    graph.eliminate_dead_code(is_impure_node=has_side_effects)
    gm.recompile()
    out = fx.GraphModule(gm, graph, root.__class__.__name__)
    return out
