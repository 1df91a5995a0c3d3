"""How many bytes a graph's weights take: each stored tensor once.

Per-node ``param_bytes`` counts a weight at its ``get_attr`` and again at each
node that reads it, so summing it over nodes gave twice the model's size (173 MiB
for all-MiniLM-L6-v2's 87 MiB). This counts storages, as the saved file does.
"""
from __future__ import annotations

import torch

__all__ = ["state_bytes", "format_bytes"]


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers, a storage shared by several names counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def format_bytes(n: float) -> str:
    """``87.1 MiB``, ``512 KiB``, ``96 B``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
