"""Models with data-dependent branches, shared by the tests and the benchmarks."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["TopKExperts"]


class TopKExperts(nn.Module):
    """Top-``top`` of ``k`` experts chosen per call, written the way the design notes write it.

    ``for i, s in enumerate(scores): if i in top_k: ...`` is one data-dependent
    branch per expert. ``mlp=True`` makes each expert Linear-ReLU-Linear instead
    of one Linear.
    """

    def __init__(self, d: int, k: int = 4, top: int = 2, mlp: bool = False):
        super().__init__()
        self.gate = nn.Linear(d, k)
        self.experts = nn.ModuleList(
            (nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)) if mlp else nn.Linear(d, d)) for _ in range(k))
        self.top = top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.softmax(self.gate(x).mean(0), dim=-1)
        top_k_indices = torch.topk(scores, self.top).indices
        out = torch.zeros_like(x)
        for i, s in enumerate(scores):
            if i in top_k_indices:
                out = out + s * self.experts[i](x)
        return out
