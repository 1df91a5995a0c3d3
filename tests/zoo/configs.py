"""The zoo's configurations: each runs one model one way and says how it went.

Every configuration has a baseline that does the same job with plain PyTorch
tooling on the same model (``torch.export`` for capture and save/load,
``torch.onnx.export`` for ONNX, ``torch.compile(backend="eager")`` for the
backend). A failure the baseline shares is reported as ``shared`` with the
baseline's reason, so it is visible but not counted against us; a failure
where the baseline passes is ``fail``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["Outcome", "CONFIGS", "run_config"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    status: str  # "pass", "fail" (baseline passes), "shared" (baseline fails too)
    detail: str = ""  # a metric for a pass, the one-line reason for a failure
    seconds: float = 0.0


def _one_line(exc: BaseException) -> str:
    """The line that says what went wrong (torch.onnx puts it under "Exception summary")."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if "## Exception summary" in lines and lines[-1] != "## Exception summary":
        lines = lines[lines.index("## Exception summary") + 1:]
    elif len(lines) > 1 and lines[0].endswith(":"):
        lines = [f"{lines[0]} {lines[1]}"]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _assert_parity(out: Any, ref: Any) -> None:
    """Same output type and every tensor within ``assert_close`` defaults of eager."""
    if type(out) is not type(ref):
        raise AssertionError(f"output type {type(out).__name__}, eager gives {type(ref).__name__}")
    got, want = _tensors(out), _tensors(ref)
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} output tensors, eager gives {len(want)}")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def _eager(model: torch.nn.Module, kwargs: dict) -> Any:
    with torch.no_grad():
        return model(**kwargs)


# --- ours ---------------------------------------------------------------------

def _compiled(passes: str, devices: list[str] | None = None) -> Callable:
    def check(model, kwargs, ref, workdir):
        import autoglm

        cm = autoglm.compile(model, kwargs, passes=passes, devices=devices)
        with torch.no_grad():
            _assert_parity(cm(**kwargs), ref)
        return f"frontend {cm.frontend}"
    return check


def _int8_dynamic(model, kwargs, ref, workdir):
    import autoglm
    from autoglm.ir.metrics import sqnr_db

    # dynamic_convs=True: the vision models (ResNet has no Linear) keep testing int8 convolutions
    cm = autoglm.compile(model, kwargs, passes="quantize(mode=dynamic, dynamic_convs=True)")
    with torch.no_grad():
        out = cm(**kwargs)
    got, want = _tensors(out), _tensors(ref)
    if type(out) is not type(ref) or len(got) != len(want):
        raise AssertionError("int8 model changed the output structure")
    db = sqnr_db(want, got)
    layers = sum(1 for _, m in cm.graph_module.named_modules() if type(m).__name__.startswith("Int8"))
    if layers == 0:
        raise AssertionError("no layer was quantized")
    return f"SQNR {db:.1f} dB, {layers} int8 layers"


def _onnx_ours(model, kwargs, ref, workdir):
    import autoglm

    cm = autoglm.compile(model, kwargs, passes="default")
    path = Path(workdir) / "ours.onnx"
    cm.export_onnx(path)  # raises when its own parity check fails
    _ort_parity(path, _tensors(ref), list(kwargs.values()))
    return "onnxruntime parity"


def _ort_parity(path: Path, want: list[torch.Tensor], inputs: list[torch.Tensor]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feeds)
    if len(got) != len(want):
        raise AssertionError(f"{len(got)} ONNX outputs, eager gives {len(want)}")
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-5)


# A fresh interpreter loads what the first one saved: nothing of the model's
# module is imported there unless loading imports it.
_FRESH = r"""
import sys, torch
from torch.utils._pytree import tree_flatten
kind, path, data = sys.argv[1:4]
saved = torch.load(data, weights_only=True)
if kind == "ours":
    import autoglm
    m = autoglm.load(path)
else:
    m = torch.export.load(path).module()
with torch.no_grad():
    out = m(**saved["inputs"])
got = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
assert type(out).__name__ == saved["type"], f"output type {type(out).__name__}, eager gives {saved['type']}"
assert len(got) == len(saved["outputs"]), f"{len(got)} outputs, eager gives {len(saved['outputs'])}"
for g, w in zip(got, saved["outputs"]):
    torch.testing.assert_close(g, w)
"""


def _fresh_process(kind: str, path: Path, kwargs: dict, ref: Any, workdir: str) -> None:
    data = Path(workdir) / f"{kind}-expected.pt"
    torch.save({"inputs": kwargs, "outputs": _tensors(ref), "type": type(ref).__name__}, data)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", _FRESH, kind, str(path), str(data)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=workdir)
    if proc.returncode:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(f"fresh-process load: {lines[-1][:200] if lines else proc.returncode}")


def _save_load_ours(model, kwargs, ref, workdir):
    import autoglm

    cm = autoglm.compile(model, kwargs, passes="default")
    path = Path(workdir) / "artifact"
    cm.save(path)
    _fresh_process("ours", path, kwargs, ref, workdir)
    return "fresh-process parity"


def _torch_compile_ours(model, kwargs, ref, workdir):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="autoglm")
    with torch.no_grad():
        _assert_parity(compiled(**kwargs), ref)
    return "parity"


# --- baselines ------------------------------------------------------------------

def _export_baseline(model, kwargs, ref, workdir):
    ep = torch.export.export(model, (), kwargs, strict=False)
    with torch.no_grad():
        _assert_parity(ep.module()(**kwargs), ref)
    return ""


def _onnx_baseline(model, kwargs, ref, workdir):
    path = Path(workdir) / "baseline.onnx"
    torch.onnx.export(model, (), str(path), kwargs=kwargs, dynamo=True, verbose=False)
    _ort_parity(path, _tensors(ref), list(kwargs.values()))
    return ""


def _save_load_baseline(model, kwargs, ref, workdir):
    path = Path(workdir) / "baseline.pt2"
    torch.export.save(torch.export.export(model, (), kwargs, strict=False), path)
    _fresh_process("baseline", path, kwargs, ref, workdir)
    return ""


def _torch_compile_baseline(model, kwargs, ref, workdir):
    torch._dynamo.reset()
    with torch.no_grad():
        _assert_parity(torch.compile(model, backend="eager")(**kwargs), ref)
    return ""


# name -> (ours, baseline)
CONFIGS: dict[str, tuple[Callable, Callable]] = {
    "none": (_compiled("none"), _export_baseline),
    "default-2dev": (_compiled("default", ["cpu", "cpu"]), _export_baseline),
    "int8-dynamic": (_int8_dynamic, _export_baseline),
    "onnx": (_onnx_ours, _onnx_baseline),
    "save-load": (_save_load_ours, _save_load_baseline),
    "torch.compile": (_torch_compile_ours, _torch_compile_baseline),
}


def run_config(name: str, model: torch.nn.Module, kwargs: dict) -> Outcome:
    """Run configuration ``name``; on failure run its baseline to tell ours from shared."""
    ours, baseline = CONFIGS[name]
    ref = _eager(model, kwargs)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoglm-zoo-") as workdir:
        try:
            detail = ours(model, kwargs, ref, workdir)
            return Outcome("pass", detail, time.perf_counter() - t0)
        except Exception as exc:  # any failure is a finding; keep its one line
            reason = _one_line(exc)
        seconds = time.perf_counter() - t0
        try:
            baseline(model, kwargs, ref, workdir)
        except Exception as exc:
            return Outcome("shared", f"{reason} | baseline: {_one_line(exc)}", seconds)
    return Outcome("fail", reason, seconds)
