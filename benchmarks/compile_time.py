"""Compile time of the BERT-base-sized encoder: ours per stage vs inductor's first call.

    python benchmarks/compile_time.py [--layers 12] [--seq 128]

Ours = capture + annotation (shapes, FLOPs, bytes, analytic cost) + the default
exact passes, the work ``autoglm.compile`` does. Inductor = the first call of
``torch.compile(model)`` (its compile happens there), minus one eager call.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch._dynamo

from common import pin_threads
from examples.models import bert_base_encoder

import autoglm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--skip-inductor", action="store_true")
    args = ap.parse_args()
    threads = pin_threads()
    model, inputs = bert_base_encoder(layers=args.layers, seq=args.seq)
    autoglm.cost.model.machine_profile()  # measured once per machine and cached on disk; not compile work
    with torch.no_grad():
        model(*inputs)
        t0 = time.perf_counter()
        model(*inputs)
        eager = time.perf_counter() - t0
    t0 = time.perf_counter()
    cm = autoglm.compile(model, inputs, passes="default")
    ours = time.perf_counter() - t0
    t = cm.notes["timings"]
    print(f"BERT-base-sized encoder: {args.layers} layers, seq {args.seq}, {len(cm.graph_module.graph.nodes)} nodes, "
          f"threads={threads}")
    print(f"ours: capture {t['capture_s']:.2f} s, annotate {t['annotate_s']:.2f} s, passes {t['passes_s']:.2f} s, "
          f"total {ours:.2f} s")
    if args.skip_inductor:
        return
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad():
        t0 = time.perf_counter()
        compiled(*inputs)
        inductor = time.perf_counter() - t0 - eager
    print(f"inductor first call (compile): {inductor:.2f} s")
    print(f"ratio ours / inductor: {ours / inductor:.3f}")


if __name__ == "__main__":
    main()
