"""The int8 graph with its activations left unrounded: the reference int8 parity falls back to.

A dynamic int8 model is discontinuous in its input: each layer's activation
scale comes from one element (the tensor's min or max), so a difference in the
last bit of one fp32 value can move that scale and re-round every element of
the tensor. Measured on real all-MiniLM-L6-v2 (13 tokens, 12 input sets): our
own int8 graph, with one LayerNorm weight moved by one ulp, differs from itself
by 17.8-20.4 dB on 3 of 12 sets (135 dB on the others); onnxruntime's file
(fp32 ops rounding differently from torch's in the last bit, and
``DynamicQuantizeLinear`` dividing by the scale where torch multiplies by its
reciprocal: -43.5 vs -43.499996, one element in 20k) differs from it by
17.8-27.9 dB on 5 of 12. Both are the same distance from the fp32 model on
every set (within 0.4 dB). So "SQNR against our int8 outputs" measures where
the two runs fell at such points, not whether the file is right.

The twin built here computes the same graph with every int8 layer's activation
quantization removed and its weights dequantized (``W_int8 * scale``): the
function both int8 runs approximate, continuous, and built from the compiled
graph alone (an artifact loaded from disk has no fp32 model). The parity check
asks whether onnxruntime is as close to it as our int8 graph is.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.effects import has_side_effects
from autoglm.ir.int8 import QDQ, Int8Conv2d, Int8Linear, dequantize_weight

__all__ = ["unrounded_twin"]


class _FloatLinear(nn.Module):
    def __init__(self, mod: Int8Linear):
        super().__init__()
        self.register_buffer("weight", dequantize_weight(mod.weight_int8, mod.weight_scale))
        self.register_buffer("bias", mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _FloatConv2d(nn.Module):
    def __init__(self, mod: Int8Conv2d):
        super().__init__()
        self.register_buffer("weight", dequantize_weight(mod.weight_int8, mod.weight_scale))
        self.register_buffer("bias", mod.bias)
        self.args = (mod.stride, mod.padding, mod.dilation, mod.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # no input or output rounding
        return F.conv2d(x, self.weight, self.bias, *self.args)


_FLOAT = {Int8Linear: _FloatLinear, Int8Conv2d: _FloatConv2d}
_DEQUANTIZE = (QDQ.dequantize, QDQ.dequantize_t)
_QUANTIZE = (QDQ.quantize, QDQ.quantize_t)


def _unrounded_input(node: fx.Node) -> fx.Node | None:
    """``x`` when ``node`` is ``dequantize(quantize(x))`` on an activation, else None."""
    if node.op != "call_function" or node.target not in _DEQUANTIZE:
        return None
    q = node.args[0]
    if isinstance(q, fx.Node) and q.op == "call_function" and q.target in _QUANTIZE:
        return q.args[0] if isinstance(q.args[0], fx.Node) else None
    return None


def unrounded_twin(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` whose int8 layers compute in float on dequantized weights.

    Lowered modules (``Int8Linear``, ``Int8Conv2d``) become float layers; q/dq
    pairs of un-lowered graphs (``quantize(lower=False)``) become their input.
    Weight-only layers (``Int8Embedding``, weight ``dequantize_per_channel``)
    stay: they are continuous already. ``gm`` itself is not touched.
    """
    twin = copy.deepcopy(gm)
    for node in list(twin.graph.nodes):
        if node.op == "call_module":
            make = _FLOAT.get(type(twin.get_submodule(str(node.target))))
            if make is not None:
                twin.set_submodule(str(node.target), make(twin.get_submodule(str(node.target))))
            continue
        x = _unrounded_input(node)
        if x is not None:
            node.replace_all_uses_with(x)
    twin.graph.eliminate_dead_code(is_impure_node=has_side_effects)
    twin.recompile()
    return twin.eval()
