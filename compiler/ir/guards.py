"""The run-time guard a stitched single-path graph calls at each branch point.

It lives in the IR layer because graphs contain it: the op table that loads
saved graphs (``autoglm.loading.op_table``) must name it without importing the
runtime, and ``autoglm.runtime.replan`` re-exports it.
"""
from __future__ import annotations

from typing import Any

import torch.fx

__all__ = ["GuardFailure", "check_guard"]


class GuardFailure(RuntimeError):
    """A stitched single-path graph was called with an input that takes another path."""


@torch.fx.node.has_side_effect
def check_guard(value: Any, expected: Any, where: str) -> None:
    """A guard in a stitched path graph: fail loudly when the input leaves the path."""
    got = int(value) if isinstance(expected, int) and not isinstance(expected, bool) else bool(value)
    if got != expected:
        raise GuardFailure(f"input leaves this path at {where}: expected {expected!r}, got {got!r}")
