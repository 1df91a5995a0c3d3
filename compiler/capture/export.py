"""The ``export`` frontend: ``torch.export.export(strict=False)``.

For models plain FX cannot trace (Hugging Face transformers, in-place item
assignment, ...). The result is an aten-level graph; we unlift it
(``ep.module()``) so weights are ``get_attr`` nodes like in the symbolic graph,
drop the input-guard call torch inserts, and switch back to the plain flat
calling convention (our ``FlatSignature`` handles structure instead). Dynamic
dimensions are asked for with ``torch.export.Dim`` (``autoglm.capture.dynamic``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.capture.dynamic import DimRange, DynamicDims, dims_of_export, export_shapes, grown_inputs
from autoglm.ir.effects import has_side_effects

__all__ = ["export_capture"]


def export_capture(root: nn.Module, flat_inputs: Sequence[torch.Tensor], wanted: DynamicDims | None = None,
                   auto: bool = False) -> tuple[fx.GraphModule, DynamicDims]:
    """The flat graph and the input dimensions it keeps dynamic (see ``autoglm.capture.dynamic``).

    ``auto``: ``wanted`` was inferred, so torch keeps dynamic only what the model allows
    (``Dim.AUTO``), then the ranges it found are asked for again from 1 (``Dim.AUTO``
    starts them at 2); a model that cannot take 1 keeps the range from 2.
    """
    if not wanted:
        return _unlifted(torch.export.export(root, tuple(flat_inputs), strict=False), root), {}
    trial = grown_inputs(flat_inputs, wanted)
    if not auto:
        ep = torch.export.export(root, trial, dynamic_shapes=export_shapes(wanted, len(trial), auto=False),
                                 strict=False)
        return _unlifted(ep, root), dims_of_export(ep, wanted)
    ep = torch.export.export(root, trial, dynamic_shapes=export_shapes(wanted, len(trial), auto=True), strict=False)
    found = dims_of_export(ep, wanted)
    grown = [(i, d) for i, per in wanted.items() for d in per if flat_inputs[i].shape[d] == 1]
    if any(d not in found.get(i, {}) for i, d in grown):  # specialised at the grown size 2: capture as given
        trial = tuple(flat_inputs)
        ep = torch.export.export(root, trial, dynamic_shapes=export_shapes(wanted, len(trial), auto=True),
                                 strict=False)
        found = dims_of_export(ep, wanted)
    from_one = {i: {d: DimRange(r.name, 1, r.max) for d, r in per.items()} for i, per in found.items()}
    if found and from_one != found:
        try:
            ep = torch.export.export(root, trial, dynamic_shapes=export_shapes(from_one, len(trial), auto=False),
                                     strict=False)
            found = dims_of_export(ep, from_one)
        except Exception:  # noqa: BLE001 - torch proved size 1 unsafe (a broadcast): the range stays from 2
            pass
    return _unlifted(ep, root), found


def _unlifted(ep: torch.export.ExportedProgram, root: nn.Module) -> fx.GraphModule:
    gm = ep.module()
    graph = gm.graph
    for node in list(graph.nodes):
        # torch >= 2.9 calls a `_guards_fn` submodule that re-checks input shapes; our
        # FlatSignature checks structure and autoglm.capture.dynamic checks shapes.
        if node.op == "call_module" and str(node.target).startswith("_guards_fn") and not node.users:
            graph.erase_node(node)
    for name, _ in list(gm.named_children()):
        if name.startswith("_guards_fn"):
            delattr(gm, name)
    graph.set_codegen(fx.graph.CodeGen())
    graph.eliminate_dead_code(is_impure_node=has_side_effects)
    gm.recompile()
    return fx.GraphModule(gm, graph, root.__class__.__name__)
