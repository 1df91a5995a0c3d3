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
import time
from typing import Any

import torch

from autoglm.export.onnx.export import (ExportOptions, _int8_budget, _probe_inputs, export_onnx, exported_executor,
                                       parity_check, resolve_options)
from autoglm.runtime.openvino import OvExecutor, OvOptions

__all__ = ["attach_openvino"]


def _probe(inputs: list[torch.Tensor], result: Any, opts: ExportOptions) -> list[torch.Tensor] | None:
    """The onnxruntime check's other-shape inputs (same axes, sizes and seed), for OpenVINO."""
    groups: dict[str, list[int]] = {}  # the file's axis names are the exporter's groups: "batch", "seq"
    for i, name in enumerate(result.input_names):
        for dim in result.dynamic_axes.get(name, {}).values():
            groups.setdefault(dim, []).append(i)
    return _probe_inputs(inputs, groups, torch.Generator().manual_seed(opts.seed + 7))


def attach_openvino(cm: Any, threads: int | None = None, *, path: str | os.PathLike | None = None,
                    **opts: Any) -> OvExecutor:
    """Export ``cm``, compile it with OpenVINO and make that its executor.

    ``path``: where the .onnx goes (default: a private temporary directory, removed
    with the executor). Other keywords are ``OvOptions`` fields (``precision``,
    ``dynamic_quantization_group_size``, ``config``) or ``ExportOptions`` fields.
    """
    ov_fields = set(OvOptions.__dataclass_fields__) - {"threads"}
    ov_opts = OvOptions(threads=threads, **{k: v for k, v in opts.items() if k in ov_fields})
    # int8 weights as int8 (not uint8 + 128): OpenVINO runs static int8 layers as int8 GEMMs then.
    export_kwargs = {"dynamic_int8_as": "weight_only", "weights_uint8": False,
                     **{k: v for k, v in opts.items() if k not in ov_fields}}
    export_opts: ExportOptions = resolve_options(None, export_kwargs)
    timings: dict[str, float] = {}
    records: list[Any] = []

    def compile_and_check(result: Any) -> OvExecutor:
        t0 = time.perf_counter()
        executor = OvExecutor(result.path, ov_opts)
        timings["compile_s"] = time.perf_counter() - t0
        if export_opts.check:
            records.extend(parity_check(cm.graph_module, executor, inputs, _probe(inputs, result, export_opts),
                                        export_opts, _int8_budget(cm, export_opts) if result.int8 else None,
                                        runtime="openvino"))
        return executor

    inputs = [x.detach().cpu() for x in cm.example_inputs]
    executor, result = exported_executor(lambda p: export_onnx(cm, p, export_opts), path, compile_and_check,
                                         prefix="autoglm-ov-")
    cm.executor = executor
    cm.notes["openvino"] = {"path": result.path, "threads": threads, "compile_s": timings["compile_s"],
                            "precision": ov_opts.precision,
                            "dynamic_quantization_group_size": ov_opts.dynamic_quantization_group_size,
                            "runtime_precisions": executor.runtime_precisions(),
                            "parity": [r.__dict__ for r in records], "export": result.to_json()}
    return executor
