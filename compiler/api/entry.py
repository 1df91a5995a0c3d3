"""``autoglm.compile`` and ``autoglm.load``: the one-call entry points."""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from autoglm.capture import capture
from autoglm.capture.flat import FlatBatches
from autoglm.driver.compiled import CompiledModel
from autoglm.driver.devices import check_devices
from autoglm.driver.graph import DriverOptions, compile_graph, executor_for_loaded, preserved_buffers
from autoglm.passes.pipeline import resolve_passes

__all__ = ["compile", "load", "attach_backend", "split_example_inputs", "BACKENDS"]

BACKENDS = ("fx", "inductor", "onnxruntime", "openvino")


def split_example_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """A tuple/list → positional, a dict → keyword, a single tensor → one positional."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise TypeError(
        f"example_inputs must be a tuple of positional inputs or a dict of keyword inputs, "
        f"got {type(example_inputs).__name__}"
    )


def compile(  # noqa: A001 - the public name users expect, like torch.compile
    model: nn.Module,
    example_inputs: Any,
    passes: Any = "default",
    devices: Sequence[str] | None = None,
    *,
    frontend: str = "auto",
    verify: bool = False,
    cost: str = "analytic",
    calibration: Any = None,
    measure: bool = False,
    backend: str = "fx",
    backend_options: dict[str, Any] | None = None,
    max_plans: int = 64,
    on_limit: str = "eager",
    dynamic: Any = None,
) -> CompiledModel:
    """Capture ``model``, run ``passes`` over its graph and return a drop-in callable.

    ``passes``: ``"default"`` (exact passes only), ``"none"``, a spec string such as
    ``"split_merge,partition(k=2),quantize(mode=dynamic)"``, or a list of passes.
    ``devices``: where partitions run (``["cpu", "cpu"]``); one device by default.
    ``verify=True`` checks the outputs against the pre-pass graph after every pass.
    ``backend``: ``"fx"`` runs the rewritten graph in PyTorch (multi-device when
    partitioned); ``"inductor"`` compiles it with ``torch.compile``'s Inductor, weights frozen
    (int8 layers become oneDNN int8 GEMMs with fused epilogues; docs/quantize.md);
    ``"onnxruntime"`` exports it and runs an InferenceSession; ``"openvino"``
    exports it and runs it on OpenVINO's CPU plugin (``pip install 'open-autoglm[openvino]'``).
    ``backend_options``: the runtime's and the exporter's options (``threads``, ...).
    Models with data-dependent branches return an ``autoglm.program.program.Program``
    that compiles one path per outcome sequence, at most ``max_plans`` of them,
    then follows ``on_limit`` (``"eager"`` or ``"error"``); see docs/dynamic_graphs.md.
    ``dynamic``: which input dimensions may change between calls: ``None`` infers batch and
    sequence dims, ``False`` fixes every shape, ``{"input_ids": {0: "batch", 1: ("seq", 1, 512)}}``
    states them, a list of other example inputs marks the dims that differ; see docs/dynamic_shapes.md.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    devices = list(devices or ["cpu"])
    args, kwargs = split_example_inputs(example_inputs)
    pipeline = resolve_passes(passes, devices)  # bad specs and devices fail before any work
    devices = check_devices(devices, pipeline)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _preserved_state(model):
        captured = capture(model, args, kwargs, frontend=frontend, branches=True, dynamic=dynamic)
    timings["capture_s"] = time.perf_counter() - t0
    if calibration is not None:  # keyword batches (HF models) in the graph's flat input order
        calibration = FlatBatches(calibration, captured.signature)
    options = DriverOptions(pipeline, devices, verify=verify, cost=cost, calibration=calibration, measure=measure)
    if captured.frontend == "branching" and backend in ("openvino", "inductor"):
        raise ValueError(f"backend={backend!r} runs models without data-dependent branches, and this one has "
                         "them: use backend='onnxruntime' (one session per path) or 'fx'")
    if captured.frontend == "branching":  # data-dependent control flow: one graph per path
        from autoglm.program.program import compile_program

        program = compile_program(model, captured, options, max_plans=max_plans, on_limit=on_limit,
                                  timings=timings, allow_fallback=frontend == "auto", backend=backend,
                                  backend_options=backend_options)
        if not isinstance(program, str):
            return program
        # The branching trace failed for another reason: export the whole model, and keep why.
        reasons = {**captured.reasons, "branching": program}
        with _preserved_state(model):
            captured = capture(model, args, kwargs, frontend="export", dynamic=dynamic)
        captured.reasons = {**reasons, **captured.reasons}
    with _preserved_state(model):
        compiled = compile_graph(captured.graph_module, captured.flat_inputs, options, timings=timings,
                                 dynamic=captured.signature.dynamic)
    for prop, why in compiled.notes.get("invalidated", {}).items():
        warnings.warn(f"the {prop!r} result of an earlier pass was dropped: {why}; reorder the passes "
                      "(e.g. partition last) to keep it", UserWarning, stacklevel=2)
    config = options.config(frontend=captured.frontend, backend=backend)
    cm = CompiledModel(compiled.graph_module, captured.signature, captured.flat_inputs, config, compiled.records,
                       captured.frontend, executor=compiled.executor,
                       notes={**compiled.notes, **captured.notes, "timings": timings,
                              "frontend_reasons": captured.reasons})
    attach_backend(cm, backend, backend_options)
    return cm


def attach_backend(cm: CompiledModel, backend: str, options: dict[str, Any] | None = None) -> None:
    """Make ``backend`` run ``cm`` (``"fx"``: leave it as it is); the backends' checks run here."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "onnxruntime":
        from autoglm.export.onnx.export import attach_onnxruntime

        attach_onnxruntime(cm, **(options or {}))
    elif backend == "inductor":
        from autoglm.export.inductor import attach_inductor

        attach_inductor(cm, **(options or {}))
    elif backend == "openvino":
        from autoglm.export.openvino import attach_openvino

        attach_openvino(cm, **(options or {}))
    if backend != "fx":
        cm.config["backend"] = backend


@contextlib.contextmanager
def _preserved_state(model: nn.Module) -> Iterator[None]:
    """``preserved_buffers`` in eval mode (the graph is captured for inference)."""
    was_training = model.training
    model.eval()
    try:
        with preserved_buffers(model):
            yield
    finally:
        model.train(was_training)


def load(path: str | os.PathLike, *, trust_remote_code: bool = False) -> CompiledModel:
    """Load a saved artifact directory; a saved ``Program`` comes back as a ``LoadedProgram``.

    Nothing from the files is executed: the graph is rebuilt from autoglm's exact
    table of operators (``autoglm.loading.op_table``), tensors come from safetensors, and
    shapes and costs are read from the file instead of running the graph.
    ``trust_remote_code=True`` also resolves functions outside the table (ones a
    user marked ``torch.fx.wrap``) by importing them; see docs/security.md.
    """
    from autoglm.artifacts.directory import ArtifactError, load_artifact
    from autoglm.program.io import is_program, load_program

    if is_program(path):
        return load_program(path, trust_remote_code=trust_remote_code)
    gm, sig, inputs, config = load_artifact(path, trust_remote_code=trust_remote_code)
    executor = executor_for_loaded(gm, config)
    notes: dict[str, Any] = {}
    if "partition_plan" in config:
        from autoglm.passes.partition.partition import PartitionPlan

        try:
            notes["partition"] = {"plan": PartitionPlan.from_json(config["partition_plan"])}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{path}: config.json has a malformed partition_plan ({exc})") from exc
    return CompiledModel(gm, sig, inputs, config, records=config.get("records", []),
                         frontend=config.get("frontend", ""), executor=executor, notes=notes)
