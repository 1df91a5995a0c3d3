"""FLOPs of the lowered int8 modules, which torch's FLOP counter does not see.

``FlopCounterMode`` counts aten matmuls and convolutions; an ``Int8Linear`` or
``Int8Conv2d`` runs fbgemm's ``quantized::`` ops or ``torch._int_mm``, which it
has no formula for, so the annotator records 0 FLOPs for them and a report of a
quantized model read "0 FLOPs" where the work is the fp32 layer's. Counted here
the way the counter counts the fp32 layer (2 FLOPs per multiply-add, bias not
counted), so fp32 and int8 graphs compare like for like:

    MACs = output elements x multiply-adds per output element
         = out.numel() x weight_int8[0].numel()   (in_features, or in/groups x kh x kw)

An ``Int8Embedding`` is a gather: no FLOPs.
"""
from __future__ import annotations

import torch.fx as fx

from autoglm.ir.meta import output_specs

__all__ = ["int8_flops"]


def int8_flops(node: fx.Node) -> int | None:
    """FLOPs of an int8 linear/conv module call; None for any other node."""
    gm = node.graph.owning_module
    if node.op != "call_module" or gm is None:
        return None
    try:
        mod = gm.get_submodule(str(node.target))
    except AttributeError:
        return None
    if not type(mod).__name__.startswith("Int8"):  # cheap test first: autoglm.ir.int8 imports torch.ao
        return None
    from autoglm.ir.int8 import Int8Conv2d, Int8Linear

    if not isinstance(mod, (Int8Linear, Int8Conv2d)):
        return None
    specs = output_specs(node)
    if not specs:
        return None
    return 2 * specs[0].numel * int(mod.weight_int8[0].numel())
