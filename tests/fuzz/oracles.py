"""Oracles: what must hold for a generated model under each configuration.

Exact configurations (no passes, default pipeline, split_merge, partition with
K = 2..4, their chain, the multi-device runtime, ONNX export in onnxruntime)
must ``assert_close`` to eager with default fp32 tolerances. Lossy ones check the
pass's accuracy budget: int8 output SQNR >= 25 dB, the budget the config asks for. The pass manager runs the verifier after every
pass (``verify=True`` also compares each pass's outputs with the graph before it).
Configurations marked ``roundtrip`` also save the compiled model (a branching
``Program`` included), load it back and expect the same outputs.
A configuration whose pass is not registered in this build is skipped.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import autoglm
from autoglm.ir.pass_manager import sqnr_db
from autoglm.passes import REGISTRY

__all__ = ["Config", "CONFIGS", "available_configs", "run_config", "eager_reference"]


@dataclass(frozen=True)
class Config:
    name: str
    passes: str
    devices: int = 1
    needs: tuple[str, ...] = ()  # registered passes this configuration needs
    exact: bool = True
    min_sqnr_db: float = 25.0
    onnx: bool = False
    roundtrip: bool = False  # save + autoglm.load give the same outputs
    backend: str = "fx"  # "onnxruntime": compiled with that backend (branching programs per segment)


CONFIGS: list[Config] = [
    Config("none", "none"),
    Config("default", "default"),
    Config("default-2dev", "default", devices=2, roundtrip=True),
    Config("split_merge", "split_merge", devices=2, needs=("split_merge",)),
    Config("partition-k2", "partition(k=2,fewer_ok=True)", devices=2, needs=("partition",)),
    Config("partition-k3", "partition(k=3,fewer_ok=True)", devices=3, needs=("partition",)),
    Config("partition-k4", "partition(k=4,contiguous=True,fewer_ok=True)", devices=4, needs=("partition",),
           roundtrip=True),
    Config("split_merge+partition", "split_merge,partition(k=2,fewer_ok=True)", devices=2, needs=("split_merge", "partition")),
    Config("onnx", "default", onnx=True),
    Config("onnxruntime-backend", "default", backend="onnxruntime"),
    # The pass's own promise: output SQNR >= 25 dB on its calibration data (the example
    # inputs), layers kept fp32 where needed. Without a budget there is no promise to check:
    # a LayerNorm over 2 features after an int8 Linear turns rounding into sign flips
    # (seed 8865: 12.4 dB unbudgeted, 56 dB with the budget).
    Config("quantize-dynamic", "quantize(mode=dynamic,progress=False,max_error=25,metric='sqnr')",
           needs=("quantize",), exact=False, roundtrip=True),
]


def available_configs() -> list[Config]:
    out = []
    for c in CONFIGS:
        if not all(n in REGISTRY for n in c.needs):
            continue
        if c.onnx or c.backend == "onnxruntime":
            try:
                import autoglm.export.onnx.export  # noqa: F401
            except ImportError:
                continue
        out.append(c)
    return out


def _flat(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def eager_reference(model: torch.nn.Module, inputs: tuple) -> tuple[torch.Tensor, ...] | None:
    """Eager outputs, or None when they are non-finite or nondeterministic (case skipped)."""
    with torch.no_grad():
        a = _flat(model(*inputs))
        b = _flat(model(*inputs))
    for x, y in zip(a, b):
        if not torch.isfinite(x).all() or not torch.equal(x, y):
            return None
    return a


def run_config(config: Config, model: torch.nn.Module, inputs: tuple, reference: tuple) -> None:
    """Raise AssertionError (or the compiler's error) when the oracle does not hold."""
    cm = autoglm.compile(model, inputs, passes=config.passes, devices=["cpu"] * config.devices,
                         verify=config.exact, backend=config.backend)
    if config.backend == "onnxruntime":  # onnxruntime's kernels: the ONNX oracle's tolerance
        _parity_vs_eager(model, cm, inputs)
        return
    with torch.no_grad():
        got = _flat(cm(*inputs))
    if config.exact:
        assert len(got) == len(reference), f"{len(got)} outputs, expected {len(reference)}"
        for g, r in zip(got, reference):
            torch.testing.assert_close(g, r)
    else:
        s = sqnr_db(reference, got)
        assert s >= config.min_sqnr_db, f"SQNR {s:.1f} dB < {config.min_sqnr_db} dB"
    if config.onnx:
        _check_onnx(cm, model, inputs)
    if config.roundtrip:
        _check_roundtrip(cm, inputs, got)


def _check_roundtrip(cm: Any, inputs: tuple, got: tuple[torch.Tensor, ...]) -> None:
    """The saved and reloaded model computes what the compiled one did (same graph, same kernels)."""
    with tempfile.TemporaryDirectory() as tmp:
        cm.save(Path(tmp) / "artifact")
        loaded = autoglm.load(Path(tmp) / "artifact")
        with torch.no_grad():
            again = _flat(loaded(*inputs))
    assert len(again) == len(got), f"reloaded model returns {len(again)} outputs, expected {len(got)}"
    for a, g in zip(again, got):
        torch.testing.assert_close(a, g)


def _parity_vs_eager(model: torch.nn.Module, run: Callable[..., Any], inputs: tuple) -> None:
    """``run`` (onnxruntime underneath) against eager: rtol 1e-3 / atol 1e-5, or within
    fp32 rounding noise of the float64 result where the computation is ill-conditioned."""
    import copy

    from autoglm.export.onnx.check import run_parity

    model64 = copy.deepcopy(model).double()
    run_parity(lambda *x: model(*x), run, [("fuzz", list(inputs))], 1e-3, 1e-5,
               reference64=lambda *x: model64(*x))


def _check_onnx(cm: Any, model: torch.nn.Module, inputs: tuple) -> None:
    """Export (which checks itself against the compiled model) and run the file in onnxruntime against eager."""
    from autoglm.runtime.onnxruntime import OrtExecutor, OrtPathsExecutor

    with tempfile.TemporaryDirectory() as tmp:
        result = cm.export_onnx(Path(tmp) / "model.onnx")
        manifest = getattr(result, "manifest", None)
        ort_run = (OrtPathsExecutor(manifest, threads=1) if manifest else
                   OrtExecutor(Path(tmp) / "model.onnx", threads=1))
        _parity_vs_eager(model, ort_run, inputs)
