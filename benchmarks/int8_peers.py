"""The peers benchmarks/quantize.py puts beside our int8: each builder returns a callable running
the model on the timed inputs (outputs as the model returns them), or raises ``Skipped``.

Every runtime is pinned to the same thread count. Builders for optional packages
(openvino, nncf, torchao) raise ``Skipped`` with the reason when the package is absent,
so the table says which rows are missing instead of failing.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

Run = Callable[[], Any]


class Skipped(Exception):
    """This peer cannot run here (package missing, or it failed); the message says why."""


def _needs(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skipped(f"{module} not installed") from exc


def _feeds(names: list[str], inputs: tuple) -> dict[str, np.ndarray]:
    return {n: t.numpy() for n, t in zip(names, inputs)}


def torch_compile(model: nn.Module, inputs: tuple) -> Run:
    """Inductor with freezing (weights as constants), as for deployment."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled = torch.compile(copy.deepcopy(model))
    return lambda: compiled(*inputs)


def torchao_int8(model: nn.Module, inputs: tuple) -> Run:
    """torchao int8 dynamic activations x int8 weights, then torch.compile (freezing)."""
    quant = _needs("torchao.quantization")
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant.quantize_(m, quant.Int8DynamicActivationInt8WeightConfig())
    compiled = torch.compile(m)
    return lambda: compiled(*inputs)


def pt2e_x86_static(model: nn.Module, inputs: tuple, calibration: list[tuple]) -> Run:
    """PyTorch's own static int8 path: torch.export, PT2E ``X86InductorQuantizer`` (its default
    config: per-tensor u8 activations, per-channel s8 weights), calibration, torch.compile
    (freezing). Calibration batches are concatenated to the timed batch size: the exported
    graph is fixed to it."""
    _needs("torchao.quantization.pt2e")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    graph = torch.export.export(copy.deepcopy(model), inputs, strict=False).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    batch = inputs[0].shape[0]
    joined = [torch.cat(parts) for parts in zip(*calibration)]
    for start in range(0, joined[0].shape[0] - batch + 1, batch):
        prepared(*[t[start:start + batch] for t in joined])
    if joined[0].shape[0] < batch:  # fewer calibration rows than one batch: repeat them
        reps = -(-batch // joined[0].shape[0])
        prepared(*[t.repeat(reps, *[1] * (t.dim() - 1))[:batch] for t in joined])
    compiled = torch.compile(convert_pt2e(prepared))
    return lambda: compiled(*inputs)


def onnxruntime_pair(model: nn.Module, inputs: tuple, names: list[str], tmp: Path, threads: int) -> tuple[Run, Run]:
    """(fp32, int8) onnxruntime sessions; int8 from ``quantize_dynamic`` with per-channel QInt8 weights."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, int8 = tmp / "peer.onnx", tmp / "peer.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(fp32), input_names=names, dynamo=True, external_data=False)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    feeds = _feeds(names, inputs)
    runs = []
    for path in (fp32, int8):
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        runs.append(lambda s=session: s.run(None, feeds))
    return runs[0], runs[1]


def _ov_run(compiled: Any, names: list[str], inputs: tuple) -> Run:
    request = compiled.create_infer_request()
    feeds = _feeds(names, inputs)

    def run() -> tuple:
        request.infer(feeds)
        return tuple(request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs)))

    return run


def _ov_config(threads: int) -> dict[str, Any]:
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def openvino_model(model: nn.Module, inputs: tuple, names: list[str]) -> Any:
    ov = _needs("openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ov.convert_model(model, example_input=dict(zip(names, inputs)))


def openvino_fp32(ov_model: Any, inputs: tuple, names: list[str], threads: int) -> Run:
    ov = _needs("openvino")
    return _ov_run(ov.Core().compile_model(ov_model, "CPU", _ov_config(threads)), names, inputs)


def nncf_int8(ov_model: Any, calibration: list[tuple], inputs: tuple, names: list[str], threads: int,
              transformer: bool) -> Run:
    """NNCF post-training int8 (static activations; ``model_type=TRANSFORMER`` for encoders, which
    adds SmoothQuant and keeps the ops NNCF knows to be sensitive in float), calibrated one
    sample at a time on the calibration batches' rows."""
    ov = _needs("openvino")
    nncf = _needs("nncf")
    rows = [{n: t[i:i + 1].numpy() for n, t in zip(names, batch)} for batch in calibration
            for i in range(batch[0].shape[0])]
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(ov_model, nncf.Dataset(rows), subset_size=len(rows), **kwargs)
    return _ov_run(ov.Core().compile_model(quantized, "CPU", _ov_config(threads)), names, inputs)


def int_mm_bound(model: nn.Module, rows: int, repeats: int = 20) -> tuple[float, int]:
    """Seconds of ``torch._int_mm`` alone over every Linear of ``model`` at ``rows`` rows (int8 x int8
    -> int32, operands pre-made): what an int8 Linear stack costs with no quantize/scale/epilogue work.
    Returns (seconds, Linears timed)."""
    from autoglm.ir.timing import median_seconds

    total, n = 0.0, 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            x = torch.randint(-128, 127, (rows, mod.in_features), dtype=torch.int8)
            w = torch.randint(-127, 127, (mod.out_features, mod.in_features), dtype=torch.int8).t()
            total += median_seconds(lambda: torch._int_mm(x, w), repeats)
            n += 1
    return total, n


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="autoglm-bench-")
