"""``torch.compile(model, backend="autoglm", options={...})``.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml),
so ``torch.compile`` finds it without importing autoglm first. Every subgraph
Dynamo hands us goes through the same driver as ``autoglm.compile``
(``autoglm.driver.graph.compile_graph``) and runs on the executor it picks, so a
partitioned subgraph really runs on its devices.

``options`` (the ``torch.compile`` argument) takes the ``autoglm.compile``
keywords that make sense per subgraph: ``passes``, ``devices``, ``cost``,
``verify``, ``calibration``, ``backend`` (``"fx"``, or ``"inductor"``: each rewritten
subgraph is compiled by Inductor on its first call, int8 layers as oneDNN int8 GEMMs;
see docs/inductor.md). ``make_backend(passes, devices, ...)`` builds the
same callable for ``torch.compile(model, backend=make_backend(...))``.

Dynamo hands real example tensors when it has them; those values are used
as they are (ops such as Cholesky or index gathers need valid values). Only
fake tensors (no data) are replaced by random ones of the same shape and dtype.

Dynamo lifts a module's parameters and buffers into graph inputs. Passes that
rewrite weights (quantize, sparsify, split_merge's weight slices) look for
weights held by the graph, so those inputs are frozen into the graph first
(as Inductor's ``freezing=True`` does): the weights are read at compile time,
and a model whose weights change afterwards must be compiled again
(``torch._dynamo.reset()``). Before this, ``options={"passes": "quantize(...)"}``
compiled without error and quantized nothing.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.driver.devices import check_devices
from autoglm.driver.graph import DriverOptions, compile_graph
from autoglm.passes.pipeline import resolve_passes

__all__ = ["autoglm_backend", "make_backend", "freeze_module_state", "BACKEND_OPTIONS"]

BACKEND_OPTIONS = ("passes", "devices", "cost", "verify", "calibration", "backend")
SUBGRAPH_BACKENDS = ("fx", "inductor")  # the ONNX runtimes need a whole model, not Dynamo's subgraphs


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or t.device.type == "meta"


def _real(t: Any) -> Any:
    if not isinstance(t, torch.Tensor) or not _is_fake(t):
        return t
    shape = [int(s) for s in t.shape]  # symbolic sizes: their hint
    if t.dtype.is_floating_point:
        return torch.randn(shape, dtype=t.dtype)
    return torch.zeros(shape, dtype=t.dtype)


def _all_static(inputs: Sequence[Any]) -> bool:
    for t in inputs:
        if isinstance(t, torch.SymInt):
            return False
        if isinstance(t, torch.Tensor) and any(not isinstance(s, int) for s in t.shape):
            return False
    return True


def _is_module_state(node: fx.Node, value: Any) -> bool:
    """A placeholder Dynamo lifted from a module's ``_parameters`` or ``_buffers``."""
    if isinstance(value, nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    try:
        name = source.name() if source is not None else ""
    except Exception:  # noqa: BLE001 - a source kind without a printable name: not state
        return False
    return "._parameters[" in name or "._buffers[" in name


def freeze_module_state(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> tuple[fx.GraphModule, list[int]]:
    """Parameter and buffer inputs become attributes of ``gm``; returns it and the kept input positions."""
    # A copy: Dynamo reads the graph it handed us after we return (which inputs to pass),
    # so its placeholders must stay as they were.
    gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    keep: list[int] = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        if not isinstance(value, torch.Tensor) or _is_fake(value) or not _is_module_state(node, value):
            keep.append(i)
            continue
        attr = f"_frozen_{i}"
        gm.register_buffer(attr, value.detach())
        with gm.graph.inserting_before(node):
            frozen = gm.graph.get_attr(attr)
        frozen.meta = dict(node.meta)
        node.replace_all_uses_with(frozen)
        gm.graph.erase_node(node)
    keep.extend(range(len(placeholders), len(example_inputs)))
    gm.graph.lint()
    gm.recompile()
    return gm, keep


def _devices_list(devices: Sequence[str] | str | None) -> list[str]:
    if isinstance(devices, str):  # options={"devices": "cpu,cpu"}, as on the command line
        return [d.strip() for d in devices.split(",") if d.strip()]
    return list(devices or ["cpu"])


def make_backend(passes: Any = "default", devices: Sequence[str] | str | None = None, *, cost: str = "analytic",
                 verify: bool = False, calibration: Any = None, backend: str = "fx") -> Callable:
    """A Dynamo backend running ``passes`` on ``devices`` (same forms as ``autoglm.compile``).

        compiled = torch.compile(model, backend=make_backend("quantize(mode=dynamic)"))

    Equivalent to ``torch.compile(model, backend="autoglm", options={"passes": ...})``.
    Each graph Dynamo captures is compiled with the module's weights frozen into it; graphs
    with symbolic (dynamic) shapes or non-tensor inputs run as Dynamo built them."""
    if backend not in SUBGRAPH_BACKENDS:
        raise ValueError(f"torch.compile(backend='autoglm'): options['backend'] must be one of "
                         f"{', '.join(map(repr, SUBGRAPH_BACKENDS))}, got {backend!r}")
    devices = _devices_list(devices)
    pipeline = resolve_passes(passes, devices)  # a bad spec fails here, not inside Dynamo
    devices = check_devices(devices, pipeline)
    options = DriverOptions(pipeline, devices, verify=verify, cost=cost, calibration=calibration)

    def compile_subgraph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        if not pipeline or not _all_static(example_inputs) or not all(
                isinstance(t, torch.Tensor) for t in example_inputs):
            # Dynamic shapes or non-tensor inputs: the graph runs as Dynamo built it.
            return gm.forward
        gm, keep = freeze_module_state(gm, example_inputs)
        compiled = compile_graph(gm, [_real(example_inputs[i]) for i in keep], options)
        executor = compiled.executor
        if backend == "inductor":
            from autoglm.runtime.inductor import InductorExecutor

            # Compiled on its first call, after Dynamo has finished with the outer frame.
            executor = InductorExecutor(compiled.graph_module)
        if len(keep) == len(example_inputs):
            return executor
        return lambda *args: executor(*[args[i] for i in keep])

    return compile_subgraph


def autoglm_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None,
                    mode: str | None = None) -> Callable:
    """The registered backend; ``options`` as in ``torch.compile(..., options={...})``."""
    unknown = sorted(set(options or {}) - set(BACKEND_OPTIONS))
    if unknown:
        raise ValueError(f"torch.compile(backend='autoglm'): unknown option(s) {unknown}; "
                         f"known: {', '.join(BACKEND_OPTIONS)}")
    return make_backend(**(options or {}))(gm, example_inputs)
