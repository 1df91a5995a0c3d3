"""Shared benchmark helpers: pinned threads, interleaved timing, ratio printing."""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, a benchmark's own folder comes first on sys.path, where onnx.py (the
# name the issue asks for) would shadow the real onnx package. Every script imports this
# module first: after it, the repository root is on the path and this folder is not.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]


def pin_threads(n: int | None = None) -> int:
    """Pin intra-op threads (default 1, or $AUTOGLM_BENCH_THREADS): the machine is shared."""
    n = n or int(os.environ.get("AUTOGLM_BENCH_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 20, inner: int = 1,
                warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin so load drifts hit all alike."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def table(rows: list[list[object]], head: list[str]) -> str:
    cells = [head] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells)


def eager_by_microbatch(model: torch.nn.Module, inputs: tuple, microbatches: int) -> torch.Tensor:
    """Eager output computed microbatch by microbatch, as a pipeline computes it.

    The reference for pipeline outputs: conv kernels choose their algorithm by batch
    size, so eager at the full batch differs from eager on its microbatches (GoogLeNet,
    batch 8 vs 4 x 2: 1e-4 absolute, outside ``assert_close``'s defaults).
    """
    size = inputs[0].shape[0] // microbatches
    with torch.no_grad():
        return torch.cat([model(*(t[i:i + size] for t in inputs)) for i in range(0, inputs[0].shape[0], size)])
