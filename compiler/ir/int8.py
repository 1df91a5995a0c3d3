"""int8 IR ops: the q/dq vocabulary and the real int8 kernels, behind one adapter.

This is the ONE module that touches ``torch.ao`` / ``torch.ops.quantized`` /
``torch._int_mm``. It lives under ``autoglm.ir`` (not ``autoglm.runtime``)
because the ``quantize`` passes may import only ``autoglm.ir`` and
``autoglm.cost.model``, and the lowering pass must build these modules;
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

Every kernel must compute exactly what the q/dq graph says (int8 x int8 products
summed in int32, then scaled), so that which kernel wins a timing race never
changes a result beyond float rounding. fbgemm's u8 x s8 kernels do that only on
CPUs with VNNI (``vpdpbusd``): on AVX2 / AVX512 without VNNI they add pairs of
products in int16 with saturation (``vpmaddubsw``; 2 x 255 x 127 = 64770 > 32767),
which is why torch.ao uses 7-bit activations (``reduce_range``) for fbgemm.
``kernel_exact`` probes that once per layer shape on this CPU (all-max inputs and
weights, compared with exact integer math); a kernel that fails is not a
candidate, and a saved module naming it runs its ``torch._int_mm`` twin instead.
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
    "QDQ", "ACT_QMIN", "ACT_QMAX", "W_QMIN", "W_QMAX", "INT7_QMAX", "EPS", "weight_qmax_for_this_cpu",
    "quantize_weight", "dequantize_weight", "act_qparams", "fake_quant_dynamic", "fake_quant_static",
    "Int8Linear", "Int8Conv2d", "Int8Embedding", "LINEAR_KERNELS", "CONV_KERNELS", "choose_kernel",
    "kernel_exact",
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
# The widest weight codes fbgemm's u8 x s8 kernels sum exactly without VNNI: they add
# pairs of products in int16 with saturation, and 2 x 255 x 64 = 32640 <= 32767.
INT7_QMAX = 64
EPS = float(torch.finfo(torch.float32).eps)


# ---------------------------------------------------------------- numerics shared by pass and kernels


def quantize_weight(w: torch.Tensor, per_channel: bool = True, qmax: int = W_QMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weight along axis 0 -> (int8 tensor, fp32 scale per row).

    Per-tensor granularity still returns one scale per row (all equal), so the
    graph always uses one op spelling (``dequantize_per_channel``). ``qmax``: the
    largest code (127; ``INT7_QMAX`` keeps fbgemm exact without VNNI, see
    ``weight_qmax_for_this_cpu``); the codes are int8 either way.
    """
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1).abs()
    amax = flat.amax(dim=1) if per_channel else flat.amax().expand(w.shape[0])
    scale = (amax / qmax).clamp_min(EPS)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.reshape(shape)).clamp(-qmax, qmax).to(W_DTYPE)
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


# Kernels per layer kind, in the order tried; the fastest measured exact one wins.
LINEAR_KERNELS = {
    "dynamic": ("fbgemm_dynamic", "int_mm_dynamic"),
    "static": ("fbgemm_static", "int_mm_static"),
}
# Static convs re-quantize their output (fbgemm's conv returns uint8); dynamic ones
# return fp32, and only ``torch._int_mm`` computes them (fbgemm has no exact
# dynamic conv: ``quantized::conv2d_dynamic`` uses 7-bit activations).
CONV_KERNELS = {
    "dynamic": ("int_mm_dynamic",),
    "static": ("fbgemm_static", "int_mm_static"),
}


# A dynamic graph serves many shapes, and which kernel is fastest can change with the
# row count (fbgemm's prepacked GEMM wins small, ``torch._int_mm`` large, on VNNI CPUs).
# A lowered linear may then carry one kernel per row-count bucket, at most this many.
MAX_KERNEL_BUCKETS = 8


def _check_buckets(buckets: Sequence[Sequence[Any]] | None) -> tuple[tuple[int, str], ...]:
    """``[[max_rows, kernel], ...]`` with increasing row bounds; () for one kernel at every shape."""
    if not buckets:
        return ()
    if not isinstance(buckets, (list, tuple)) or len(buckets) > MAX_KERNEL_BUCKETS:
        raise ValueError(f"kernel_by_rows: a list of at most {MAX_KERNEL_BUCKETS} [max_rows, kernel] pairs")
    out: list[tuple[int, str]] = []
    for b in buckets:
        if not (isinstance(b, (list, tuple)) and len(b) == 2 and type(b[0]) is int and isinstance(b[1], str)
                and b[0] > (out[-1][0] if out else 0)):
            raise ValueError(f"kernel_by_rows: {b!r} is not [max_rows, kernel] with max_rows increasing")
        out.append((b[0], b[1]))
    return tuple(out)


def _int_mm_twin(kernel: str) -> str:
    """The ``torch._int_mm`` kernel computing the same numbers as an fbgemm one (exact int32 sums)."""
    return kernel.replace("fbgemm_", "int_mm_")


class _Int8Kernel(_Int8Base):
    """A lowered layer that runs one of several int8 kernels (``kernel``), chosen at compile time."""

    kernel: str
    _active: str | None

    @property
    def active_kernel(self) -> str:
        """The kernel that runs: ``kernel``, or its exact ``int_mm`` twin where fbgemm saturates here
        (an artifact made on a VNNI machine keeps its numbers on one without)."""
        if self._active is None:
            exact = not self.kernel.startswith("fbgemm") or kernel_exact(self, self.kernel)
            self._active = self.kernel if exact else _int_mm_twin(self.kernel)
        return self._active


class Int8Linear(_Int8Kernel):
    """y = x @ W.T + b with W int8 per output channel and x quantized to uint8.

    ``act_scale is None``: dynamic (activation qparams chosen per call);
    else static (calibrated ``act_scale``/``act_zero_point``).
    Kernels: ``fbgemm_dynamic`` (``quantized::linear_dynamic``, prepacked),
    ``fbgemm_static`` (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``),
    ``int_mm_*`` (``torch._int_mm`` int8 x int8 -> int32 with a zero-point fix-up).
    An fbgemm kernel that is not exact on this CPU (``kernel_exact``) runs as its
    ``int_mm_*`` twin; ``active_kernel`` says which one runs.
    """

    _TENSORS = ("weight_int8", "weight_scale", "bias")

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 act_scale: float | None = None, act_zero_point: int | None = None, kernel: str | None = None,
                 kernel_by_rows: Sequence[Sequence[Any]] | None = None):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.act_scale = None if act_scale is None else float(act_scale)
        self.act_zero_point = None if act_zero_point is None else int(act_zero_point)
        self.mode = "dynamic" if self.act_scale is None else "static"
        self.kernel = kernel or LINEAR_KERNELS[self.mode][0]
        for k in [self.kernel, *(k for _, k in kernel_by_rows or ())]:
            if k not in LINEAR_KERNELS[self.mode]:
                raise ValueError(f"kernel {k!r} is not a {self.mode} int8 linear kernel; "
                                 f"use one of {LINEAR_KERNELS[self.mode]}")
        self.kernel_by_rows = _check_buckets(kernel_by_rows)
        self._state: dict[str, Any] = {}  # packed weights per kernel that has run
        self._active: str | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight_int8.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight_int8.shape[0])

    def _config(self) -> dict[str, Any]:
        config = {"act_scale": self.act_scale, "act_zero_point": self.act_zero_point, "kernel": self.kernel}
        if self.kernel_by_rows:
            config["kernel_by_rows"] = [list(b) for b in self.kernel_by_rows]
        return config

    def extra_repr(self) -> str:
        buckets = f", kernel_by_rows={list(self.kernel_by_rows)}" if self.kernel_by_rows else ""
        return f"{self.in_features}->{self.out_features}, mode={self.mode}, kernel={self.kernel}{buckets}"

    def kernel_for(self, x: torch.Tensor) -> str:
        """The kernel that runs on ``x``: its row count's shape bucket (dynamic graphs), else
        ``kernel``; an fbgemm kernel inexact on this CPU runs as its ``int_mm`` twin."""
        if not self.kernel_by_rows:
            return self.active_kernel
        rows = x.numel() // max(int(x.shape[-1]), 1)
        chosen = next((k for bound, k in self.kernel_by_rows if rows <= bound), self.kernel_by_rows[-1][1])
        if chosen == self.kernel:
            return self.active_kernel
        return chosen if not chosen.startswith("fbgemm") or kernel_exact(self, chosen) else _int_mm_twin(chosen)

    def _prepare(self, kernel: str) -> Any:
        if kernel.startswith("fbgemm"):
            return torch.ops.quantized.linear_prepack(_fbgemm_weight(self.weight_int8, self.weight_scale), self.bias)
        wt = self.weight_int8.t()  # [K, N] column-major view: no copy, and the layout _int_mm runs fastest
        col_sum = self.weight_int8.sum(dim=1, dtype=torch.int32)
        return wt, col_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:  # fbgemm wants rows; a single vector is one row (found by the fuzzer)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        kernel = self.kernel_for(x)
        if kernel not in self._state:
            self._state[kernel] = self._prepare(kernel)
        state = self._state[kernel]
        if kernel == "fbgemm_dynamic":
            return torch.ops.quantized.linear_dynamic(x, state, False)
        if kernel == "fbgemm_static":
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                x, self.act_scale, self.act_zero_point, state)
        return self._int_mm(x, state)

    def _int_mm(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.act_scale is None:
            s_t, z_t = QDQ.choose_qparams(x2, ACT_QMIN, ACT_QMAX, EPS, ACT_DTYPE)
            scale, zp = float(s_t), int(z_t)
        else:
            scale, zp = self.act_scale, self.act_zero_point
        # uint8 values shifted to int8 (-128) so both operands are int8, zero point follows.
        xq = _shifted_int8(x2, scale, zp)
        wt, col_sum = state
        acc = torch._int_mm(xq, wt) - (zp - 128) * col_sum
        y = acc.float() * (self.weight_scale * scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _worst_case(self, kernel: str) -> tuple["Int8Linear", torch.Tensor, torch.Tensor]:
        """(module with this shape and all-max weights, input quantizing to 255, exact output)."""
        q = torch.full_like(self.weight_int8, _widest_code(self.weight_int8))
        static = self.act_scale is not None
        mod = Int8Linear(q, torch.ones(self.out_features), None, 1.0 if static else None, 0 if static else None,
                         kernel=kernel)
        x = torch.full((8, self.in_features), float(ACT_QMAX))
        if not static:
            x[0, 0] = 0.0  # range [0, 255]: the dynamic qparams are scale 1, zero point 0
        return mod, x, x.double() @ q.double().t()


def _widest_code(q: torch.Tensor) -> int:
    """The largest |code| the layer's weights may hold: 64 for int7 weights, else 127.

    Worst cases are built from it, so a kernel exact only for int7 codes qualifies
    only for layers quantized to them.
    """
    return INT7_QMAX if int(q.abs().max()) <= INT7_QMAX else W_QMAX


def _shifted_int8(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """uint8 quantization of ``x`` (exactly ``quantize_per_tensor``'s rounding), stored as value - 128 in int8."""
    return torch.clamp(torch.round(x * (1.0 / scale)) + (zp - 128), -128, 127).to(torch.int8)


class Int8Conv2d(_Int8Kernel):
    """int8 conv: uint8 in, int8 per-channel weights.

    Static (``act_scale`` set): calibrated input qparams and a uint8 output
    (returned dequantized, fp32). Kernels: ``fbgemm_static`` (``quantized::conv2d``,
    prepacked) and ``int_mm_static`` (int8 im2col + ``torch._int_mm``, exact int32
    sums, then the output q/dq). The int8 kernel re-quantizes its output, so the
    conv carries calibrated output qparams too. An fbgemm kernel that is not exact
    on this CPU (``kernel_exact``) runs as ``int_mm_static``.

    Dynamic (``act_scale is None``): the input's qparams are chosen per call, as a
    dynamic Linear's are (onnxruntime's ``quantize_dynamic`` does the same for
    ``Conv``: ``ConvInteger``), and the output stays fp32. Kernel: ``int_mm_dynamic``.
    """

    _TENSORS = ("weight_int8", "weight_scale", "bias")

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0), dilation: Sequence[int] = (1, 1),
                 groups: int = 1, act_scale: float | None = None, act_zero_point: int | None = None,
                 out_scale: float | None = None, out_zero_point: int | None = None, kernel: str | None = None):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = int(groups)
        self.mode = "dynamic" if act_scale is None else "static"
        static = self.mode == "static"
        if static and (act_zero_point is None or out_scale is None or out_zero_point is None):
            raise ValueError("a static int8 conv needs act_zero_point, out_scale and out_zero_point")
        self.act_scale = float(act_scale) if static else None
        self.act_zero_point = int(act_zero_point) if static else None
        self.out_scale = float(out_scale) if static else None
        self.out_zero_point = int(out_zero_point) if static else None
        self.kernel = kernel or CONV_KERNELS[self.mode][0]
        if self.kernel not in CONV_KERNELS[self.mode]:
            raise ValueError(f"kernel {self.kernel!r} is not a {self.mode} int8 conv kernel; "
                             f"use one of {CONV_KERNELS[self.mode]}")
        self._state: Any = None
        self._active: str | None = None

    def _config(self) -> dict[str, Any]:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups,
                "act_scale": self.act_scale, "act_zero_point": self.act_zero_point, "out_scale": self.out_scale,
                "out_zero_point": self.out_zero_point, "kernel": self.kernel}

    def extra_repr(self) -> str:
        return f"{tuple(self.weight_int8.shape)}, groups={self.groups}, mode={self.mode}, kernel={self.kernel}"

    def _prepare(self, kernel: str) -> Any:
        if kernel == "fbgemm_static":
            return torch.ops.quantized.conv2d_prepack(
                _fbgemm_weight(self.weight_int8, self.weight_scale), self.bias, self.stride, self.padding,
                self.dilation, self.groups)
        c_out = self.weight_int8.shape[0]
        g = self.groups
        w = self.weight_int8.reshape(g, c_out // g, -1)  # [groups, out per group, in per group * kh * kw]
        return [wg.t() for wg in w], w.sum(dim=2, dtype=torch.int32).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        kernel = self.active_kernel
        if self._state is None:
            self._state = self._prepare(kernel)
        if kernel.startswith("int_mm"):
            return self._int_mm(x)
        with warnings.catch_warnings():  # fbgemm's conv only takes a (deprecated) quantized tensor
            warnings.simplefilter("ignore")
            qx = torch.quantize_per_tensor(x.contiguous(), self.act_scale, self.act_zero_point, torch.quint8)
        return torch.ops.quantized.conv2d(qx, self._state, self.out_scale, self.out_zero_point).dequantize()

    def _int_mm(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        c_out, _, kh, kw = self.weight_int8.shape
        (sh, sw), (ph, pw), (dh, dw), g = self.stride, self.padding, self.dilation, self.groups
        if self.act_scale is None:  # dynamic: the whole input's range, as choose_qparams in the q/dq graph
            s_t, z_t = QDQ.choose_qparams(x, ACT_QMIN, ACT_QMAX, EPS, ACT_DTYPE)
            scale, zp = float(s_t), int(z_t)
        else:
            scale, zp = self.act_scale, self.act_zero_point
        # Padding is a real 0.0, i.e. the zero point: it then adds nothing after the fix-up below.
        xq = F.pad(_shifted_int8(x, scale, zp), (pw, pw, ph, ph), value=zp - 128)
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        s = xq.stride()
        cols = xq.as_strided((n, ho, wo, c, kh, kw), (s[0], s[2] * sh, s[3] * sw, s[1], s[2] * dh, s[3] * dw))
        cols = cols.reshape(n * ho * wo, c * kh * kw)  # int8 im2col: one row per output pixel
        weights, w_sum = self._state
        k = (c // g) * kh * kw
        if g == 1:
            acc = torch._int_mm(cols, weights[0])
        else:
            acc = torch.cat([torch._int_mm(cols[:, i * k:(i + 1) * k].contiguous(), wt)
                             for i, wt in enumerate(weights)], dim=1)
        y = (acc - (zp - 128) * w_sum).float() * (self.weight_scale * scale)
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(n, ho, wo, c_out).permute(0, 3, 1, 2)
        if self.out_scale is None:
            return y.contiguous()
        return fake_quant_static(y, self.out_scale, self.out_zero_point).contiguous()

    def _worst_case(self, kernel: str) -> tuple["Int8Conv2d", torch.Tensor, torch.Tensor]:
        """(module with this shape/config and all-max weights, input quantizing to 255, exact output)."""
        q = torch.full_like(self.weight_int8, _widest_code(self.weight_int8))
        c_in = q.shape[1] * self.groups
        kh, kw = q.shape[2:]
        size = [d * (k - 1) + 1 + s for d, k, s in zip(self.dilation, (kh, kw), self.stride)]
        x = torch.full((1, c_in, *size), float(ACT_QMAX))
        if self.act_scale is None:
            x[0, 0, 0, 0] = 0.0  # range [0, 255]: the dynamic qparams are scale 1, zero point 0
        exact = F.conv2d(x.double(), q.double(), None, self.stride, self.padding, self.dilation, self.groups)
        if self.act_scale is None:
            mod = Int8Conv2d(q, torch.ones(q.shape[0]), None, self.stride, self.padding, self.dilation, self.groups,
                             kernel=kernel)
            return mod, x, exact
        out_scale = max(float(exact.max()), 1.0) / ACT_QMAX  # the largest exact sum maps to 255
        mod = Int8Conv2d(q, torch.ones(q.shape[0]), None, self.stride, self.padding, self.dilation, self.groups,
                         1.0, 0, out_scale, 0, kernel=kernel)
        return mod, x, exact


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

_KERNEL_TIMES: dict[tuple, float] = {}  # (mode, input shape, weight shape[, conv config], kernel) -> seconds
_EXACT: dict[tuple, bool] = {}  # (module type, kernel, weight shape, config) -> kernel_exact

# A real kernel must reproduce the q/dq simulation it replaces on the layer's own
# weights, up to float rounding (exact kernels measure 120+ dB; 60 dB is a kernel
# error of 1/1000 of the signal amplitude, far below any layer's quantization
# noise). fbgemm's dynamic linear returns garbage for in_features == 1 (found by
# the fuzzer: SQNR -100 dB), so every candidate is checked, on every layer.
MIN_KERNEL_SQNR_DB = 60.0


def kernel_exact(mod: nn.Module, kernel: str) -> bool:
    """Whether ``kernel`` computes exact int32 sums for a layer of ``mod``'s shape on this CPU.

    Runs the kernel once on the worst case for 16-bit accumulation (every weight
    127, every activation 255: pairs of products reach 64770, past int16) and
    compares with exact integer math. fbgemm fails this on CPUs without VNNI
    (e.g. AVX2-only: its ``vpmaddubsw`` saturates pairs at 32767); ``torch._int_mm``
    passes everywhere it runs. Cached per shape and configuration for the process.
    """
    config = mod._config() if isinstance(mod, Int8Conv2d) else {"static": getattr(mod, "act_scale", None) is not None}
    config = {k: v for k, v in config.items() if k in ("stride", "padding", "dilation", "groups", "static")}
    key = (type(mod).__name__, kernel, tuple(mod.weight_int8.shape), repr(sorted(config.items())),
           _widest_code(mod.weight_int8))
    if key not in _EXACT:
        probe, x, exact = mod._worst_case(kernel)
        probe._active = kernel  # run exactly this kernel, no fallback
        # A conv's output is re-quantized: one output step of rounding is allowed.
        atol = probe.out_scale * 1.01 if getattr(probe, "out_scale", None) is not None else 1e-3
        try:
            with torch.no_grad():
                y = probe(x).double()
            _EXACT[key] = bool(y.shape == exact.shape and torch.allclose(y, exact, rtol=1e-5, atol=atol))
        except (RuntimeError, NotImplementedError):
            _EXACT[key] = False
    return _EXACT[key]


_FULL_RANGE_EXACT: list[bool] = []  # fbgemm exact with 127 codes on this CPU (probed once)


def weight_qmax_for_this_cpu() -> int:
    """127 where fbgemm's int8 kernels are exact with full-range weights (VNNI), else ``INT7_QMAX``.

    Without VNNI the only exact kernel for 127 codes is ``torch._int_mm``, which has
    no fast path there: measured on an AVX2-only EPYC, 1 thread, real MiniLM batch 16
    x 64 ran 27.3x slower than fp32 eager with int8 weights (int_mm_dynamic) and
    0.69x with int7 weights (fbgemm_dynamic), at embedding cosine 0.9913 vs 0.9866.
    7-bit activations (torch.ao's ``reduce_range``, the other way to keep fbgemm
    exact) measured 0.957 there.
    """
    if not _FULL_RANGE_EXACT:
        probe = Int8Linear(torch.full((8, 64), W_QMAX, dtype=torch.int8), torch.ones(8), kernel="fbgemm_dynamic")
        _FULL_RANGE_EXACT.append(kernel_exact(probe, "fbgemm_dynamic"))
    return W_QMAX if _FULL_RANGE_EXACT[0] else INT7_QMAX


def choose_kernel(make: Callable[[str], nn.Module], candidates: Sequence[str], example: torch.Tensor,
                  key: tuple, repeats: int = 5, reference: torch.Tensor | None = None,
                  rejected: dict[str, str] | None = None) -> tuple[str | None, dict[str, float]]:
    """Time ``make(kernel)(example)`` for each qualifying candidate; return the fastest and all timings.

    A candidate qualifies only if it computes exactly what the q/dq graph says, so
    the timing race (noisy on a loaded machine) can change speed but never the
    numbers: it must pass ``kernel_exact`` (no int16 saturation on this CPU), not
    raise (unsupported shape or CPU), and match ``reference`` (the q/dq simulation
    of this very layer on ``example``) to ``MIN_KERNEL_SQNR_DB``. Why each other
    candidate was left out goes into ``rejected``. Returns ``(None, {})`` when no
    kernel qualifies: the caller keeps the q/dq form. Timings are cached per
    ``key`` and kernel for the process, like the cost model's measurements; the
    checks run for every layer.
    """
    times: dict[str, float] = {}
    rejected = {} if rejected is None else rejected
    with torch.no_grad():
        for kernel in candidates:
            try:
                mod = make(kernel)
                if not kernel_exact(mod, kernel):
                    rejected[kernel] = "inexact int8 sums on this CPU (int16 saturation: fbgemm without VNNI)"
                    continue
                if reference is not None:
                    agreement = sqnr_db([reference], [mod(example)])
                    if agreement < MIN_KERNEL_SQNR_DB:
                        rejected[kernel] = (f"differs from the q/dq simulation ({agreement:.1f} dB < "
                                            f"{MIN_KERNEL_SQNR_DB})")
                        continue
                tkey = tuple(key) + (kernel,)
                if tkey not in _KERNEL_TIMES:
                    _KERNEL_TIMES[tkey] = median_seconds(lambda: mod(example), repeats)
                times[kernel] = _KERNEL_TIMES[tkey]
            except (RuntimeError, NotImplementedError) as e:
                rejected[kernel] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    if not times:
        return None, {}
    return min(times, key=times.__getitem__), dict(times)
