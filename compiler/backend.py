"""``torch.compile(model, backend="autoglm")``.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml),
so ``torch.compile`` finds it without importing autoglm first. Every subgraph
Dynamo hands us goes through the same pass pipeline as ``autoglm.compile``.
Dynamo passes fake (or real) example tensors: we annotate on real tensors of
the same shapes/dtypes, because the cost model and verification need values.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from autoglm.cost import CostModel
from autoglm.ir.annotate import annotate
from autoglm.ir.pass_base import PassContext
from autoglm.pass_manager import PassManager
from autoglm.pipeline import resolve_passes

__all__ = ["autoglm_backend", "make_backend"]


def _real_like(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    shape = [int(s) for s in t.shape]  # symbolic sizes: their hint
    if t.dtype.is_floating_point:
        return torch.randn(shape, dtype=t.dtype)
    if t.dtype == torch.bool:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.zeros(shape, dtype=t.dtype)


def _all_static(inputs: Sequence[Any]) -> bool:
    for t in inputs:
        if isinstance(t, torch.SymInt):
            return False
        if isinstance(t, torch.Tensor) and any(not isinstance(s, int) for s in t.shape):
            return False
    return True


def make_backend(passes: Any = "default", devices: Sequence[str] | None = None) -> Callable:
    """A Dynamo backend running ``passes`` (same spec forms as ``autoglm.compile``)."""

    def backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
        pipeline = resolve_passes(passes, list(devices or ["cpu"]))
        if not pipeline or not _all_static(example_inputs) or not all(
                isinstance(t, torch.Tensor) for t in example_inputs):
            # Dynamic shapes or non-tensor inputs: the graph runs as Dynamo built it.
            return gm.forward
        real = [_real_like(t) for t in example_inputs]
        with torch.no_grad():
            annotate(gm, real)
        cost = CostModel("analytic")
        cost.annotate_costs(gm)
        ctx = PassContext(real, devices=list(devices or ["cpu"]), cost=cost)
        out = PassManager(pipeline).run(gm, ctx)
        out.recompile()
        return out.forward

    return backend


def autoglm_backend(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable:
    """The default backend: exact passes only."""
    return make_backend("default")(gm, example_inputs)
