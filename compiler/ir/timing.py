"""Median wall time of a call: the one timing primitive the cost model and kernel choice share."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

__all__ = ["median_seconds", "interleaved_samples"]


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median of ``repeats`` timed calls after one warm-up call (medians resist a noisy machine)."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def interleaved_samples(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each call of each no-argument callable, ``warmup`` untimed rounds first, then
    ``repeats`` rounds calling each once in turn, so a load change on a shared machine hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples
