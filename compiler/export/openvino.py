"""``backend="openvino"``: the rewritten graph, exported to ONNX, run on OpenVINO's CPU plugin.

The path is the ONNX exporter's (every check it makes, onnxruntime parity
included), then OpenVINO compiles the file and the same parity sets run again
on OpenVINO against the compiled fx graph: fp32 graphs within ``rtol``/``atol``
of it, int8 graphs within the int8 budget (or at least as accurate as our int8
graph against the same graph without activation rounding). A file OpenVINO
computes differently is refused with a one-line ``OnnxParityError``, as for
onnxruntime.

Dynamic int8 Linears go out weight-only (``dynamic_int8_as="weight_only"``, see
``autoglm.runtime.openvino``): OpenVINO then quantizes their activations per
group of ``dynamic_quantization_group_size`` values with its own int8 kernels.
That is finer than our per-tensor scale, so the parity check holds it to being
as accurate as our int8 graph, not equal to it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from typing import Any

import torch

from autoglm.export.onnx.check import resized_like
from autoglm.export.onnx.export import ExportOptions, _int8_budget, export_onnx, parity_check, resolve_options
from autoglm.runtime.openvino import OvExecutor, OvOptions

__all__ = ["attach_openvino"]


def _probe(inputs: list[torch.Tensor], input_names: list[str], axes: dict[str, dict[int, str]],
           seed: int) -> list[torch.Tensor] | None:
    """The inputs grown along each named dynamic axis of the file (same-named axes together)."""
    if not axes:
        return None
    gen = torch.Generator().manual_seed(seed)
    grown: dict[str, int] = {}
    probe = list(inputs)
    for i, name in enumerate(input_names):
        for axis, dim in sorted(axes.get(name, {}).items()):
            x = probe[i]
            size = grown.setdefault(dim, x.shape[int(axis)] + (1 if int(axis) == 0 else 3))
            probe[i] = resized_like(x, int(axis), size, gen)
    return probe


def attach_openvino(cm: Any, threads: int | None = None, *, path: str | os.PathLike | None = None,
                    **opts: Any) -> OvExecutor:
    """Export ``cm``, compile it with OpenVINO and make that its executor.

    ``path``: where the .onnx goes (default: a private temporary directory, removed
    with the executor). Other keywords are ``OvOptions`` fields (``precision``,
    ``dynamic_quantization_group_size``, ``config``) or ``ExportOptions`` fields.
    """
    ov_fields = set(OvOptions.__dataclass_fields__) - {"threads"}
    ov_opts = OvOptions(threads=threads, **{k: v for k, v in opts.items() if k in ov_fields})
    export_kwargs = {"dynamic_int8_as": "weight_only", **{k: v for k, v in opts.items() if k not in ov_fields}}
    export_opts: ExportOptions = resolve_options(None, export_kwargs)
    cleanup = None
    if path is None:
        cleanup = tempfile.mkdtemp(prefix="autoglm-ov-")
        path = os.path.join(cleanup, "model.onnx")
    try:
        result = export_onnx(cm, path, export_opts)
        t0 = time.perf_counter()
        executor = OvExecutor(result.path, ov_opts)
        compile_s = time.perf_counter() - t0
        inputs = [x.detach().cpu() for x in cm.example_inputs]
        records = []
        if export_opts.check:
            probe = _probe(inputs, result.input_names, result.dynamic_axes, export_opts.seed + 7)
            budget = _int8_budget(cm, export_opts) if result.int8 else None
            records = parity_check(cm.graph_module, executor, inputs, probe, export_opts, budget, runtime="openvino")
    except BaseException:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise
    if cleanup:
        weakref.finalize(executor, shutil.rmtree, cleanup, True)
    cm.executor = executor
    cm.notes["openvino"] = {"path": result.path, "threads": threads, "compile_s": compile_s,
                            "precision": ov_opts.precision,
                            "dynamic_quantization_group_size": ov_opts.dynamic_quantization_group_size,
                            "runtime_precisions": executor.runtime_precisions(),
                            "parity": [r.__dict__ for r in records], "export": result.to_json()}
    return executor
