"""``OrtExecutor``: an ONNX Runtime ``InferenceSession`` behind the flat interface.

The compiled graph takes a flat tuple of tensors and returns a flat tuple of
tensors; this executor does the same for an exported ``.onnx`` file, so a
``CompiledModel`` can swap its fx executor for it without anything else
changing::

    ex = OrtExecutor("model.onnx", OrtOptions(threads=1))
    (logits,) = ex(input_ids, attention_mask)      # torch in, torch out

Inputs go in positionally, in the graph's input order (the same order as the
flat graph's placeholders, because the exporter keeps it). Tensors cross the
boundary through numpy (a zero-copy view for contiguous CPU tensors), so dtypes
numpy lacks (bfloat16) are refused with a clear error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["OrtOptions", "OrtExecutor", "OrtPathsExecutor", "OrtInputError", "PathNotExportedError", "OPTIMIZATION_LEVELS"]

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class OrtInputError(TypeError):
    """The executor was called with inputs that do not match the ONNX graph."""


@dataclass
class OrtOptions:
    """How the InferenceSession is built.

    ``threads``: intra-op threads (None: onnxruntime's default, one per core).
    ``inter_op_threads``: threads running independent nodes in parallel (1 runs
    nodes sequentially, which is what a flat graph on a small CPU wants).
    ``optimization``: onnxruntime's graph optimisation level, one of
    ``disable``, ``basic``, ``extended``, ``all``.
    ``optimized_model_path``: where onnxruntime writes the graph after its
    optimisations (to inspect which fused/int8 kernels it picked).
    ``allow_spinning``: onnxruntime's worker threads busy-wait between ops by
    default; on a shared machine turning it off frees the cores.
    """

    threads: int | None = None
    inter_op_threads: int = 1
    optimization: str = "all"
    providers: Sequence[str] = ("CPUExecutionProvider",)
    optimized_model_path: str | None = None
    allow_spinning: bool = True
    session_config: dict[str, str] = field(default_factory=dict)
    # None: automatic. For int8 QDQ models (metadata "autoglm.int8" and a
    # DequantizeLinear feeding a MatMul, i.e. static int8 Linears) onnxruntime's
    # MatMulAddFusion turns DQ->MatMul->Add into a float Gemm before its QDQ fusions
    # run, so the MatMul never becomes an int8 kernel (measured: 0/2 -> 2/2 fused
    # MatMulIntegerToFloat with it off); we switch it off for those models. Dynamic
    # int8 Linears export as MatMulInteger (no DQ->MatMul), so fp32 layers kept in
    # such a model still get the fusion.
    disabled_optimizers: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {self.optimization!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")


def _session_options(opts: OrtOptions) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if opts.threads is not None:
        so.intra_op_num_threads = opts.threads
    so.inter_op_num_threads = opts.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if opts.inter_op_threads <= 1 else \
        ort.ExecutionMode.ORT_PARALLEL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opts.optimization]
    if opts.optimized_model_path:
        so.optimized_model_filepath = str(opts.optimized_model_path)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.allow_spinning else "0")
    for key, value in opts.session_config.items():
        so.add_session_config_entry(key, value)
    return so


INT8_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def _has_qdq_matmul(path: str) -> bool:
    """Our int8 export (metadata ``autoglm.int8``) with a DequantizeLinear feeding a MatMul/Gemm."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    if not any(p.key == "autoglm.int8" for p in model.metadata_props):
        return False
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return any(node.op_type in ("MatMul", "Gemm") and dequantized.intersection(node.input)
               for node in model.graph.node)


def _to_numpy(t: Any, name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise OrtInputError(f"input {name!r} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype == torch.bfloat16:
        raise OrtInputError(f"input {name!r} is bfloat16, which numpy (and so this executor) cannot carry; "
                            "cast it to float32 or export a float32 model")
    return t.detach().cpu().contiguous().numpy()


class OrtExecutor:
    """Runs an ONNX file with onnxruntime: flat torch tensors in, flat torch tensors out."""

    def __init__(self, path: str | os.PathLike, options: OrtOptions | None = None, **kwargs: Any):
        import onnxruntime as ort

        if options is None:
            options = OrtOptions(**kwargs)
        elif kwargs:
            raise TypeError("pass either an OrtOptions or keyword options, not both")
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no ONNX model at {self.path}; export one with cm.export_onnx(path)")
        self.options = options
        disabled = options.disabled_optimizers
        if disabled is None:
            disabled = INT8_DISABLED_OPTIMIZERS if _has_qdq_matmul(self.path) else ()
        self.session = ort.InferenceSession(self.path, _session_options(options), providers=list(options.providers),
                                            disabled_optimizers=list(disabled) or None)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *tensors: Any) -> tuple[torch.Tensor, ...]:
        if len(tensors) != len(self.input_names):
            raise OrtInputError(f"{os.path.basename(self.path)} takes {len(self.input_names)} input tensors "
                                f"({', '.join(self.input_names)}), got {len(tensors)}")
        feeds = {name: _to_numpy(t, name) for name, t in zip(self.input_names, tensors)}
        outputs = self.session.run(self.output_names, feeds)
        # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
        return tuple(torch.from_numpy(o if o.flags.c_contiguous else o.copy(order="C")) for o in outputs)

    def __repr__(self) -> str:
        return f"OrtExecutor({self.path!r}, threads={self.options.threads}, inputs={self.input_names})"


class PathNotExportedError(RuntimeError):
    """No exported path's guards hold for this input."""


class OrtPathsExecutor:
    """Runs a branching program exported as one ONNX file per path plus a manifest.

    Each path file returns its outputs followed by one ``guard_k`` output per
    branch point. A call runs the path that last matched first (inputs of one
    workload tend to take the same path), then the others, and returns the
    outputs of the first path whose guards all equal their expected values.
    A path file exported with static shapes refuses other shapes; that counts
    as "not this path". Cost when the guess is wrong: one extra run per miss.
    """

    def __init__(self, manifest_path: str | os.PathLike, options: OrtOptions | None = None, **kwargs: Any):
        import json

        self.manifest_path = str(manifest_path)
        with open(self.manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("format") != "autoglm.onnx-paths/1":
            raise ValueError(f"{self.manifest_path} is not an autoglm ONNX path manifest "
                             f"(format {manifest.get('format')!r})")
        root = os.path.dirname(os.path.abspath(self.manifest_path))
        self.paths = []
        for entry in manifest["paths"]:
            file = os.path.normpath(os.path.join(root, entry["file"]))
            if os.path.dirname(file) != root:
                raise ValueError(f"manifest path {entry['file']!r} leaves {root}; refusing to load it")
            self.paths.append((OrtExecutor(file, options, **kwargs), entry))
        self._last = 0

    def __call__(self, *tensors: Any) -> tuple[torch.Tensor, ...]:
        order = [self._last] + [i for i in range(len(self.paths)) if i != self._last]
        missed = []
        for i in order:
            executor, entry = self.paths[i]
            try:
                outs = executor(*tensors)
            except OrtInputError:
                raise
            except Exception as exc:  # a static-shape path refuses other shapes: not this path
                missed.append(f"{entry['file']}: {type(exc).__name__}")
                continue
            n = int(entry["outputs"])
            failed = [g for g, value in zip(entry["guards"], outs[n:]) if _guard_value(value, g["expected"]) != g["expected"]]
            if not failed:
                self._last = i
                return outs[:n]
            missed.append(f"{entry['file']}: guard at {failed[0]['source']} is not {failed[0]['expected']!r}")
        raise PathNotExportedError("no exported path matches this input (" + "; ".join(missed) +
                                   "); call the Program on such an input before exporting so that path is compiled")


def _guard_value(value: torch.Tensor, expected: Any) -> Any:
    if isinstance(expected, bool):
        return bool(value)
    return int(value)
