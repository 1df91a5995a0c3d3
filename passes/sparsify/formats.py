"""Choose how one masked linear layer runs, by measuring it (helper of ``sparsify``).

Candidates for a masked ``(out, in)`` weight:

- ``dense``: a plain ``nn.Linear`` holding the zeros (dense-with-zeros); always
  available, the baseline every other format is judged against;
- ``csr``: ``CsrLinear`` (``torch.sparse_csr`` x dense, MKL on CPU);
- ``bsr``: ``BsrLinear`` with 16x16 blocks; only tried when at most half of
  the blocks hold a non-zero (an unstructured mask fills nearly every block);
- ``semi_structured``: ``to_sparse_semi_structured`` for 2:4 masks on CUDA.

Each candidate runs on the layer's real input (interleaved with dense, median
of repeats). Score (lower is better), weights configurable, defaults 0.4/0.3/0.3
as in the design notes::

    score = w_lat * latency / latency_dense
          + w_mem * memory  / memory_dense
          + w_acc * min(rel_error / max_rel_error, 1)

A sparse format is eligible only if it measured at least ``min_speedup``
times faster than dense and its output error is within ``max_rel_error``; so the
pass never picks a format that measured slower than dense on the target.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn

from autoglm.ir.sparse_modules import BsrLinear, CsrLinear, SemiStructuredLinear, stored_bytes

__all__ = ["FORMATS", "FormatChoice", "candidate_modules", "measure_modules", "choose_format", "select_format",
           "dense_linear"]

FORMATS = ("dense", "csr", "bsr", "semi_structured")
BSR_BLOCK = 16


@dataclass
class FormatChoice:
    format: str
    latency_s: dict[str, float]
    memory_bytes: dict[str, int]
    rel_error: dict[str, float]
    scores: dict[str, float]
    rejected: dict[str, str] = field(default_factory=dict)  # format -> why it was not eligible

    def to_tag(self) -> dict:
        """JSON-able summary for ``tags["sparse"]`` and the report."""
        return {
            "format": self.format,
            "latency_ms": {k: round(v * 1e3, 4) for k, v in self.latency_s.items()},
            "memory_bytes": dict(self.memory_bytes),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "rejected": dict(self.rejected),
        }


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A fresh ``nn.Linear`` holding copies of ``weight``/``bias`` (never the user's tensors)."""
    out_f, in_f = weight.shape
    lin = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _module_bytes(mod: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(mod.parameters()) + list(mod.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += stored_bytes(t)
    return total


def _block_density(weight: torch.Tensor, block: int) -> float:
    out_f, in_f = weight.shape
    blocks = weight.reshape(out_f // block, block, in_f // block, block).ne(0).any(dim=3).any(dim=1)
    return float(blocks.float().mean())


def candidate_modules(weight: torch.Tensor, bias: torch.Tensor | None, allowed: Sequence[str],
                      nm: tuple[int, int] | None) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Build every allowed format for a masked weight; returns (modules, rejected-with-reason)."""
    mods: dict[str, nn.Module] = {"dense": dense_linear(weight, bias)}
    rejected: dict[str, str] = {}
    out_f, in_f = weight.shape
    if "csr" in allowed:
        mods["csr"] = CsrLinear.from_dense(weight, bias)
    if "bsr" in allowed:
        if out_f % BSR_BLOCK or in_f % BSR_BLOCK:
            rejected["bsr"] = f"shape {tuple(weight.shape)} not a multiple of {BSR_BLOCK}"
        elif _block_density(weight, BSR_BLOCK) > 0.5:
            rejected["bsr"] = f"mask not block-sparse ({_block_density(weight, BSR_BLOCK):.0%} of blocks non-empty)"
        else:
            mods["bsr"] = BsrLinear.from_dense(weight, bias, BSR_BLOCK)
    if "semi_structured" in allowed:
        if not weight.is_cuda:
            rejected["semi_structured"] = "2:4 semi-structured kernels are CUDA-only"
        elif nm != (2, 4):
            rejected["semi_structured"] = "needs a 2:4 mask"
        else:
            try:
                mods["semi_structured"] = SemiStructuredLinear.from_dense(weight, bias)
            except (RuntimeError, ValueError) as exc:  # GPU without sparse tensor cores, odd shapes
                rejected["semi_structured"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return mods, rejected


def measure_modules(mods: dict[str, nn.Module], x: torch.Tensor | dict[str, torch.Tensor], repeats: int = 5,
                    clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median latency of each module on ``x`` (or on ``x[name]``), run interleaved so load swings hit all alike."""
    xs = x if isinstance(x, dict) else {k: x for k in mods}
    sync = torch.cuda.synchronize if any(v.is_cuda for v in xs.values()) else (lambda: None)
    samples: dict[str, list[float]] = {k: [] for k in mods}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for k, m in mods.items():
            outputs[k] = m(xs[k])  # warm-up, and the output for the accuracy check
        sync()
        for _ in range(max(1, repeats)):
            for k, m in mods.items():
                t0 = clock()
                m(xs[k])
                sync()
                samples[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}, outputs


def choose_format(latency_s: dict[str, float], memory_bytes: dict[str, int], rel_error: dict[str, float],
                  weights: Sequence[float] = (0.4, 0.3, 0.3), min_speedup: float = 1.1,
                  max_rel_error: float = 1e-2, rejected: dict[str, str] | None = None) -> FormatChoice:
    """Pick the lowest-scoring eligible format; ``dense`` must be among the measurements."""
    if "dense" not in latency_s:
        raise ValueError("choose_format needs the dense measurement as the baseline")
    w_lat, w_mem, w_acc = weights
    rejected = dict(rejected or {})
    scores: dict[str, float] = {}
    for fmt, lat in latency_s.items():
        err = rel_error.get(fmt, 0.0)
        scores[fmt] = (w_lat * lat / latency_s["dense"] + w_mem * memory_bytes[fmt] / memory_bytes["dense"]
                       + w_acc * min(err / max_rel_error, 1.0))
        if fmt == "dense":
            continue
        speedup = latency_s["dense"] / lat if lat > 0 else float("inf")
        if speedup < min_speedup:
            rejected[fmt] = f"measured {speedup:.2f}x vs dense (needs >= {min_speedup:.2f}x)"
        elif err > max_rel_error:
            rejected[fmt] = f"relative error {err:.1e} > {max_rel_error:.0e}"
    eligible = [f for f in scores if f == "dense" or f not in rejected]
    best = min(eligible, key=lambda f: (scores[f], f != "dense"))
    return FormatChoice(best, dict(latency_s), dict(memory_bytes), dict(rel_error), scores, rejected)


def select_format(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, allowed: Sequence[str],
                  nm: tuple[int, int] | None, weights: Sequence[float], repeats: int, min_speedup: float,
                  max_rel_error: float) -> tuple[FormatChoice, nn.Module]:
    """Build, measure and score the candidates; returns the choice and its module."""
    mods, rejected = candidate_modules(weight, bias, allowed, nm)
    if len(mods) == 1:  # nothing to compare: skip the timing
        return FormatChoice("dense", {}, {"dense": _module_bytes(mods["dense"])}, {}, {"dense": 0.0},
                            rejected), mods["dense"]
    latency, outputs = measure_modules(mods, x, repeats)
    ref = outputs["dense"].double()
    denom = float(ref.norm()) or 1.0
    rel_error = {k: float((o.double() - ref).norm()) / denom for k, o in outputs.items()}
    memory = {k: _module_bytes(m) for k, m in mods.items()}
    choice = choose_format(latency, memory, rel_error, weights, min_speedup, max_rel_error, rejected)
    return choice, mods[choice.format]
