"""Annotate a graph: shapes, dtypes, FLOPs, bytes moved, parameter bytes.

One interpretation of the graph on the example inputs fills every node's
``NodeAnnotation``. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(the same counter torch uses), read as a running total before and after each
node so one counter serves the whole graph. Latency is measured only when asked
(``measure=True``): each node re-runs on its real inputs, median of repeats.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import FlopCounterMode

from autoglm.ir.meta import TensorSpec, annotation

__all__ = ["annotate", "AnnotatingInterpreter"]


def _tensors(value: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(value)
    return [v for v in leaves if isinstance(v, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    if t.layout != torch.strided:  # sparse formats report their stored values
        try:
            return int(t.values().numel() * t.element_size())
        except (RuntimeError, NotImplementedError):
            return 0
    return int(t.numel() * t.element_size())


def _module_param_bytes(mod: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(mod.parameters()) + list(mod.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += _nbytes(t)
    # packed int8 weights and other tensors stored as plain attributes
    for v in vars(mod).values():
        if isinstance(v, torch.Tensor) and id(v) not in seen:
            seen.add(id(v))
            total += _nbytes(v)
    return total


class AnnotatingInterpreter(fx.Interpreter):
    """Runs the graph once and records what every node did."""

    def __init__(self, gm: fx.GraphModule, measure: bool = False, repeats: int = 5):
        super().__init__(gm, garbage_collect_values=True)
        self.measure = measure
        self.repeats = repeats
        self.counter = FlopCounterMode(display=False)

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "output"):
            result = super().run_node(n)
            ann = annotation(n)
            ann.outputs = [TensorSpec(tuple(t.shape), t.dtype) for t in _tensors(result)] if n.op == "placeholder" else []
            ann.produces_tensors = bool(ann.outputs)
            return result
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        before = self.counter.get_total_flops()
        if isinstance(n.target, torch._ops.HigherOrderOperator):
            result = _run_higher_order(self, n, args, kwargs)
        else:
            result = getattr(self, n.op)(n.target, args, kwargs)
        flops = self.counter.get_total_flops() - before
        ann = annotation(n)
        ann.outputs = [TensorSpec(tuple(t.shape), t.dtype) for t in _tensors(result)]
        ann.produces_tensors = bool(ann.outputs)
        ann.flops = int(flops)
        if n.op == "get_attr":
            ann.bytes_read = ann.bytes_written = 0
            ann.param_bytes = sum(_nbytes(t) for t in _tensors(result))
            return result
        inputs = _tensors((args, kwargs))
        ann.bytes_read = sum(_nbytes(t) for t in inputs)
        ann.bytes_written = sum(_nbytes(t) for t in _tensors(result))
        param_bytes = 0
        if n.op == "call_module":
            param_bytes = _module_param_bytes(self.module.get_submodule(str(n.target)))
        for a in n.all_input_nodes:  # weights read through get_attr count as parameters
            if a.op == "get_attr":
                param_bytes += annotation(a).param_bytes
        ann.param_bytes = param_bytes
        ann.bytes_read += param_bytes if n.op == "call_module" else 0
        if self.measure:
            ann.latency_s = self._time(n, args, kwargs)
        return result

    def _time(self, n: fx.Node, args: Any, kwargs: Any) -> float:
        fn = getattr(self, n.op)
        samples = []
        # Time outside the FLOP counter: a dispatch mode would distort the numbers.
        with torch.no_grad(), _disable_current_modes():
            fn(n.target, args, kwargs)  # warm-up
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn(n.target, args, kwargs)
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with self.counter, torch.no_grad():
            return super().run(*args, **kwargs)


def _run_higher_order(interp: fx.Interpreter, n: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Run a higher-order op (``torch.cond`` from torch.export) under the FLOP counter.

    FlopCounterMode runs each ``cond`` branch as a module call, which trips its
    module tracker under ``no_grad`` when weights require grad (torch 2.13). For
    ``cond`` we do what its dense kernel does (call the branch the predicate
    picks) but through the branch graph's ``forward``, which skips module hooks;
    the counter then sees the FLOPs of the branch actually taken.
    """
    if n.target is torch.ops.higher_order.cond and len(args) == 4 and not kwargs:
        pred, true_fn, false_fn, operands = args
        branch = true_fn if bool(pred) else false_fn
        return getattr(branch, "forward", branch)(*operands)
    return getattr(interp, n.op)(n.target, args, kwargs)


def annotate(gm: fx.GraphModule, inputs: Sequence[Any], measure: bool = False, repeats: int = 5) -> Any:
    """Fill every node's annotation by running ``gm`` on ``inputs``; returns the outputs.

    Nodes keep their provenance and tags; only the measured facts are replaced.
    """
    return AnnotatingInterpreter(gm, measure=measure, repeats=repeats).run(*inputs)
