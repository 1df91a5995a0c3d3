"""ONNX twins of the quantize pass's int8 modules, in forms ONNX Runtime fuses.

``Int8Linear`` and friends (``autoglm.ir.int8``) run fbgemm / ``torch._int_mm``
kernels that ONNX cannot express. For export each is replaced by a twin with
the same numerics written with standard ONNX int8 ops:

    Int8Linear (dynamic) ->  DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_int8^T, x_zp, 0) -> Cast
                             -> Mul(., Mul(x_scale, w_scale)) -> Add(bias)
                             ORT fuses all of it, bias included, into MatMulIntegerToFloat /
                             DynamicQuantizeMatMul (the form onnxruntime's quantize_dynamic writes)
    Int8Linear (static)  ->  QuantizeLinear/DequantizeLinear(x, calibrated) -> MatMul(DQ(W^T)) -> Add
                             ORT: MatMulIntegerToFloat (+ a separate bias Add)
    Int8Conv2d           ->  Q/DQ(x) -> Conv(DQ(W, axis=0), bias) -> Q/DQ(out)   ORT: QLinearConv
    Int8Embedding        ->  Gather(W_int8) * Gather(scale)                       (weight-only)

Why these shapes (measured with onnxruntime 1.32 on CPU, docs/onnx.md): the QDQ
form of the dynamic linear fused into int8 kernels but kept every bias as a
separate Add; the MatMulInteger chain is matched by ``MatMulIntegerToFloatFusion``
with the bias. That fusion needs ``Mul(x_scale, w_scale)`` to be a node, which a
constant (static) activation scale is not after constant folding, so static
linears stay QDQ. In QDQ a weight DQ followed by a ``Transpose`` (what
``F.linear`` exports to) is not fused, so twins store weights pre-transposed;
``MatMul + Add`` is turned into a float ``Gemm`` by ``MatMulAddFusion`` before the
QDQ fusions run, so the executor disables that optimizer for models with
``DQ -> MatMul`` (``OrtOptions.disabled_optimizers``).

ONNX has no op for torch's ``choose_qparams``; the dynamic activation
quantization lives in small custom ops here (``dynamic_qdq``,
``dynamic_int8_linear``) whose ONNX translations use ``DynamicQuantizeLinear``
(uint8, asymmetric, range including 0: the same scheme as the pass's dynamic mode).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.int8 import ACT_DTYPE, ACT_QMAX, ACT_QMIN, EPS, QDQ, W_DTYPE, W_QMAX, W_QMIN, Int8Conv2d, \
    Int8Embedding, Int8Linear
from autoglm.ir.effects import has_side_effects
from autoglm.ir.ops import get_attr_value

__all__ = ["int8_twin", "translation_table", "dynamic_qdq", "dynamic_int8_linear", "replace_qdq_linears"]

qd = torch.ops.quantized_decomposed


@torch.library.custom_op("autoglm_onnx::dynamic_qdq", mutates_args=())
def dynamic_qdq(x: torch.Tensor) -> torch.Tensor:
    """Quantize ``x`` to uint8 with per-call qparams and dequantize it (fake quant)."""
    s, z = QDQ.choose_qparams(x, ACT_QMIN, ACT_QMAX, EPS, ACT_DTYPE)
    return QDQ.dequantize_t(QDQ.quantize_t(x, s, z, ACT_QMIN, ACT_QMAX, ACT_DTYPE), s, z, ACT_QMIN, ACT_QMAX,
                            ACT_DTYPE)


@dynamic_qdq.register_fake
def _dynamic_qdq_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _dynamic_qdq_onnx(x: Any) -> Any:
    from onnxscript import opset18 as op

    y, scale, zero_point = op.DynamicQuantizeLinear(x)
    return op.DequantizeLinear(y, scale, zero_point)


@torch.library.custom_op("autoglm_onnx::dynamic_int8_linear", mutates_args=())
def dynamic_int8_linear(x: torch.Tensor, weight_int8_t: torch.Tensor, weight_scale: torch.Tensor,
                        weight_zero: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``fake_quant_dynamic(x) @ dequantize(W_int8^T) + bias``: our dynamic Int8Linear's math.

    ``weight_int8_t`` is (in, out) int8, ``weight_scale`` one fp32 scale per output
    column, ``weight_zero`` int8 zeros (the symmetric weights' zero points).
    """
    w = qd.dequantize_per_channel(weight_int8_t, weight_scale, weight_zero.long(), 1, W_QMIN, W_QMAX, torch.int8)
    y = torch.matmul(dynamic_qdq(x), w)
    return y if bias is None else y + bias


@dynamic_int8_linear.register_fake
def _dynamic_int8_linear_fake(x: torch.Tensor, weight_int8_t: torch.Tensor, weight_scale: torch.Tensor,
                              weight_zero: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight_int8_t.shape[1]))


def _dynamic_int8_linear_onnx(x: Any, weight_int8_t: Any, weight_scale: Any, weight_zero: Any,
                              bias: Any = None) -> Any:
    # Exactly the subgraph onnxruntime.quantization.quantize_dynamic writes, because
    # onnxruntime's MatMulIntegerToFloatFusion matches this shape (Mul(Cast(MatMulInteger),
    # Mul(x_scale, w_scale)) -> Add(bias initializer)) and folds the bias into the int8
    # kernel; DynamicQuantizeMatMulFusion then absorbs the DynamicQuantizeLinear.
    from onnxscript import opset18 as op

    xq, x_scale, x_zero = op.DynamicQuantizeLinear(x)
    acc = op.MatMulInteger(xq, weight_int8_t, x_zero, weight_zero)
    y = op.Mul(op.Cast(acc, to=1), op.Mul(x_scale, weight_scale))  # to=1: FLOAT
    return y if bias is None else op.Add(y, bias)


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` entries for ``torch.onnx.export``."""
    return {torch.ops.autoglm_onnx.dynamic_qdq.default: _dynamic_qdq_onnx,
            torch.ops.autoglm_onnx.dynamic_int8_linear.default: _dynamic_int8_linear_onnx}


def _static_qdq(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    q = qd.quantize_per_tensor(x, scale, zero_point, ACT_QMIN, ACT_QMAX, ACT_DTYPE)
    return qd.dequantize_per_tensor(q, scale, zero_point, ACT_QMIN, ACT_QMAX, ACT_DTYPE)


class _QdqBase(nn.Module):
    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("weight_zero", torch.zeros(weight_scale.numel(), dtype=torch.int64))
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def _weight(self, axis: int) -> torch.Tensor:
        return qd.dequantize_per_channel(self.weight_int8, self.weight_scale, self.weight_zero, axis, W_QMIN, W_QMAX,
                                         torch.int8)


class QdqLinear(_QdqBase):
    def __init__(self, mod: Int8Linear):
        super().__init__(mod.weight_int8.t(), mod.weight_scale, mod.bias)  # (in, out): DQ feeds MatMul directly
        self.act_scale, self.act_zero_point = mod.act_scale, mod.act_zero_point
        if self.act_scale is None:  # MatMulInteger's weight zero points: int8, one per output column
            self.register_buffer("weight_zero_int8", torch.zeros(mod.out_features, dtype=torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_scale is None:
            return dynamic_int8_linear(x, self.weight_int8, self.weight_scale, self.weight_zero_int8, self.bias)
        xd = _static_qdq(x, self.act_scale, self.act_zero_point)
        y = torch.matmul(xd, self._weight(axis=1))
        return y if self.bias is None else y + self.bias


class QdqConv2d(_QdqBase):
    def __init__(self, mod: Int8Conv2d):
        super().__init__(mod.weight_int8, mod.weight_scale, mod.bias)
        self.stride, self.padding, self.dilation, self.groups = mod.stride, mod.padding, mod.dilation, mod.groups
        self.act = (mod.act_scale, mod.act_zero_point)
        self.out = (mod.out_scale, mod.out_zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(_static_qdq(x, *self.act), self._weight(axis=0), self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        return _static_qdq(y, *self.out)


class QdqEmbedding(_QdqBase):
    def __init__(self, mod: Int8Embedding):
        super().__init__(mod.weight_int8, mod.weight_scale, None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Gather int8 rows, then scale them: a DequantizeLinear of the whole table would
        # run on every call (measured ~0.5 ms for 8000x256 on this CPU).
        return F.embedding(ids, self.weight_int8).float() * F.embedding(ids, self.weight_scale.unsqueeze(1))


_TWINS: list[tuple[type, Callable[[Any], nn.Module]]] = [
    (Int8Linear, QdqLinear), (Int8Conv2d, QdqConv2d), (Int8Embedding, QdqEmbedding)]


def int8_twin(mod: nn.Module) -> nn.Module | None:
    """The QDQ twin of one of our int8 modules (None for anything else)."""
    for cls, make in _TWINS:
        if type(mod) is cls:
            return make(mod).eval()
    return None


# ---------------------------------------------------------------- un-lowered q/dq graphs

_ACT_RANGE = (ACT_QMIN, ACT_QMAX, ACT_DTYPE)


def _activation_qdq(n: Any) -> tuple[fx.Node, tuple[float, int] | None] | None:
    """``(x, static qparams or None)`` when ``n`` is the pass's activation q/dq of ``x``."""
    if not isinstance(n, fx.Node) or n.op != "call_function":
        return None
    q = n.args[0]
    if not isinstance(q, fx.Node) or tuple(n.args[3:6]) != _ACT_RANGE or tuple(q.args[3:6]) != _ACT_RANGE:
        return None
    if n.target is QDQ.dequantize and q.target is QDQ.quantize and tuple(q.args[1:3]) == tuple(n.args[1:3]):
        return q.args[0], (float(q.args[1]), int(q.args[2]))
    if n.target is QDQ.dequantize_t and q.target is QDQ.quantize_t and tuple(q.args[1:3]) == tuple(n.args[1:3]):
        scale, zp = n.args[1], n.args[2]
        qp = scale.args[0] if isinstance(scale, fx.Node) and scale.target is operator.getitem else None
        if (isinstance(qp, fx.Node) and qp.target is QDQ.choose_qparams and qp.args[0] is q.args[0]
                and isinstance(zp, fx.Node) and zp.target is operator.getitem and zp.args[0] is qp):
            return q.args[0], None
    return None


def _weight_dq(n: Any, gm: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target is QDQ.dequantize_channel):
        return None
    q, s = get_attr_value(n.args[0], gm), get_attr_value(n.args[1], gm)
    if (tuple(n.args[2:]) != (None, 0, W_QMIN, W_QMAX, W_DTYPE) or not isinstance(q, torch.Tensor)
            or q.dtype != torch.int8 or q.dim() != 2 or not isinstance(s, torch.Tensor)):
        return None
    return q, s


def replace_qdq_linears(gm: fx.GraphModule) -> int:
    """Give un-lowered q/dq Linears (``quantize(lower=False)``) the same ONNX twins as ``Int8Linear``.

    ``aten.linear(qdq(x), dequantize_per_channel(W_int8, s), b)`` -> ``QdqLinear``
    module on ``x``. Needed for the dynamic form (torchlib cannot translate
    ``choose_qparams``) and better for the static one (the plain spelling exports
    ``DQ -> Transpose -> MatMul``, which onnxruntime does not fuse). Edits ``gm``
    in place (call it on the exporter's copy); returns how many it replaced.
    """
    graph, count = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        act, w = _activation_qdq(node.args[0]), _weight_dq(node.args[1], gm)
        bias_node = node.args[2] if len(node.args) > 2 else None
        bias = get_attr_value(bias_node, gm) if bias_node is not None else None
        if act is None or w is None or (bias_node is not None and not isinstance(bias, torch.Tensor)):
            continue
        x, qparams = act
        scale, zp = qparams or (None, None)
        twin = QdqLinear(Int8Linear(w[0], w[1], bias, scale, zp)).eval()
        name, i = f"onnx_qdq_{node.name}", 1
        while hasattr(gm, name):
            name, i = f"onnx_qdq_{node.name}_{i}", i + 1
        gm.add_submodule(name, twin)
        with graph.inserting_before(node):
            new = graph.call_module(name, (x,))
        new.meta = dict(node.meta)  # keeps the pass's int8 tags for the file's metadata
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    if count:
        graph.eliminate_dead_code(is_impure_node=has_side_effects)
        gm.recompile()
    return count
