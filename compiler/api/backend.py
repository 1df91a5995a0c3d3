"""``torch.compile(model, backend="autoglm", options={...})``.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml),
so ``torch.compile`` finds it without importing autoglm first. Every subgraph
Dynamo hands us goes through the same driver as ``autoglm.compile``
(``autoglm.driver.graph.compile_graph``) and runs on the executor it picks, so a
partitioned subgraph really runs on its devices.

``options`` (the ``torch.compile`` argument) takes the ``autoglm.compile``
keywords that make sense per subgraph: ``passes``, ``devices``, ``cost``,
``verify``, ``calibration``. ``make_backend(passes, devices, ...)`` builds the
same callable for ``torch.compile(model, backend=make_backend(...))``.

Dynamo hands real example tensors when it has them; those values are used
as they are (ops such as Cholesky or index gathers need valid values). Only
fake tensors (no data) are replaced by random ones of the same shape and dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from autoglm.driver.graph import DriverOptions, compile_graph
from autoglm.passes.pipeline import resolve_passes

__all__ = ["autoglm_backend", "make_backend", "BACKEND_OPTIONS"]

BACKEND_OPTIONS = ("passes", "devices", "cost", "verify", "calibration")


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


def make_backend(passes: Any = "default", devices: Sequence[str] | None = None, *, cost: str = "analytic",
                 verify: bool = False, calibration: Any = None) -> Callable:
    """A Dynamo backend running ``passes`` on ``devices`` (same forms as ``autoglm.compile``)."""
    devices = list(devices or ["cpu"])
    pipeline = resolve_passes(passes, devices)  # a bad spec fails here, not inside Dynamo
    options = DriverOptions(pipeline, devices, verify=verify, cost=cost, calibration=calibration)

    def backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        if not pipeline or not _all_static(example_inputs) or not all(
                isinstance(t, torch.Tensor) for t in example_inputs):
            # Dynamic shapes or non-tensor inputs: the graph runs as Dynamo built it.
            return gm.forward
        compiled = compile_graph(gm, [_real(t) for t in example_inputs], options)
        return compiled.executor

    return backend


def autoglm_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], options: dict[str, Any] | None = None,
                    mode: str | None = None) -> Callable:
    """The registered backend; ``options`` as in ``torch.compile(..., options={...})``."""
    unknown = sorted(set(options or {}) - set(BACKEND_OPTIONS))
    if unknown:
        raise ValueError(f"torch.compile(backend='autoglm'): unknown option(s) {unknown}; "
                         f"known: {', '.join(BACKEND_OPTIONS)}")
    return make_backend(**(options or {}))(gm, example_inputs)
