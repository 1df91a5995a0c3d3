"""Measurements taken at report time, for ``write_report(cm, path, extra=...)``.

Latency of ours against eager and per-output accuracy need the eager model,
which the compiled model does not keep; ``measure_against_eager`` takes it and
returns the ``extra`` dict the report understands::

    extra = measure_against_eager(cm, model)
    write_report(cm, "report.html", extra=extra)

Runs are interleaved (eager, ours, eager, ours...) so a noisy shared machine
slows both alike; the medians and their ratio are reported.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from autoglm.capture.flat import merge_leaves
from autoglm.ir.metrics import sqnr_db

__all__ = ["measure_against_eager", "output_accuracy", "user_inputs"]


def user_inputs(cm: Any) -> tuple[tuple, dict]:
    """The user-level ``(args, kwargs)`` the compiled model was captured with."""
    sig = cm.signature
    leaves = merge_leaves(list(cm.example_inputs), sig.in_positions, sig.in_consts)
    args, kwargs = tree_unflatten(leaves, sig.in_spec)
    return tuple(args), dict(kwargs)


def output_accuracy(reference: Any, actual: Any) -> list[dict[str, Any]]:
    """Per floating-point output: max abs error, SQNR (dB), cosine similarity, assert_close verdict."""
    ref_leaves, _ = tree_flatten(reference)
    act_leaves, _ = tree_flatten(actual)
    rows = []
    for i, (r, a) in enumerate(zip(ref_leaves, act_leaves)):
        if not (isinstance(r, torch.Tensor) and isinstance(a, torch.Tensor)) or not r.is_floating_point():
            continue
        r64, a64 = r.detach().double().flatten(), a.detach().double().flatten()
        sqnr = sqnr_db([r64], [a64])
        cos = float(torch.nn.functional.cosine_similarity(r64, a64, dim=0)) if r64.numel() else 1.0
        try:
            torch.testing.assert_close(a, r)
            close = True
        except AssertionError:
            close = False
        rows.append({"output": str(i), "shape": "x".join(map(str, r.shape)),
                     "max_abs_error": float((r64 - a64).abs().max()) if r64.numel() else 0.0,
                     "sqnr_db": sqnr, "cosine": cos, "assert_close": close})
    return rows


def _median_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def measure_against_eager(cm: Any, model: torch.nn.Module, args: tuple | None = None, kwargs: dict | None = None,
                          repeats: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Latency (eager vs ours, medians of interleaved runs) and per-output accuracy on the example inputs."""
    if args is None and kwargs is None:
        args, kwargs = user_inputs(cm)
    args, kwargs = tuple(args or ()), dict(kwargs or {})
    with torch.no_grad():
        reference = model(*args, **kwargs)
        ours = cm(*args, **kwargs)
        medians = _median_interleaved({"eager": lambda: model(*args, **kwargs), "autoglm": lambda: cm(*args, **kwargs)},
                                      repeats, warmup)
    rows = [{"variant": k, "median_s": v, "repeats": repeats} for k, v in medians.items()]
    return {
        "latency": {"rows": rows, "speedup_vs_eager": medians["eager"] / medians["autoglm"],
                    "threads": torch.get_num_threads()},
        "accuracy": {"outputs": output_accuracy(reference, ours)},
    }
