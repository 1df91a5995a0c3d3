"""``autoglm run OUT --benchmark``: the artifact's latency against the eager model, like ``tvmc run --print-time``.

Both run on the same inputs with the same thread count (``torch.set_num_threads``),
interleaved run by run so a noisy neighbour on a shared machine slows both alike;
each gets ``--warmup`` untimed calls first. Reported: median and p90 in ms.

The eager model is rebuilt only where that is safe and faithful: for ``--hf-model``
artifacts from the copied config and the source folder's unchanged weights
(``autoglm.api.pretrained_eager``); for ``.pt2`` artifacts from the ``.pt2`` file, read
with the same checks as ``autoglm compile``. Otherwise only the artifact is timed, and
the output says why.
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_unflatten

from autoglm.capture.flat import merge_leaves
from autoglm.cli.common import UsageError
from autoglm.ir.timing import interleaved_samples
from autoglm.loading.file_safety import ModelLoadError

__all__ = ["add_flags", "check_flags", "call_from_flat", "saved_inputs", "eager_model", "measure", "human"]


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", action="store_true", help="time the artifact against the eager model "
                   "(on --inputs/--text, else the artifact's saved example inputs)")
    p.add_argument("--repeats", type=int, default=20, metavar="N", help="timed runs of each (--benchmark; default 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed runs first (--benchmark; default 3)")
    p.add_argument("--threads", type=int, metavar="T", help="torch threads for the run (default: torch's)")


def check_flags(args: argparse.Namespace) -> None:
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.benchmark and args.nproc > 1:
        raise UsageError("--benchmark times one process; it does not go with --nproc")


def call_from_flat(cm: Any, flat: list[Any]) -> tuple[tuple, dict]:
    """Flat tensors (graph input order) in the structure the model is called with (keywords for HF models)."""
    sig = cm.signature
    args, kwargs = tree_unflatten(merge_leaves(list(flat), sig.in_positions, sig.in_consts), sig.in_spec)
    return tuple(args), dict(kwargs)


def saved_inputs(cm: Any) -> tuple[tuple, dict]:
    """The artifact's own example inputs, ready to call it with."""
    return call_from_flat(cm, list(cm.example_inputs))


def eager_model(artifact: str, cm: Any, trust_remote_code: bool) -> tuple[Any, str]:
    """``(model or None, what it is / why not)``; see the module docstring."""
    record = cm.config.get("huggingface")
    if isinstance(record, dict):
        from autoglm.api.pretrained_eager import rebuild_eager

        return rebuild_eager(artifact, record, trust_remote_code=trust_remote_code)
    source = cm.config.get("source")
    if isinstance(source, dict) and source.get("kind") == "pt2" and isinstance(source.get("model"), str):
        path = Path(source["model"])
        if not path.is_file():
            return None, f"the .pt2 it was compiled from, {source['model']}, is not there (paths are relative to " \
                         "where autoglm compile ran)"
        from autoglm.loading.model_files import load_model

        try:
            module = load_model(path, trust_remote_code=trust_remote_code).module
            return module, f"the torch.export program in {source['model']}"
        except ModelLoadError as exc:
            return None, f"cannot rebuild it from {source['model']}: {exc}"
    return None, "the artifact records no source autoglm can rebuild the eager model from safely " \
                 "(only --hf-model and .pt2 compiles do)"


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in times_s)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[max(0, math.ceil(0.9 * len(ms)) - 1)],
            "min_ms": ms[0], "runs": len(ms)}


def measure(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median/p90/min ms of each no-argument callable, interleaved call by call."""
    with torch.no_grad():
        times = interleaved_samples(fns, repeats, warmup)
    return {k: _stats(v) for k, v in times.items()}


def human(bench: dict[str, Any]) -> str:
    a = bench["artifact"]
    lines = [f"benchmark: {bench['threads']} thread(s), {bench['repeats']} timed runs after {bench['warmup']} "
             f"warm-up, inputs {bench['inputs']}",
             f"  artifact  median {a['median_ms']:.2f} ms  p90 {a['p90_ms']:.2f} ms  (backend {bench.get('backend', 'fx')})"]
    e = bench.get("eager")
    if e is None:
        lines.append(f"  eager     not measured: {bench['eager_source']}")
    else:
        lines.append(f"  eager     median {e['median_ms']:.2f} ms  p90 {e['p90_ms']:.2f} ms  ({bench['eager_source']})")
        lines.append(f"  speed-up  {bench['speedup']:.2f}x (eager median / artifact median)")
    return "\n".join(lines)
