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
    Int8Conv2d (static)  ->  Q/DQ(x) -> Conv(DQ(W, axis=0), bias) -> Q/DQ(out)   ORT: QLinearConv
    Int8Conv2d (dynamic) ->  DynamicQuantizeLinear(x) -> ConvInteger(x_q, W_int8, x_zp, 0) -> Cast
                             -> Mul(., Mul(x_scale, w_scale)) -> Add(bias)  (quantize_dynamic's Conv form)
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
``dynamic_int8_linear``, ``dynamic_int8_conv2d``) whose ONNX translations use ``DynamicQuantizeLinear``
(uint8, asymmetric, range including 0: the same scheme as the pass's dynamic mode).

Weight storage (``store_weights_uint8``, run by the exporter on every file): the
twins compute with int8 weights (zero point 0) like the modules they replace,
but the file stores each weight as ``uint8 = int8 + 128`` with zero point 128
(``W_int8`` above is written ``W_u8, zp 128``): the same real values
``(q - zp) * scale``. onnxruntime's u8 x s8 kernels on x86 CPUs without VNNI
(AVX2 only) add each pair of products in 16 bits with saturation
(``vpmaddubsw``): 255*127 + 255*127 = 64770 becomes 32767 (MatMulInteger of
all-255 x all-127, K=64: 1048544 instead of 2072640), which put the exports at
17-23 dB against our exact int8 model; its u8 x u8 kernels widen to 16 bits
first and are exact on every CPU. Measurements, the alternative
(``session.x64quantprecision``) and the speed cost: docs/onnx.md.
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

__all__ = ["int8_twin", "translation_table", "dynamic_qdq", "dynamic_int8_linear", "dynamic_int8_conv2d",
           "replace_qdq_linears", "store_weights_uint8"]

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


@torch.library.custom_op("autoglm_onnx::dynamic_int8_conv2d", mutates_args=())
def dynamic_int8_conv2d(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor, weight_zero: torch.Tensor,
                        bias: Optional[torch.Tensor], stride: list[int], padding: list[int], dilation: list[int],
                        groups: int) -> torch.Tensor:
    """``conv2d(fake_quant_dynamic(x), dequantize(W_int8))``: our dynamic Int8Conv2d's math.

    ``scale`` is the per-output-channel weight scale shaped ``[C, 1, 1]`` and ``bias``
    ``[C, 1, 1]`` (what the ONNX form multiplies and adds on NCHW); ``weight_zero``
    is one int8 zero (onnxruntime's ``ConvInteger`` takes only a scalar weight zero point).
    """
    w = weight_int8.float() * scale.reshape(-1, 1, 1, 1)
    y = F.conv2d(dynamic_qdq(x), w, None, stride, padding, dilation, groups)
    return y if bias is None else y + bias


@dynamic_int8_conv2d.register_fake
def _dynamic_int8_conv2d_fake(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor,
                              weight_zero: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
                              padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    w = torch.empty(weight_int8.shape, dtype=x.dtype, device=x.device)
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


def _dynamic_int8_conv2d_onnx(x: Any, weight_int8: Any, scale: Any, weight_zero: Any, bias: Any = None,
                              stride: Any = (1, 1), padding: Any = (0, 0), dilation: Any = (1, 1),
                              groups: int = 1) -> Any:
    # The form onnxruntime.quantization.quantize_dynamic writes for Conv.
    from onnxscript import opset18 as op

    xq, x_scale, x_zero = op.DynamicQuantizeLinear(x)
    acc = op.ConvInteger(xq, weight_int8, x_zero, weight_zero, strides=list(stride),
                         pads=[*padding, *padding], dilations=list(dilation), group=groups)
    y = op.Mul(op.Cast(acc, to=1), op.Mul(x_scale, scale))  # to=1: FLOAT
    return y if bias is None else op.Add(y, bias)


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` entries for ``torch.onnx.export``."""
    return {torch.ops.autoglm_onnx.dynamic_qdq.default: _dynamic_qdq_onnx,
            torch.ops.autoglm_onnx.dynamic_int8_linear.default: _dynamic_int8_linear_onnx,
            torch.ops.autoglm_onnx.dynamic_int8_conv2d.default: _dynamic_int8_conv2d_onnx}


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
    """``weight_only`` (dynamic linears only): ``x @ DQ(W_int8^T) + b`` with the activation left
    in float, for runtimes that quantize activations themselves (``dynamic_int8_as="weight_only"``)."""

    def __init__(self, mod: Int8Linear, weight_only: bool = False):
        super().__init__(mod.weight_int8.t(), mod.weight_scale, mod.bias)  # (in, out): DQ feeds MatMul directly
        self.act_scale, self.act_zero_point = mod.act_scale, mod.act_zero_point
        self.weight_only = weight_only and self.act_scale is None
        if self.weight_only:  # (out, in), as OpenVINO's compressed-weight matmuls want them (measured: a
            # runtime Transpose of every u8 weight otherwise)
            self.register_buffer("weight_rows", mod.weight_int8.contiguous())
        if self.act_scale is None:  # MatMulInteger's weight zero points: int8, one per output column
            self.register_buffer("weight_zero_int8", torch.zeros(mod.out_features, dtype=torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_only:
            w = qd.dequantize_per_channel(self.weight_rows, self.weight_scale, self.weight_zero, 0, W_QMIN, W_QMAX,
                                          torch.int8)
            return F.linear(x, w, self.bias)
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

        if mod.act_scale is None:  # ConvInteger's operands: scales and bias broadcast over [N, C, H, W]
            self.register_buffer("scale_c11", self.weight_scale.reshape(-1, 1, 1))
            self.register_buffer("bias_c11", None if self.bias is None else self.bias.reshape(-1, 1, 1))
            self.register_buffer("weight_zero_int8", torch.zeros((), dtype=torch.int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act[0] is None:
            return dynamic_int8_conv2d(x, self.weight_int8, self.scale_c11, self.weight_zero_int8, self.bias_c11,
                                       list(self.stride), list(self.padding), list(self.dilation), self.groups)
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


DYNAMIC_INT8_FORMS = ("integer", "weight_only")


def int8_twin(mod: nn.Module, dynamic_int8_as: str = "integer") -> nn.Module | None:
    """The QDQ twin of one of our int8 modules (None for anything else).

    ``dynamic_int8_as="weight_only"`` writes dynamic Linears as int8 weights with a float
    activation (see ``QdqLinear``); "integer" (default) as onnxruntime's integer chain.
    """
    if type(mod) is Int8Linear:
        return QdqLinear(mod, weight_only=dynamic_int8_as == "weight_only").eval()
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


# ---------------------------------------------------------------- weight storage in the file

# (weight input, its zero-point input) of the ONNX ops that take a quantized weight.
_WEIGHT_SLOTS = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3), "ConvInteger": (1, 3),
                 "QLinearMatMul": (3, 5), "QLinearConv": (3, 5)}


def _weight_slot(node: Any, index: int) -> tuple[int, int] | None:
    slots = _WEIGHT_SLOTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    return slots if slots is not None and slots[0] == index else None


def _const_int8(value: Any) -> Any:
    """The numpy array of an int8 constant (initializer or Constant node output), else None."""
    import onnx_ir as ir

    if value is None or value.dtype != ir.DataType.INT8:
        return None
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        attr = value.producer().attributes.get("value")
        tensor = attr.value if attr is not None else None
    return None if tensor is None else tensor.numpy()


def store_weights_uint8(model: Any) -> int:
    """Store every int8 weight initializer of an ONNX model as uint8 with zero point + 128.

    ``model`` is an ``onnx_ir.Model`` (``ONNXProgram.model``), edited in place.
    ``q_u8 = q_s8 + 128`` and ``zp_u8 = zp_s8 + 128`` give the same real values
    ``(q - zp) * scale``, so every op computes the same numbers, but onnxruntime
    runs its exact u8 x u8 kernels instead of the u8 x s8 ones that saturate on
    CPUs without VNNI (module docstring). A weight is rewritten only when all its
    uses are the weight input of ``DequantizeLinear`` / ``MatMulInteger`` /
    ``ConvInteger`` / ``QLinearMatMul`` / ``QLinearConv`` with a constant (or
    absent) zero point; anything else (an int8 table feeding ``Gather``, a graph
    output) is left as it is. Zero points get new uint8 initializers (the int8
    one may be shared with an int8 activation's Q/DQ). Returns how many weights
    were rewritten.
    """
    import numpy as np
    import onnx_ir as ir

    count = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        shifted: dict[int, Any] = {}  # id(int8 zero-point value) -> its registered uint8 twin
        replaced: list[Any] = []

        def uint8_zero(node: Any, zp_index: int, arr: Any) -> Any:
            zp = node.inputs[zp_index] if zp_index < len(node.inputs) else None
            if zp is not None and id(zp) in shifted:
                return shifted[id(zp)]
            base = zp.name if zp is not None and zp.name else f"{node.name or node.op_type}_w_zero"
            name, i = f"{base}_u8", 1
            while name in graph.initializers:
                name, i = f"{base}_u8_{i}", i + 1
            value = ir.Value(name=name, type=ir.TensorType(ir.DataType.UINT8), shape=ir.Shape(arr.shape),
                             const_value=ir.tensor(arr, name=name))
            graph.register_initializer(value)
            if zp is not None:
                shifted[id(zp)] = value
                replaced.append(zp)
            return value

        for name, weight in list(graph.initializers.items()):
            if weight.dtype != ir.DataType.INT8 or weight.const_value is None or weight.is_graph_output():
                continue
            uses = list(weight.uses())
            slots = [_weight_slot(node, index) for node, index in uses]
            if not uses or any(s is None for s in slots):
                continue
            zeros = [_uint8_zero_array(node, s[1]) for (node, _), s in zip(uses, slots)]
            if any(z is None for z in zeros):
                continue
            for (node, _), (_, zp_index), arr in zip(uses, slots, zeros):
                value = uint8_zero(node, zp_index, arr)
                if zp_index >= len(node.inputs):
                    node.resize_inputs(zp_index + 1)
                node.replace_input_with(zp_index, value)
            q = weight.const_value.numpy()
            weight.const_value = ir.tensor((q.astype(np.int16) + 128).astype(np.uint8), name=name)
            weight.dtype = ir.DataType.UINT8
            count += 1
        for zp in replaced:  # int8 zero points nothing reads any more
            if list(zp.uses()) or zp.is_graph_output() or zp.is_graph_input():
                continue
            if graph.initializers.get(zp.name) is zp:
                del graph.initializers[zp.name]
            elif zp.producer() is not None and zp.producer().op_type == "Constant" and zp.producer().graph is graph:
                graph.remove(zp.producer())
    return count


def _uint8_zero_array(node: Any, zp_index: int) -> Any:
    """The uint8 zero point (int8 one + 128) a weight input of ``node`` needs, or None if unknown."""
    import numpy as np

    zp = node.inputs[zp_index] if zp_index < len(node.inputs) else None
    if zp is not None:
        z = _const_int8(zp)
        return None if z is None else (z.astype(np.int16) + 128).astype(np.uint8)
    if node.op_type != "DequantizeLinear":  # MatMulInteger / ConvInteger: a scalar zero point is allowed
        return np.full((), 128, np.uint8)
    scale = node.inputs[1]  # DequantizeLinear: the zero point has the scale's shape
    if scale is None or scale.shape is None or not scale.shape.is_static():
        return None
    return np.full(tuple(scale.shape), 128, np.uint8)
