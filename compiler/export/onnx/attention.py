"""Attention rows with no visible key: torch returns zeros, the ONNX translation did not.

A decoder with a causal mask and *left* padding (how Llama, Mistral, Qwen2,
Gemma and Phi pad a batch for generation) has query rows that see no key at
all: position ``i < pad`` may only look at keys ``<= i``, all of them padding.
torch's ``scaled_dot_product_attention`` returns 0 for such a row (its "safe
softmax", torch >= 2.5, every backend, float32 and float64 alike). The dynamo
exporter's translation (onnxscript torchlib) fills a boolean mask with the
dtype's *finite* minimum, so the row's softmax is uniform and the file returned
the mean of the values there: 1.35 max abs error on a 2-layer Mistral, 64
elements per padded position, far outside fp32 tolerance (and not fp32 noise,
so the float64 reference cannot explain it either). A float mask of ``-inf``
has the same hole (0/0 in ONNX ``Softmax``).

So before export each attention whose mask can hide a whole row is followed by
``where(any key visible in the row, out, 0)``: in torch it changes nothing (the
row is already 0), in ONNX it makes the file compute what torch computes.

It also unblocked T5 and Swin (tests/zoo): torch.onnx's decomposition of their
masked attention returned a transposed layout that the model's next ``view``
could not take ("Cannot view a tensor with shape [2, 12, 4, 8] and strides
(384, 8, 96, 1)"; ``torch.onnx.export`` of the eager model fails the same way).
The ``where`` yields a fresh tensor, and both now export with parity.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

from autoglm.ir.meta import annotation, has_annotation

__all__ = ["zero_unattended_rows"]

aten = torch.ops.aten
_SDPA = (aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)


def _mask_of(node: fx.Node) -> object:
    return node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")


def _dtype_of(node: fx.Node) -> torch.dtype | None:
    """The node's output dtype from our annotation or torch.export's fake value."""
    if has_annotation(node) and annotation(node).outputs:
        return annotation(node).outputs[0].dtype
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _row_visible(graph: fx.Graph, mask: fx.Node, dtype: torch.dtype) -> fx.Node:
    """A bool node, true where a query row sees at least one key (shape ``[..., L, 1]``)."""
    # A float mask hides a key only with -inf; HF's finite minimum leaves the
    # row uniform in torch too, so it is "visible" here and nothing changes.
    visible = mask if dtype == torch.bool else graph.call_function(aten.ne.Scalar, (mask, float("-inf")))
    return graph.call_function(aten.any.dim, (visible, -1, True))


def zero_unattended_rows(gm: fx.GraphModule) -> int:
    """Rewrite ``gm`` in place (a copy made for export); returns how many attentions changed."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SDPA:
            continue
        mask = _mask_of(node)
        dtype = _dtype_of(mask) if isinstance(mask, fx.Node) else None
        if dtype is None or not (dtype == torch.bool or dtype.is_floating_point):
            continue
        users = list(node.users)
        with gm.graph.inserting_before(node.next):  # keeps creation order, right after the attention
            visible = _row_visible(gm.graph, mask, dtype)
            out = gm.graph.call_function(aten.where.ScalarOther, (visible, node, 0.0))
        for user in users:
            user.replace_input_with(node, out)
        changed += 1
    if changed:
        gm.recompile()
    return changed
