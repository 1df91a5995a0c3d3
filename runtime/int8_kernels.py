"""int8 kernels for runtime code: a re-export of ``autoglm.ir.int8``.

The adapter over ``torch.ao`` / ``torch.ops.quantized`` / ``torch._int_mm``
lives in ``autoglm.ir.int8`` because the quantize passes (which may import only
``autoglm.ir`` and ``autoglm.cost.model``) build these modules; runtime code imports
them from here so the architecture table ("runtime: int8 kernel adapters")
holds. There is exactly one implementation.
"""
from __future__ import annotations

from autoglm.ir.int8 import (
    CONV_KERNELS,
    LINEAR_KERNELS,
    QDQ,
    Int8Conv2d,
    Int8Embedding,
    Int8Linear,
    choose_kernel,
    dequantize_weight,
    kernel_exact,
    quantize_weight,
)

__all__ = ["CONV_KERNELS", "LINEAR_KERNELS", "QDQ", "Int8Conv2d", "Int8Embedding", "Int8Linear", "choose_kernel",
           "dequantize_weight", "kernel_exact", "quantize_weight"]
