"""Median wall time of a call: the one timing primitive the cost model and kernel choice share."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

__all__ = ["median_seconds"]


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median of ``repeats`` timed calls after one warm-up call (medians resist a noisy machine)."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)
