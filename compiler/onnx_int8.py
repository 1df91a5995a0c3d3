"""ONNX twins of the quantize pass's int8 modules, in the QDQ form ONNX Runtime fuses.

``Int8Linear`` and friends (``autoglm.ir.int8``) run fbgemm / ``torch._int_mm``
kernels that ONNX cannot express. For export each is replaced by a twin with
the same numerics written as explicit quantize/dequantize ops:

    Int8Linear (dynamic) ->  DynamicQuantizeLinear(x) -> DequantizeLinear --.
                             DequantizeLinear(W_int8^T, per-channel axis=1) -> MatMul -> Add(bias)
                             ORT fuses this into DynamicQuantizeMatMul
    Int8Linear (static)  ->  QuantizeLinear/DequantizeLinear(x, calibrated) -> MatMul(DQ(W)) -> Add
                             ORT: MatMulIntegerToFloat
    Int8Conv2d           ->  Q/DQ(x) -> Conv(DQ(W, axis=0), bias) -> Q/DQ(out)   ORT: QLinearConv
    Int8Embedding        ->  Gather(W_int8) * Gather(scale)                       (weight-only)

Why this shape (measured with onnxruntime 1.32 on CPU): a weight DQ followed by
a ``Transpose`` (what ``F.linear`` exports to) is not fused, so the twin stores
the weight pre-transposed; and ``MatMul + Add`` is turned into a float ``Gemm``
by ``MatMulAddFusion`` before the QDQ fusions run, so the executor disables that
optimizer for int8 models (``OrtOptions.disabled_optimizers``).

ONNX has no op for torch's ``choose_qparams``; the dynamic activation q/dq is a
small custom op here whose ONNX translation is ``DynamicQuantizeLinear`` (uint8,
asymmetric, range including 0: the same scheme as the pass's dynamic mode).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.int8 import ACT_DTYPE, ACT_QMAX, ACT_QMIN, EPS, QDQ, W_QMAX, W_QMIN, Int8Conv2d, Int8Embedding, \
    Int8Linear

__all__ = ["int8_twin", "translation_table", "dynamic_qdq"]

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


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` entries for ``torch.onnx.export``."""
    return {torch.ops.autoglm_onnx.dynamic_qdq.default: _dynamic_qdq_onnx}


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xd = dynamic_qdq(x) if self.act_scale is None else _static_qdq(x, self.act_scale, self.act_zero_point)
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
