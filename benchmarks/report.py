"""Report generation time and file size for the BERT-base-sized encoder (goal: under 3 s).

    python benchmarks/report.py [--seq 32] [--frontend auto|symbolic|export] [--repeats 3]

Compiles the encoder with partitioning and int8 (whichever of ``partition(k=2)``
and ``quantize(mode=dynamic)`` this build registers), then times
``write_report`` with each layout engine (Graphviz ``dot`` when installed, and
the pure-Python layout), interleaved, and prints medians, the split between
collecting facts and drawing, and the HTML/JSON sizes. Optionally
(``--eager``) also times the report-time eager comparison separately.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import pin_threads
from examples.models import bert_base_encoder

import autoglm
from autoglm.passes import REGISTRY
from autoglm.report import build_report_data, measure_against_eager, write_report
from autoglm.report.layout import dot_available


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--frontend", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="also time measure_against_eager (3 rounds)")
    args = ap.parse_args()
    threads = pin_threads()
    wanted = ["partition(k=2)", "quantize(mode=dynamic)"]
    used = [w for w in wanted if w.split("(")[0] in REGISTRY]
    devices = ["cpu", "cpu"] if "partition(k=2)" in used else ["cpu"]
    model, inputs = bert_base_encoder(seq=args.seq, layers=args.layers)
    t0 = time.perf_counter()
    cm = autoglm.compile(model, inputs, passes=",".join(used) or "none", devices=devices, frontend=args.frontend)
    compile_s = time.perf_counter() - t0
    n_nodes = len(cm.graph_module.graph.nodes)
    print(f"model: BERT-base-sized encoder, {args.layers} layers, seq {args.seq}, frontend {cm.frontend}, "
          f"{n_nodes} nodes, threads {threads}")
    print(f"passes: {','.join(used) or 'none'} (missing from this build: "
          f"{', '.join(w for w in wanted if w not in used) or 'none'}); compile {compile_s:.2f} s")

    engines = (["dot"] if dot_available() else []) + ["python"]
    times: dict[str, list[float]] = {e: [] for e in engines}
    collect: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for engine in engines:  # interleaved so load drifts hit both engines alike
                t0 = time.perf_counter()
                write_report(cm, Path(tmp) / f"{engine}.html", layout=engine)
                times[engine].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            data = build_report_data(cm)
            collect.append(time.perf_counter() - t0)
        print(f"collect facts (build_report_data): median {statistics.median(collect):.3f} s")
        for engine in engines:
            html = Path(tmp) / f"{engine}.html"
            twin = html.with_suffix(".json")
            med = statistics.median(times[engine])
            print(f"write_report layout={engine:6s}: median {med:.3f} s over {args.repeats} "
                  f"({'meets' if med < 3 else 'MISSES'} the 3 s goal); HTML {html.stat().st_size / 1e6:.2f} MB, "
                  f"JSON {twin.stat().st_size / 1e6:.2f} MB")
        print(f"graph: {len(data['graph']['groups'])} collapsible groups, {len(data['graph']['views'])} views, "
              f"top view {len(data['graph']['views'][0]['items'])} boxes")
        if args.eager:
            t0 = time.perf_counter()
            extra = measure_against_eager(cm, model, repeats=3, warmup=1)
            rows = {r["variant"]: r["median_s"] for r in extra["latency"]["rows"]}
            print(f"measure_against_eager: {time.perf_counter() - t0:.2f} s; eager {rows['eager'] * 1e3:.1f} ms, "
                  f"ours {rows['autoglm'] * 1e3:.1f} ms (ratio eager/ours "
                  f"{extra['latency']['speedup_vs_eager']:.2f}); output SQNR "
                  f"{extra['accuracy']['outputs'][0]['sqnr_db']} dB")


if __name__ == "__main__":
    main()
