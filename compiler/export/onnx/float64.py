"""The float64 twin of an fp32 graph: the exact reference that ONNX parity falls back to.

When onnxruntime's fp32 result is outside tolerance, the parity check asks
whether each element is within fp32 rounding noise of the float64 result
(``check._within_fp32_noise``). ``module.double()`` converts the weights, but a
torch.export graph also spells dtypes in its nodes: Llama-family models
(Llama, Mistral, Qwen2, Gemma, Phi) cast with ``aten._to_copy(dtype=float32)``
and assert ``aten._assert_tensor_metadata(dtype=float32)``; the twin then
failed with "Tensor dtype mismatch! Expected: Float, Got: double". Here every
float32 dtype argument becomes float64 and the metadata asserts (checks with no
result, written for the fp32 graph) are dropped.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate

__all__ = ["float64_twin_module"]

_ASSERTS = tuple(getattr(torch.ops.aten, name).default for name in ("_assert_tensor_metadata",)
                 if hasattr(torch.ops.aten, name))


def _widen(value: object) -> object:
    return torch.float64 if value is torch.float32 else value


def float64_twin_module(gm: fx.GraphModule) -> fx.GraphModule:
    twin = copy.deepcopy(gm).double()
    for node in list(twin.graph.nodes):
        if node.op == "call_function" and node.target in _ASSERTS and not node.users:
            twin.graph.erase_node(node)
            continue
        node.args = map_aggregate(node.args, _widen)
        node.kwargs = map_aggregate(node.kwargs, _widen)
    twin.recompile()
    return twin
