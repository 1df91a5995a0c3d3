"""Kernel choice per shape bucket, for int8 linears of a graph with dynamic shapes.

A lowered linear's kernel is the fastest exact candidate timed on the layer's input
(``choose_kernel``). On a static graph that input is the only one the layer will
see. On a dynamic graph (batch and sequence symbolic) the layer serves row counts
from one token to thousands, and the winner can change with the row count: on VNNI
CPUs fbgemm's prepacked GEMM wins small matrices and ``torch._int_mm`` large ones.
So the candidates are timed at a bounded set of row counts around the example's
(x1/64, x1/8, x1, x8, x64, capped in size), and when the winners disagree the layer
carries one kernel per row-count bucket (``Int8Linear.kernel_by_rows``), bucket edges
at the geometric midpoints between timed counts. Every candidate computes the same
numbers (exactness is checked per kernel), so a bucket changes speed, never results.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.fx as fx

from autoglm.ir.int8 import MAX_KERNEL_BUCKETS, choose_kernel
from autoglm.ir.meta import output_spec

__all__ = ["timing_rows", "choose_kernel_by_rows"]

_FACTORS = (1 / 64, 1 / 8, 1, 8, 64)
# Largest activation timed (elements): past this a timing run costs seconds on a slow
# int8 path, and the bucket above it uses the largest timed count's winner anyway.
_MAX_TIMED_ELEMENTS = 1 << 22


def timing_rows(x: fx.Node, in_features: int) -> list[int] | None:
    """Row counts to time a dynamic linear at, or None when its rows are fixed (static graph)."""
    node = x
    while output_spec(node) is None and node.op == "call_function" and node.args:  # new smoothing mul
        node = node.args[0]
    spec = output_spec(node)
    if spec is None or not spec.shape or spec.shape[-1] != in_features:
        return None
    if not any(d < len(spec.shape) - 1 for d in spec.dynamic_dims):
        return None
    rows = max(spec.numel // in_features, 1)
    cap = max(_MAX_TIMED_ELEMENTS // in_features, 1)
    counts = sorted({min(max(int(rows * f), 1), cap) for f in _FACTORS} | {min(rows, cap)})
    return counts[:MAX_KERNEL_BUCKETS]


def choose_kernel_by_rows(make: Callable[[str], torch.nn.Module], candidates: tuple[str, ...], rows: list[int],
                          example_rows: int, in_features: int, key: tuple,
                          reference: Callable[[torch.Tensor], torch.Tensor],
                          rejected: dict[str, str]) -> tuple[str | None, list[list[Any]], dict[str, Any]]:
    """(kernel at the example's rows, ``kernel_by_rows`` or [] when one kernel wins everywhere, report).

    ``reference(x)`` is the layer's q/dq simulation on ``x``: each candidate must match it
    at every timed count, as ``choose_kernel`` checks at one.
    """
    winners: list[tuple[int, str]] = []
    timings: dict[int, dict[str, float]] = {}
    gen = torch.Generator().manual_seed(0)
    for r in rows:
        x = torch.randn((r, in_features), generator=gen)
        kernel, times = choose_kernel(make, candidates, x, key + (r,), reference=reference(x), rejected=rejected)
        if kernel is None:
            return None, [], {}
        winners.append((r, kernel))
        timings[r] = times
    at_example = min(winners, key=lambda w: abs(math.log(w[0] / max(example_rows, 1))))[1]
    report: dict[str, Any] = {"timed_at_rows": {r: {k: round(t * 1e6, 1) for k, t in timings[r].items()}
                                                for r in rows}}
    if len({k for _, k in winners}) == 1:
        return at_example, [], report
    buckets: list[list[Any]] = []
    for (r, k), nxt in zip(winners, [*winners[1:], None]):
        bound = r if nxt is None else math.isqrt(r * nxt[0])
        if buckets and buckets[-1][1] == k:
            buckets[-1][0] = bound
        else:
            buckets.append([bound, k])
    return at_example, buckets, report
