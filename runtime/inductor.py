"""``InductorExecutor``: the rewritten graph compiled by Inductor (``torch.compile``), weights frozen.

The int8 modules of the quantize pass (``Int8Linear``, ``Int8Conv2d``) run fbgemm or
``torch._int_mm`` kernels that Inductor cannot see into. For Inductor each is put back
as the pass's own q/dq math (``QdqLinear``, ``QdqConv2d``: the same int8 weights and
scales, the same activation qparams), written with the ``quantized_decomposed`` ops
that Inductor's x86 int8 passes match (they are what PyTorch's PT2E quantization
writes). With ``freezing`` on, Inductor then

* pre-packs each int8 weight once for oneDNN and runs ``onednn::qlinear_pointwise``
  (u8 x s8 with VNNI) instead of dequantizing the weight;
* fuses the epilogues into the GEMM: GELU after a Linear, the residual add after
  another, the bias, and (static mode) the quantization of the next Linear's input;
* generates the elementwise and reduction code around them (LayerNorm, dynamic
  activation ranges) as C++ loops.

Measured on real all-MiniLM-L6-v2 (32 sentences x 64 tokens, 1 thread, AVX-512 VNNI;
benchmarks/quantize.py, 3 interleaved runs): the default (dynamic) quantize ran 0.327x
eager fp32 here against 0.356x on the fx backend's fbgemm kernels, the same int8 plan;
the profile is in docs/quantize.md.

Numbers: oneDNN sums u8 x s8 products exactly in int32 on CPUs with VNNI, like the
fx kernels, but it applies scales in its own order, so outputs differ from the fx
graph by float rounding and, for static layers that re-quantize, by an occasional
one-code step; ``attach_inductor`` holds them to the int8 parity budget.

Weights zero points: the pass's weights are symmetric (``zero_points=None``);
Inductor's lowering wants a tensor, so the twins carry zeros.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.int8 import (QDQ, W_DTYPE, W_QMAX, W_QMIN, Int8Conv2d, Int8Linear, fake_quant_dynamic,
                             fake_quant_static)

__all__ = ["InductorOptions", "InductorExecutor", "QdqLinear", "QdqConv2d", "inductor_graph", "MODES"]

# Inductor's int8 lowering builds its zero-point constants with torch.tensor(tensor), which warns
# on every compile (and recompile for a new shape); nothing a user can act on.
warnings.filterwarnings("ignore", message="To copy construct from a tensor", module="torch._inductor.mkldnn_lowerings")

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class InductorOptions:
    """How Inductor compiles the graph.

    ``mode``: ``torch.compile``'s mode (None: its default).
    ``freezing``: weights become constants Inductor folds and pre-packs (needed for
    the int8 kernels; the model's weights are read once, at compile time).
    ``dynamic``: ``torch.compile``'s ``dynamic`` (None: recompile once with symbolic
    sizes when a second shape arrives).
    """

    mode: str | None = None
    freezing: bool = True
    dynamic: bool | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.freezing, bool):
            raise ValueError(f"freezing must be True or False, got {self.freezing!r}")
        if self.dynamic not in (None, True, False):
            raise ValueError(f"dynamic must be None, True or False, got {self.dynamic!r}")


def _activation_qdq(x: torch.Tensor, scale: float | None, zero_point: int | None) -> torch.Tensor:
    """The pass's activation rounding: per call (dynamic) or with calibrated qparams (static)."""
    return fake_quant_dynamic(x) if scale is None else fake_quant_static(x, scale, zero_point)


class _QdqBase(nn.Module):
    def __init__(self, mod: Int8Linear | Int8Conv2d):
        super().__init__()
        self.register_buffer("weight_int8", mod.weight_int8)
        self.register_buffer("weight_scale", mod.weight_scale)
        self.register_buffer("weight_zero_point", torch.zeros(mod.weight_scale.shape, dtype=torch.int64))
        self.register_buffer("bias", mod.bias)
        self.act_scale, self.act_zero_point = mod.act_scale, mod.act_zero_point

    def weight(self) -> torch.Tensor:
        return QDQ.dequantize_channel(self.weight_int8, self.weight_scale, self.weight_zero_point, 0, W_QMIN, W_QMAX,
                                      W_DTYPE)


class QdqLinear(_QdqBase):
    """An ``Int8Linear`` as q/dq ops: dequantized activation x dequantized weight (+ bias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_activation_qdq(x, self.act_scale, self.act_zero_point), self.weight(), self.bias)


class QdqConv2d(_QdqBase):
    """An ``Int8Conv2d`` as q/dq ops; static convs re-quantize their output, as the int8 kernel does."""

    def __init__(self, mod: Int8Conv2d):
        super().__init__(mod)
        self.stride, self.padding, self.dilation, self.groups = mod.stride, mod.padding, mod.dilation, mod.groups
        self.out_scale, self.out_zero_point = mod.out_scale, mod.out_zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _activation_qdq(x, self.act_scale, self.act_zero_point)
        y = F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.out_scale is None:
            return y
        return _activation_qdq(y, self.out_scale, self.out_zero_point)


def inductor_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` (sharing its tensors) whose int8 modules are their q/dq twins."""
    root = nn.Module()
    for name, mod in gm.named_children():
        if isinstance(mod, Int8Linear):
            mod = QdqLinear(mod)
        elif isinstance(mod, Int8Conv2d):
            mod = QdqConv2d(mod)
        root.add_module(name, mod)
    for name, t in gm.named_buffers(recurse=False):
        root.register_buffer(name, t)
    for name, p in gm.named_parameters(recurse=False):
        root.register_parameter(name, p)
    for node in gm.graph.nodes:  # get_attr on non-tensor attributes (rare: shapes, constants)
        if node.op == "get_attr" and "." not in node.target and not hasattr(root, node.target):
            setattr(root, node.target, getattr(gm, node.target))
    return fx.GraphModule(root, gm.graph, class_name="InductorGraph")


class InductorExecutor:
    """Flat tensors in, flat tensors out: ``inductor_graph(gm)`` under ``torch.compile``.

    Calls run under ``torch.no_grad()`` (an inference runtime, and what freezing needs)
    with Inductor's ``freezing`` set, so a recompile for a new shape freezes too.
    The first call compiles (seconds to a minute: ``compile_s`` in the notes).
    """

    def __init__(self, gm: fx.GraphModule, options: InductorOptions | None = None):
        self.options = options or InductorOptions()
        self.graph = inductor_graph(gm)
        self.compiled = torch.compile(self.graph, mode=self.options.mode, dynamic=self.options.dynamic)
        self.kernels: dict[str, int] = {}

    def __call__(self, *tensors: Any) -> Any:
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=self.options.freezing):
            return self.compiled(*tensors)

    def compile(self, inputs: list[torch.Tensor]) -> dict[str, int]:
        """Compile now on ``inputs``; returns (and keeps in ``kernels``) what Inductor's int8 passes
        matched: ``{"qlinear_weight_prepack_matcher": 37, "qlinear_unary_matcher": 6, ...}``."""
        from torch._dynamo.utils import counters

        before = dict(counters["inductor"])
        self(*inputs)
        self.kernels = {k.removesuffix("_count"): v - before.get(k, 0) for k, v in sorted(counters["inductor"].items())
                        if k.startswith(("qlinear", "qconv")) and k.endswith("_count") and v > before.get(k, 0)}
        return self.kernels

    def __repr__(self) -> str:
        return f"InductorExecutor(mode={self.options.mode}, freezing={self.options.freezing})"
