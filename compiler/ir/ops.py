"""Recognise common ops whatever spelling the frontend produced.

The symbolic frontend keeps ``torch.nn`` leaves as ``call_module`` and functional
calls as ``call_function`` on ``torch.nn.functional``/``torch``; torch.export
produces aten overloads (``aten.linear.default``). Passes ask this module
"is this a linear, and where are its weight and bias?" instead of matching
spellings themselves.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "OpKind",
    "op_kind",
    "is_op",
    "LinearView",
    "linear_view",
    "ConvView",
    "conv_view",
    "MatmulView",
    "matmul_view",
    "get_attr_value",
    "node_module",
]

aten = torch.ops.aten


class OpKind:
    LINEAR = "linear"
    CONV2D = "conv2d"
    MATMUL = "matmul"
    LAYER_NORM = "layer_norm"
    BATCH_NORM = "batch_norm"
    ACTIVATION = "activation"
    SOFTMAX = "softmax"
    ELEMENTWISE = "elementwise"
    EMBEDDING = "embedding"
    DROPOUT = "dropout"
    POOL = "pool"
    VIEW = "view"
    OTHER = "other"


_MODULE_KINDS: list[tuple[type, str]] = [
    (nn.Linear, OpKind.LINEAR),
    (nn.Conv2d, OpKind.CONV2D),
    (nn.LayerNorm, OpKind.LAYER_NORM),
    (nn.BatchNorm1d, OpKind.BATCH_NORM),
    (nn.BatchNorm2d, OpKind.BATCH_NORM),
    (nn.Embedding, OpKind.EMBEDDING),
    (nn.Dropout, OpKind.DROPOUT),
    (nn.Softmax, OpKind.SOFTMAX),
    (nn.MaxPool2d, OpKind.POOL),
    (nn.AvgPool2d, OpKind.POOL),
    (nn.AdaptiveAvgPool2d, OpKind.POOL),
    (nn.ReLU, OpKind.ACTIVATION),
    (nn.GELU, OpKind.ACTIVATION),
    (nn.Tanh, OpKind.ACTIVATION),
    (nn.SiLU, OpKind.ACTIVATION),
    (nn.Sigmoid, OpKind.ACTIVATION),
]


def _overloads(*packets: Any) -> set:
    out: set = set()
    for p in packets:
        out.add(p)
        for name in p.overloads():
            out.add(getattr(p, name))
    return out


_FUNCTION_KINDS: dict[Any, str] = {}
for _fn, _kind in [
    (F.linear, OpKind.LINEAR),
    (F.conv2d, OpKind.CONV2D),
    (torch.conv2d, OpKind.CONV2D),
    (torch.matmul, OpKind.MATMUL),
    (torch.bmm, OpKind.MATMUL),
    (torch.mm, OpKind.MATMUL),
    (operator.matmul, OpKind.MATMUL),
    (F.layer_norm, OpKind.LAYER_NORM),
    (F.batch_norm, OpKind.BATCH_NORM),
    (F.relu, OpKind.ACTIVATION),
    (torch.relu, OpKind.ACTIVATION),
    (F.gelu, OpKind.ACTIVATION),
    (torch.tanh, OpKind.ACTIVATION),
    (F.silu, OpKind.ACTIVATION),
    (torch.sigmoid, OpKind.ACTIVATION),
    (F.softmax, OpKind.SOFTMAX),
    (torch.softmax, OpKind.SOFTMAX),
    (F.embedding, OpKind.EMBEDDING),
    (F.dropout, OpKind.DROPOUT),
    (operator.add, OpKind.ELEMENTWISE),
    (operator.mul, OpKind.ELEMENTWISE),
    (operator.sub, OpKind.ELEMENTWISE),
    (operator.truediv, OpKind.ELEMENTWISE),
    (torch.add, OpKind.ELEMENTWISE),
    (torch.mul, OpKind.ELEMENTWISE),
]:
    _FUNCTION_KINDS[_fn] = _kind

for _packet, _kind in [
    (aten.linear, OpKind.LINEAR),
    (aten.addmm, OpKind.LINEAR),
    (aten.conv2d, OpKind.CONV2D),
    (aten.convolution, OpKind.CONV2D),
    (aten.matmul, OpKind.MATMUL),
    (aten.bmm, OpKind.MATMUL),
    (aten.mm, OpKind.MATMUL),
    (aten.layer_norm, OpKind.LAYER_NORM),
    (aten.native_layer_norm, OpKind.LAYER_NORM),
    (aten.batch_norm, OpKind.BATCH_NORM),
    (aten._native_batch_norm_legit_no_training, OpKind.BATCH_NORM),
    (aten.relu, OpKind.ACTIVATION),
    (aten.gelu, OpKind.ACTIVATION),
    (aten.tanh, OpKind.ACTIVATION),
    (aten.silu, OpKind.ACTIVATION),
    (aten.sigmoid, OpKind.ACTIVATION),
    (aten.softmax, OpKind.SOFTMAX),
    (aten._softmax, OpKind.SOFTMAX),
    (aten.embedding, OpKind.EMBEDDING),
    (aten.dropout, OpKind.DROPOUT),
    (aten.add, OpKind.ELEMENTWISE),
    (aten.mul, OpKind.ELEMENTWISE),
    (aten.sub, OpKind.ELEMENTWISE),
    (aten.div, OpKind.ELEMENTWISE),
    (aten.view, OpKind.VIEW),
    (aten.reshape, OpKind.VIEW),
    (aten.permute, OpKind.VIEW),
    (aten.transpose, OpKind.VIEW),
]:
    for _ov in _overloads(_packet):
        _FUNCTION_KINDS[_ov] = _kind

_METHOD_KINDS = {
    "view": OpKind.VIEW,
    "reshape": OpKind.VIEW,
    "permute": OpKind.VIEW,
    "transpose": OpKind.VIEW,
    "contiguous": OpKind.VIEW,
    "flatten": OpKind.VIEW,
    "relu": OpKind.ACTIVATION,
    "softmax": OpKind.SOFTMAX,
    "add": OpKind.ELEMENTWISE,
    "mul": OpKind.ELEMENTWISE,
    "matmul": OpKind.MATMUL,
}


def node_module(node: fx.Node, gm: fx.GraphModule) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def op_kind(node: fx.Node, gm: fx.GraphModule) -> str:
    """The kind of op a node performs, in one vocabulary for all frontends."""
    if node.op == "call_module":
        mod = node_module(node, gm)
        for cls, kind in _MODULE_KINDS:
            if type(mod) is cls:
                return kind
        return OpKind.OTHER
    if node.op == "call_function":
        try:
            return _FUNCTION_KINDS.get(node.target, OpKind.OTHER)
        except TypeError:  # unhashable target
            return OpKind.OTHER
    if node.op == "call_method":
        return _METHOD_KINDS.get(str(node.target), OpKind.OTHER)
    return OpKind.OTHER


def is_op(node: fx.Node, gm: fx.GraphModule, kind: str) -> bool:
    return op_kind(node, gm) == kind


def get_attr_value(node: Any, gm: fx.GraphModule) -> Any:
    """The tensor behind a ``get_attr`` node (None for anything else)."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    return None


@dataclass
class LinearView:
    """A linear layer seen through any spelling: y = x @ weight.T + bias.

    ``weight`` is always in ``nn.Linear``'s (out, in) orientation. When
    ``weight_transposed`` is True the stored tensor behind ``weight_node`` is
    (in, out) (``aten.addmm(bias, x2d, W)``, what Hugging Face ``Conv1D`` becomes
    under torch.export) and ``weight`` is a transposed view of it: a rewrite that
    replaces the node may emit ``aten.linear(input, weight', bias)`` with an
    (out, in) weight (``input`` is then 2-D), but one that edits the stored
    tensor in place must store the transpose.
    """

    node: fx.Node
    input: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_node: fx.Node | None  # get_attr node, for functional spellings
    bias_node: fx.Node | None
    module: nn.Linear | None
    weight_transposed: bool = False


def _addmm_view(node: fx.Node, gm: fx.GraphModule) -> LinearView | None:
    """``aten.addmm(bias, x2d, W)`` with ``W`` (in, out) and bias a get_attr: x2d @ W + bias."""
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1 or len(node.args) != 3:
        return None
    b_node, x, w_node = node.args
    w, b = get_attr_value(w_node, gm), get_attr_value(b_node, gm)
    if not isinstance(x, fx.Node) or not isinstance(w, torch.Tensor) or not isinstance(b, torch.Tensor):
        return None
    if w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[1]:
        return None  # a bias broadcast over rows (or a matrix) is not a linear's bias
    return LinearView(node, x, w.t(), b, w_node, b_node, None, weight_transposed=True)


def linear_view(node: fx.Node, gm: fx.GraphModule, *, addmm: bool = False) -> LinearView | None:
    """Describe ``node`` as a linear with constant weights, or return None.

    ``addmm=True`` also accepts ``aten.addmm(bias, x2d, W_in_out)`` (HF ``Conv1D``),
    reported with ``weight_transposed=True``; off by default because passes that
    edit weights in place must handle that orientation explicitly.
    """
    if node.op == "call_module":
        mod = node_module(node, gm)
        if type(mod) is nn.Linear and isinstance(node.args[0], fx.Node):
            return LinearView(node, node.args[0], mod.weight, mod.bias, None, None, mod)
        return None
    if node.op != "call_function":
        return None
    target = node.target
    if target is F.linear or target in _overloads(aten.linear):
        x = node.args[0]
        w_node = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        w = get_attr_value(w_node, gm)
        if not isinstance(x, fx.Node) or not isinstance(w, torch.Tensor):
            return None
        b = get_attr_value(b_node, gm) if b_node is not None else None
        if b_node is not None and not isinstance(b, torch.Tensor):
            return None
        return LinearView(node, x, w, b, w_node, b_node, None)
    if addmm and target is aten.addmm.default:
        return _addmm_view(node, gm)
    return None


@dataclass
class ConvView:
    node: fx.Node
    input: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    module: nn.Conv2d | None


def conv_view(node: fx.Node, gm: fx.GraphModule) -> ConvView | None:
    """Describe ``node`` as a 2-D convolution with constant weights, or None."""
    if node.op == "call_module":
        mod = node_module(node, gm)
        if type(mod) is nn.Conv2d and mod.padding_mode == "zeros" and isinstance(node.args[0], fx.Node):
            return ConvView(node, node.args[0], mod.weight, mod.bias, mod.stride, mod.padding,
                            mod.dilation, mod.groups, mod)
        return None
    if node.op == "call_function" and (node.target in (F.conv2d, torch.conv2d) or node.target in _overloads(aten.conv2d)):
        names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
        defaults: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
        vals = dict(defaults)
        vals.update(dict(zip(names, node.args)))
        vals.update(node.kwargs)
        w = get_attr_value(vals["weight"], gm)
        b = get_attr_value(vals["bias"], gm) if vals["bias"] is not None else None
        if not isinstance(vals["input"], fx.Node) or not isinstance(w, torch.Tensor):
            return None
        return ConvView(node, vals["input"], w, b, vals["stride"], vals["padding"], vals["dilation"],
                        int(vals["groups"]), None)
    return None


@dataclass
class MatmulView:
    """A product of two computed tensors (``a @ b``) in any spelling: torch.matmul,
    ``operator.matmul``, ``Tensor.matmul``, bmm, aten.matmul / aten.bmm."""

    node: fx.Node
    a: fx.Node
    b: fx.Node
    batched_only: bool  # bmm: both operands are exactly 3-D


_BMM_TARGETS = {torch.bmm} | _overloads(aten.bmm)
_MATMUL_TARGETS = {torch.matmul, operator.matmul} | _overloads(aten.matmul) | _BMM_TARGETS


def matmul_view(node: fx.Node, gm: fx.GraphModule) -> MatmulView | None:
    """Describe ``node`` as ``a @ b`` of two graph values, or return None."""
    if node.op == "call_method" and node.target == "matmul":
        pass
    elif node.op == "call_function" and _hashable_in(node.target, _MATMUL_TARGETS):
        pass
    else:
        return None
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
        return None
    return MatmulView(node, a, b, _hashable_in(node.target, _BMM_TARGETS))


def _hashable_in(target: Any, targets: set) -> bool:
    try:
        return target in targets
    except TypeError:  # unhashable call target
        return False
