"""onnxruntime latency: our int8 export vs onnxruntime's own ``quantize_dynamic``.

    .venv/bin/python benchmarks/onnx.py [--layers 4 --hidden 256 --seq 128 --repeats 200]

One run, all variants interleaved round by round (a loaded 2-core machine
drifts) in a fresh random order each round (whoever runs after the large fp32
model finds the caches full of its weights), one intra-op thread each. Prints per variant: median latency, ratio to ORT's
``quantize_dynamic`` (ratio of medians, and the median of the per-round ratios,
which cancels drift between rounds), cosine of the output vs the fp32 export, the
share of quantized matmuls onnxruntime ran as int8 kernels, and the ``Add`` nodes
left in onnxruntime's optimised graph (a bias not folded into an int8 kernel
shows up here). ``ort_int8_again`` is a second session of ORT's file: its
ratio is the noise floor of the run. Not a timed test.
"""
from __future__ import annotations

import common  # noqa: F401  (first: keeps this folder, and so this file, from shadowing onnx)

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import autoglm  # noqa: E402
from autoglm.export.onnx.check import int8_kernel_report  # noqa: E402
from autoglm.runtime.onnxruntime import OrtExecutor  # noqa: E402
from examples.models import TransformerEncoder, _init  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset of both exports (20 has a Gelu op)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _init(TransformerEncoder(vocab=8000, hidden=args.hidden, heads=args.hidden // 64, ffn=4 * args.hidden,
                                     layers=args.layers, max_len=512, classes=4), 0)
    ids = torch.randint(0, 8000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    out = Path(tempfile.mkdtemp(prefix="autoglm-bench-onnx-"))
    t0 = time.perf_counter()
    autoglm.compile(model, (ids,), passes="none").export_onnx(out / "fp32.onnx", dynamic=False, opset=args.opset)
    fp32_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cm8 = autoglm.compile(model, (ids,), passes="quantize(mode=dynamic,progress=False)")
    ours = cm8.export_onnx(out / "ours_int8.onnx", dynamic=False, opset=args.opset)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_dynamic(str(out / "fp32.onnx"), str(out / "ort_int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    ort_s = time.perf_counter() - t0
    # Noise floor: a second session of ORT's int8 file (ort_int8_again), timed like the
    # others; its ratio to ort_int8 is how far apart two identical models measure here.
    # Sessions are created with fp32 last: in A/B runs the last-created of several
    # identical sessions ran up to ~0.7% faster, and fp32 is not a compared pair.
    files = {"ort_int8": "ort_int8", "ours_int8": "ours_int8", "ort_int8_again": "ort_int8", "fp32": "fp32"}
    created = {name: OrtExecutor(out / f"{file}.onnx", threads=1, allow_spinning=False)
               for name, file in files.items()}
    variants = {name: created[name] for name in ("fp32", "ours_int8", "ort_int8", "ort_int8_again")}
    ref = variants["fp32"](ids)[0]
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for ex in variants.values():  # warm-up: first-run allocations are not latency
        ex(ids)
    order = random.Random(0)
    for _ in range(args.repeats):
        # A fresh random order each round: whoever runs right after the large fp32
        # model finds the caches full of its weights, so no variant may always
        # be that one (a fixed or simply reversed order put ours there every round).
        order.shuffle(names)
        for name in names:
            t = time.perf_counter()
            variants[name](ids)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["ort_int8"])
    print(f"model: {args.layers} layers, hidden {args.hidden}, seq {args.seq}, batch {args.batch}, opset {args.opset}; "
          f"1 thread, {args.repeats} interleaved rounds")
    print(f"export/quantize time: fp32 export {fp32_s:.1f}s, ours (compile+quantize+export+checks) {ours_s:.1f}s, "
          f"ORT quantize_dynamic {ort_s:.1f}s")
    print("parity of our int8 export vs our compiled int8 model: "
          + ", ".join(f"{p.inputs} {p.sqnr_db:.1f} dB" for p in ours.parity))
    print(f"{'variant':<14} {'median ms':>10} {'vs ORT int8':>12} {'paired':>8} {'cosine vs fp32':>15} "
          f"{'int8 share':>11} {'Add ops':>8}")
    for name, ex in variants.items():
        med = statistics.median(times[name])
        paired = statistics.median(a / b for a, b in zip(times[name], times["ort_int8"]))
        y = ex(ids)[0]
        cos = float(torch.nn.functional.cosine_similarity(y.flatten().double(), ref.flatten().double(), dim=0))
        report = int8_kernel_report(out / f"{name.removesuffix('_again')}.onnx", threads=1)
        share = report["share"] if name != "fp32" else None
        print(f"{name:<14} {med * 1e3:>10.2f} {med / base:>12.3f} {paired:>8.3f} {cos:>15.6f} "
              f"{'-' if share is None else f'{share:.0%}':>11} {report['op_counts'].get('Add', 0):>8}")


if __name__ == "__main__":
    main()
