"""A model calling a function marked ``torch.fx.wrap``: its graph names user code."""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn


def scaled_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x) * 1.5


torch.fx.wrap("scaled_gelu")


class UsesWrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_gelu(self.lin(x))
