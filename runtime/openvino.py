"""``OvExecutor``: an OpenVINO ``CompiledModel`` (CPU plugin) behind the flat interface.

Like ``OrtExecutor``: flat torch tensors in (the graph's input order), flat
torch tensors out, so a ``CompiledModel`` can swap its fx executor for it::

    ex = OvExecutor("model.onnx", OvOptions(threads=1))
    (hidden,) = ex(input_ids, attention_mask)

OpenVINO reads the ONNX file our exporter wrote (its ONNX frontend), so the
graph it runs is the rewritten one, int8 layers included:

* static int8 layers (``QuantizeLinear``/``DequantizeLinear`` on activations)
  become OpenVINO ``FakeQuantize`` ops, which its low-precision transformations
  run as u8 x i8 kernels;
* dynamic int8 Linears are exported weight-only (``ExportOptions.dynamic_int8_as
  = "weight_only"``: int8 weights, ``DequantizeLinear -> MatMul``): OpenVINO
  recognises compressed weights and quantizes each activation itself, per group
  of ``dynamic_quantization_group_size`` values (finer than our per-tensor
  scale, so at least as accurate). The ``DynamicQuantizeLinear -> MatMulInteger``
  form onnxruntime wants ran in fp32 here (measured on real MiniLM, 1 thread:
  0.88x eager vs 0.66x for the fp32 file), which is why the backend does not use it.

``precision="f32"`` is the default on purpose: on CPUs with bf16 units the
plugin may pick bf16 for float ops, and exact passes must stay within fp32
tolerance of eager.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

# Inputs cross into OpenVINO through numpy exactly as into onnxruntime (same checks, same error).
from autoglm.runtime.onnxruntime import OrtInputError as OvInputError, _to_numpy

__all__ = ["OvOptions", "OvExecutor", "OvInputError", "PRECISIONS"]

PRECISIONS = ("f32", "bf16", "f16")


@dataclass
class OvOptions:
    """How the OpenVINO model is compiled for the CPU plugin.

    ``threads``: ``INFERENCE_NUM_THREADS`` (None: the plugin's default, one per core).
    ``precision``: ``INFERENCE_PRECISION_HINT`` for float ops (``f32`` keeps fp32 parity).
    ``dynamic_quantization_group_size``: activation values sharing one int8 scale in
    layers with compressed (int8) weights; 0 turns dynamic quantization off (the
    weights are then dequantized and the product runs in float).
    ``config``: any other CPU plugin properties, passed as they are.
    """

    threads: int | None = None
    precision: str = "f32"
    dynamic_quantization_group_size: int = 64
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        group = self.dynamic_quantization_group_size
        if not isinstance(group, int) or group < 0:
            raise ValueError(f"dynamic_quantization_group_size must be an integer >= 0, got {group!r}")

    def plugin_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.precision,
                                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(self.dynamic_quantization_group_size)}
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return {**config, **self.config}


class OvExecutor:
    """Runs a model file (ONNX or OpenVINO IR) on OpenVINO's CPU plugin: flat tensors in and out."""

    def __init__(self, path: str | os.PathLike, options: OvOptions | None = None, **kwargs: Any):
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError("the OpenVINO backend needs the openvino package: "
                              "pip install 'open-autoglm[openvino]'") from exc
        if options is None:
            options = OvOptions(**kwargs)
        elif kwargs:
            raise TypeError("pass either an OvOptions or keyword options, not both")
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no model file at {self.path}")
        self.options = options
        self.compiled = ov.Core().compile_model(self.path, "CPU", options.plugin_config())
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, *tensors: Any) -> tuple[torch.Tensor, ...]:
        if len(tensors) != len(self.input_names):
            raise OvInputError(f"{os.path.basename(self.path)} takes {len(self.input_names)} input tensors "
                               f"({', '.join(self.input_names)}), got {len(tensors)}")
        self.request.infer([_to_numpy(t, name) for name, t in zip(self.input_names, tensors)])
        # Copies: the request reuses its output buffers on the next call.
        return tuple(torch.from_numpy(self.request.get_output_tensor(i).data.copy())
                     for i in range(len(self.output_names)))

    def runtime_precisions(self) -> dict[str, int]:
        """``"FullyConnected:u8": 36``: how many runtime ops of each kind run at which precision
        (what the plugin actually picked: int8 kernels show as ``u8``/``i8``)."""
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            key = f"{kind}:{precision}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def __repr__(self) -> str:
        return f"OvExecutor({self.path!r}, threads={self.options.threads}, inputs={self.input_names})"
