"""Accuracy metrics shared by the pass manager, passes, runtime, exporter and report."""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["sqnr_from_sums", "sqnr_db"]


def sqnr_from_sums(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` in dB: inf when there is no noise, -inf when there is no signal."""
    if noise == 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> float:
    """Signal-to-quantization-noise ratio of ``actual`` against ``reference`` over all
    floating-point outputs together, in dB (computed in float64)."""
    signal = noise = 0.0
    for r, a in zip(reference, actual):
        if not (isinstance(r, torch.Tensor) and r.is_floating_point()):
            continue
        r64, a64 = r.double(), a.double().to(r.device)
        signal += float((r64**2).sum())
        noise += float(((r64 - a64) ** 2).sum())
    return sqnr_from_sums(signal, noise)
