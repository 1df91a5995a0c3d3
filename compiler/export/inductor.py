"""``backend="inductor"``: the rewritten graph compiled by Inductor, parity-checked like the ONNX backends.

``autoglm.runtime.inductor`` turns the int8 modules back into the quantize pass's
q/dq math so that Inductor's x86 int8 passes run them as oneDNN int8 GEMMs with
fused epilogues. Compiling happens here, once, on the example inputs; then the
same parity sets as for onnxruntime and OpenVINO run against the compiled fx
graph (example inputs, random sets, and a batch one larger where the graph takes
it): fp32 graphs within ``rtol``/``atol`` (or fp32 noise), int8 graphs within the
int8 budget or at least as accurate as our int8 graph. A compiled graph that
computes differently is refused with a one-line ``OnnxParityError``.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from autoglm.export.onnx.check import OnnxParityError, resized_like
from autoglm.export.onnx.export import ExportOptions, _int8_budget, parity_check
from autoglm.ir.int8 import Int8Conv2d, Int8Linear
from autoglm.loading.file_safety import first_line
from autoglm.runtime.inductor import InductorExecutor, InductorOptions

__all__ = ["attach_inductor", "InductorCompileError", "CHECK_FIELDS"]

# The parity-check fields of ExportOptions that apply here (the rest are ONNX-file options).
CHECK_FIELDS = ("parity_sets", "rtol", "atol", "int8_min_sqnr_db", "int8_margin_db", "check", "seed")


class InductorCompileError(RuntimeError):
    """Inductor failed on the example inputs (no C++ compiler, an op it cannot lower, ...)."""


def _batch_probe(cm: Any, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor] | None:
    """The inputs with one more row where the compiled fx graph takes that (a second shape makes
    Inductor compile its symbolic-size graph, which is then checked too); None otherwise."""
    if not inputs or inputs[0].dim() == 0 or getattr(cm, "dynamic_dims", None) == {}:
        return None  # (dynamic_dims == {}: the model takes only its example's shapes)
    batch = inputs[0].shape[0]
    gen = torch.Generator().manual_seed(seed + 7)
    probe = [resized_like(x, 0, batch + 1, gen) if x.dim() and x.shape[0] == batch else x for x in inputs]
    try:
        with torch.no_grad():
            cm.graph_module(*probe)
    except Exception:  # noqa: BLE001 - the graph is fixed to its example's batch: nothing to probe
        return None
    return probe


def _compile_and_check(cm: Any, inputs: list[torch.Tensor], options: InductorOptions, check: ExportOptions,
                       int8: bool) -> tuple[InductorExecutor, float, list[Any] | Exception]:
    """Compile on the example inputs and run the parity sets; an exception other than a parity
    miss (Inductor failing on the other-shape set) is returned, not raised."""
    executor = InductorExecutor(cm.graph_module, options)
    t0 = time.perf_counter()
    try:
        executor.compile(inputs)
    except Exception as exc:  # noqa: BLE001 - Inductor's errors run to pages: say what failed in one line
        raise InductorCompileError(f"backend='inductor': Inductor could not compile this graph "
                                   f"({first_line(exc)[:300]}); use backend='fx'") from exc
    compile_s = time.perf_counter() - t0
    if not check.check:
        return executor, compile_s, []
    probe = _batch_probe(cm, inputs, check.seed) if options.dynamic is not False else None
    try:
        records = parity_check(cm.graph_module, executor, inputs, probe, check,
                               _int8_budget(cm, check) if int8 else None, runtime="inductor")
    except OnnxParityError:
        raise
    except Exception as exc:  # noqa: BLE001 - Inductor's own failure: the caller retries with fixed sizes
        return executor, compile_s, exc
    return executor, compile_s, records


def attach_inductor(cm: Any, threads: int | None = None, **opts: Any) -> InductorExecutor:
    """Compile ``cm``'s graph with Inductor, check it, and make it ``cm``'s executor.

    Keywords: ``InductorOptions`` fields (``mode``, ``freezing``, ``dynamic``) and the
    parity-check fields of ``ExportOptions`` (``CHECK_FIELDS``). ``threads`` is not an
    Inductor setting: the compiled code uses torch's (``torch.set_num_threads``); it is
    refused so that nobody believes it pinned anything."""
    if threads is not None:
        raise ValueError("backend='inductor' runs on torch's threads: call torch.set_num_threads(n) instead "
                         "of backend_options={'threads': n}")
    fields = set(InductorOptions.__dataclass_fields__)
    unknown = sorted(set(opts) - fields - set(CHECK_FIELDS))
    if unknown:
        raise TypeError(f"unknown inductor backend option(s) {unknown}; valid: "
                        f"{sorted(fields | set(CHECK_FIELDS))}")
    options = InductorOptions(**{k: v for k, v in opts.items() if k in fields})
    check = ExportOptions(**{k: v for k, v in opts.items() if k in CHECK_FIELDS})
    inputs = [x.detach() for x in cm.example_inputs]
    int8 = any(isinstance(m, (Int8Linear, Int8Conv2d)) for m in cm.graph_module.modules())
    executor, compile_s, records = _compile_and_check(cm, inputs, options, check, int8)
    fallback = None
    if isinstance(records, Exception):
        if options.dynamic is not None:
            raise records
        # Inductor failed to compile the graph with symbolic sizes (torch 2.13: its int8 conv
        # lowering asserts on strides with a symbolic batch, found on the digits CNN). Sizes
        # fixed instead: each new shape is compiled on its own (up to Dynamo's recompile limit).
        fallback = f"symbolic-size compile failed ({first_line(records)[:200]})"
        options = replace(options, dynamic=False)
        executor, compile_s, records = _compile_and_check(cm, inputs, options, check, int8)
        if isinstance(records, Exception):
            raise records
    cm.executor = executor
    cm.notes["inductor"] = {"mode": options.mode, "freezing": options.freezing, "dynamic": options.dynamic,
                            "dynamic_fallback": fallback, "compile_s": compile_s, "int8_kernels": executor.kernels,
                            "parity": [r.__dict__ for r in records]}
    return executor
