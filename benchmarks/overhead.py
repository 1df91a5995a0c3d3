"""Runtime overhead of the compiled exact graph vs eager, interleaved, threads pinned.

    python benchmarks/overhead.py [--rounds 30]
"""
from __future__ import annotations

import argparse

from common import interleaved, pin_threads, table
from examples.models import bert_base_encoder, small_cnn, small_transformer

import autoglm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    threads = pin_threads()
    rows = []
    cases = [("small transformer", small_transformer(), 20), ("small cnn", small_cnn(), 20),
             ("bert-base-sized (2 layers, seq 128)", bert_base_encoder(layers=2), 1)]
    for name, (model, inputs), inner in cases:
        cm = autoglm.compile(model, inputs, passes="default")
        t = interleaved({"eager": lambda: model(*inputs), "ours": lambda: cm(*inputs)},
                        rounds=args.rounds, inner=inner)
        rows.append([name, f"{t['eager'] * 1e3:.3f}", f"{t['ours'] * 1e3:.3f}", f"{t['ours'] / t['eager']:.3f}"])
    print(f"threads={threads}, median of {args.rounds} interleaved rounds")
    print(table(rows, ["model", "eager ms", "ours ms", "ours/eager"]))


if __name__ == "__main__":
    main()
