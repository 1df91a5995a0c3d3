"""int8 IR ops: the q/dq vocabulary and the real int8 kernels, behind one adapter.

This is the ONE module that touches ``torch.ao`` / ``torch.ops.quantized`` /
``torch._int_mm``. It lives under ``autoglm.ir`` (not ``autoglm.runtime``)
because the ``quantize`` passes may import only ``autoglm.ir`` and
``autoglm.cost``, and the lowering pass must build these modules;
``autoglm.runtime.int8_kernels`` re-exports it for runtime code.

Two layers:

* q/dq vocabulary (portable, exports to ONNX ``QuantizeLinear`` /
  ``DequantizeLinear``): the ``quantized_decomposed`` ops PT2E uses, registered
  by importing ``torch.ao.quantization.fx._decomposed``. ``QDQ`` names them.
  Activations are uint8 asymmetric per tensor; weights are int8 symmetric
  (zero point 0, range [-127, 127]) per output channel.
* lowered modules (``Int8Linear``, ``Int8Conv2d``, ``Int8Embedding``): hold the
  int8 weight + fp32 scales as plain buffers (what is saved, via
  ``__autoglm_save__``, to safetensors without pickle) and build kernel state
  (fbgemm prepacked weights, a transposed int8 matrix for ``torch._int_mm``)
  lazily from them. The kernel is chosen by measurement (``choose_kernel``).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.metrics import sqnr_db
from autoglm.ir.timing import median_seconds

with warnings.catch_warnings():  # the registration import itself is fine; silence ao's deprecation notes
    warnings.simplefilter("ignore")
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed

__all__ = [
    "QDQ", "ACT_QMIN", "ACT_QMAX", "W_QMIN", "W_QMAX", "EPS",
    "quantize_weight", "dequantize_weight", "act_qparams", "fake_quant_dynamic", "fake_quant_static",
    "Int8Linear", "Int8Conv2d", "Int8Embedding", "LINEAR_KERNELS", "choose_kernel",
]

qd = torch.ops.quantized_decomposed


class QDQ:
    """The q/dq op overloads the quantize pass writes into graphs."""

    choose_qparams = qd.choose_qparams.tensor
    quantize = qd.quantize_per_tensor.default  # static: python float scale / int zero point
    dequantize = qd.dequantize_per_tensor.default
    quantize_t = qd.quantize_per_tensor.tensor  # dynamic: scale / zero point tensors from choose_qparams
    dequantize_t = qd.dequantize_per_tensor.tensor
    dequantize_channel = qd.dequantize_per_channel.default


ACT_QMIN, ACT_QMAX, ACT_DTYPE = 0, 255, torch.uint8  # activations: uint8 asymmetric (ONNX/fbgemm default)
W_QMIN, W_QMAX, W_DTYPE = -127, 127, torch.int8  # weights: symmetric, so zero point 0 everywhere
EPS = float(torch.finfo(torch.float32).eps)


# ---------------------------------------------------------------- numerics shared by pass and kernels


def quantize_weight(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weight along axis 0 -> (int8 tensor, fp32 scale per row).

    Per-tensor granularity still returns one scale per row (all equal), so the
    graph always uses one op spelling (``dequantize_per_channel``).
    """
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1).abs()
    amax = flat.amax(dim=1) if per_channel else flat.amax().expand(w.shape[0])
    scale = (amax / W_QMAX).clamp_min(EPS)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.reshape(shape)).clamp(W_QMIN, W_QMAX).to(W_DTYPE)
    return q.contiguous(), scale.contiguous()


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return QDQ.dequantize_channel(q, scale, None, 0, W_QMIN, W_QMAX, W_DTYPE)


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 asymmetric (scale, zero point) covering [lo, hi] and 0 (as ONNX and fbgemm do)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / (ACT_QMAX - ACT_QMIN), EPS)
    zp = int(min(max(round(ACT_QMIN - lo / scale), ACT_QMIN), ACT_QMAX))
    return float(scale), zp


def fake_quant_dynamic(x: torch.Tensor) -> torch.Tensor:
    s, z = QDQ.choose_qparams(x, ACT_QMIN, ACT_QMAX, EPS, ACT_DTYPE)
    return QDQ.dequantize_t(QDQ.quantize_t(x, s, z, ACT_QMIN, ACT_QMAX, ACT_DTYPE), s, z, ACT_QMIN, ACT_QMAX,
                            ACT_DTYPE)


def fake_quant_static(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    return QDQ.dequantize(QDQ.quantize(x, scale, zp, ACT_QMIN, ACT_QMAX, ACT_DTYPE), scale, zp, ACT_QMIN,
                          ACT_QMAX, ACT_DTYPE)


def _fbgemm_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    zeros = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # fbgemm's prepack only takes a (deprecated) quantized tensor
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)


# ---------------------------------------------------------------- lowered modules


class _Int8Base(nn.Module):
    """Shared save/load/copy plumbing: config is JSON, tensors are the plain buffers."""

    _TENSORS: tuple[str, ...] = ()

    def _config(self) -> dict[str, Any]:  # pragma: no cover - per subclass
        raise NotImplementedError

    def __autoglm_save__(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {k: getattr(self, k) for k in self._TENSORS if getattr(self, k, None) is not None}
        return self._config(), tensors

    @classmethod
    def __autoglm_load__(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "_Int8Base":
        return cls(**{k: tensors.get(k) for k in cls._TENSORS}, **config)

    def __deepcopy__(self, memo: dict) -> "_Int8Base":  # packed kernel state is rebuilt, never copied
        config, tensors = self.__autoglm_save__()
        return type(self).__autoglm_load__(config, {k: v.clone() for k, v in tensors.items()})


# Kernels per linear mode, in the order tried; the fastest measured one wins.
LINEAR_KERNELS = {
    "dynamic": ("fbgemm_dynamic", "int_mm_dynamic"),
    "static": ("fbgemm_static", "int_mm_static"),
}


class Int8Linear(_Int8Base):
    """y = x @ W.T + b with W int8 per output channel and x quantized to uint8.

    ``act_scale is None``: dynamic (activation qparams chosen per call);
    else static (calibrated ``act_scale``/``act_zero_point``).
    Kernels: ``fbgemm_dynamic`` (``quantized::linear_dynamic``, prepacked),
    ``fbgemm_static`` (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``),
    ``int_mm_*`` (``torch._int_mm`` int8 x int8 -> int32 with a zero-point fix-up).
    """

    _TENSORS = ("weight_int8", "weight_scale", "bias")

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 act_scale: float | None = None, act_zero_point: int | None = None, kernel: str | None = None):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.act_scale = None if act_scale is None else float(act_scale)
        self.act_zero_point = None if act_zero_point is None else int(act_zero_point)
        self.mode = "dynamic" if self.act_scale is None else "static"
        self.kernel = kernel or LINEAR_KERNELS[self.mode][0]
        if self.kernel not in LINEAR_KERNELS[self.mode]:
            raise ValueError(f"kernel {self.kernel!r} is not a {self.mode} int8 linear kernel; "
                             f"use one of {LINEAR_KERNELS[self.mode]}")
        self._state: Any = None

    @property
    def in_features(self) -> int:
        return int(self.weight_int8.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight_int8.shape[0])

    def _config(self) -> dict[str, Any]:
        return {"act_scale": self.act_scale, "act_zero_point": self.act_zero_point, "kernel": self.kernel}

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, mode={self.mode}, kernel={self.kernel}"

    def _prepare(self) -> Any:
        if self.kernel.startswith("fbgemm"):
            return torch.ops.quantized.linear_prepack(_fbgemm_weight(self.weight_int8, self.weight_scale), self.bias)
        wt = self.weight_int8.t()  # [K, N] column-major view: no copy, and the layout _int_mm runs fastest
        col_sum = self.weight_int8.sum(dim=1, dtype=torch.int32)
        return wt, col_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:  # fbgemm wants rows; a single vector is one row (found by the fuzzer)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if self._state is None:
            self._state = self._prepare()
        if self.kernel == "fbgemm_dynamic":
            return torch.ops.quantized.linear_dynamic(x, self._state, False)
        if self.kernel == "fbgemm_static":
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                x, self.act_scale, self.act_zero_point, self._state)
        return self._int_mm(x)

    def _int_mm(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.act_scale is None:
            s_t, z_t = QDQ.choose_qparams(x2, ACT_QMIN, ACT_QMAX, EPS, ACT_DTYPE)
            scale, zp = float(s_t), int(z_t)
        else:
            scale, zp = self.act_scale, self.act_zero_point
        # uint8 values shifted to int8 (-128) so both operands are int8, zero point follows.
        xq = torch.clamp(torch.round(x2 * (1.0 / scale)) + (zp - 128), -128, 127).to(torch.int8)
        wt, col_sum = self._state
        acc = torch._int_mm(xq, wt) - (zp - 128) * col_sum
        y = acc.float() * (self.weight_scale * scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int8Conv2d(_Int8Base):
    """Static int8 conv (fbgemm ``quantized::conv2d``): uint8 in, int8 per-channel weights, uint8 out.

    The kernel produces a quantized output, so the conv carries calibrated output
    qparams too; the module returns the dequantized fp32 result.
    """

    _TENSORS = ("weight_int8", "weight_scale", "bias")

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
                 groups: int = 1, act_scale: float = 1.0, act_zero_point: int = 0, out_scale: float = 1.0,
                 out_zero_point: int = 0, kernel: str = "fbgemm_static"):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = int(groups)
        self.act_scale, self.act_zero_point = float(act_scale), int(act_zero_point)
        self.out_scale, self.out_zero_point = float(out_scale), int(out_zero_point)
        self.kernel = kernel
        self._state: Any = None

    def _config(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "act_scale": self.act_scale, "act_zero_point": self.act_zero_point, "out_scale": self.out_scale,
                "out_zero_point": self.out_zero_point, "kernel": self.kernel}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._state is None:
            self._state = torch.ops.quantized.conv2d_prepack(
                _fbgemm_weight(self.weight_int8, self.weight_scale), self.bias, self.stride, self.padding,
                self.dilation, self.groups)
        with warnings.catch_warnings():  # fbgemm's conv only takes a (deprecated) quantized tensor
            warnings.simplefilter("ignore")
            qx = torch.quantize_per_tensor(x.contiguous(), self.act_scale, self.act_zero_point, torch.quint8)
        return torch.ops.quantized.conv2d(qx, self._state, self.out_scale, self.out_zero_point).dequantize()


class Int8Embedding(_Int8Base):
    """Weight-only int8 embedding: gather int8 rows, scale only the rows gathered."""

    _TENSORS = ("weight_int8", "weight_scale")

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())

    def _config(self) -> dict[str, Any]:
        return {}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_int8).float() * self.weight_scale[ids].unsqueeze(-1)


# ---------------------------------------------------------------- kernel choice by measurement

_KERNEL_TIMES: dict[tuple, dict[str, float]] = {}  # (mode, input shape, weight shape) -> seconds per kernel


# A real kernel must reproduce the q/dq simulation it replaces; they differ only by
# rounding inside the kernel. fbgemm's dynamic linear returns garbage for
# in_features == 1 (found by the fuzzer: SQNR -100 dB), so every candidate is checked.
MIN_KERNEL_SQNR_DB = 30.0


def choose_kernel(make: Callable[[str], nn.Module], candidates: Sequence[str], example: torch.Tensor,
                  key: tuple, repeats: int = 5, reference: torch.Tensor | None = None
                  ) -> tuple[str | None, dict[str, float]]:
    """Time ``make(kernel)(example)`` for each candidate; return the fastest and all timings.

    A kernel that raises (unsupported shape or CPU), or whose output differs from
    ``reference`` (the q/dq simulation) by more than rounding, is skipped. Returns
    ``(None, {})`` when no kernel qualifies: the caller keeps the q/dq form. Timings
    are cached per ``key`` for the process, like the cost model's measurements.
    """
    if key not in _KERNEL_TIMES:
        times: dict[str, float] = {}
        with torch.no_grad():
            for kernel in candidates:
                try:
                    mod = make(kernel)
                    if reference is not None and sqnr_db([reference], [mod(example)]) < MIN_KERNEL_SQNR_DB:
                        continue
                    times[kernel] = median_seconds(lambda: mod(example), repeats)
                except (RuntimeError, NotImplementedError):
                    continue
        _KERNEL_TIMES[key] = times
    times = _KERNEL_TIMES[key]
    if not times:
        return None, {}
    return min(times, key=times.__getitem__), dict(times)
