"""Annotate a graph: shapes, dtypes, FLOPs, bytes moved, parameter bytes.

One interpretation of the graph on the example inputs fills every node's
``NodeAnnotation``. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``
(the same counter torch uses), read as a running total before and after each
node so one counter serves the whole graph. Latency is measured only when asked
(``measure=True``): each node re-runs on its real inputs, median of repeats.

Symbolic shapes. Shapes are recorded at the example's sizes (the hints), and
``TensorSpec.symbolic`` says which of those dimensions may change between calls
(``symbolic_shapes``). torch.export leaves a fake tensor with symbolic sizes in
every node's ``meta["val"]``; nodes a pass created have none, so their fake
values are computed here, from their inputs' under the capture's own fake mode
(``_fake_values``), which is cheap (no data) and leaves no guard behind (a guard
would specialise a dimension to the example). A node that cannot run on fake
tensors keeps ``symbolic=None``: unknown, which passes treat as "may change".

Graphs of the symbolic frontend have no fake values, yet they are called at any
batch size: ``annotate(..., dynamic=)`` is told which input dims may change (the
driver infers batch and sequence) and finds the dims that follow them by running
the graph once more at grown sizes (``shape_probe.py``, which says why not fake values).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import FlopCounterMode

from autoglm.ir.effects import has_side_effects
from autoglm.ir.meta import TensorSpec, annotation, has_annotation, symbolic_dims
from autoglm.ir.shape_probe import probe_symbolic_shapes

__all__ = ["annotate", "AnnotatingInterpreter", "symbolic_shapes"]


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


# ---------------------------------------------------------------- symbolic shapes


def _fake_mode(gm: fx.GraphModule) -> FakeTensorMode | None:
    """The fake mode of the graph's inputs' ``meta["val"]`` (torch.export leaves them), if any."""
    for n in gm.graph.nodes:
        if n.op == "placeholder" and isinstance(n.meta.get("val"), FakeTensor):
            return n.meta["val"].fake_mode
    return None


# Functions whose fake call is a pure shape computation: aten/torch ops, operator, math, builtins.
_PURE_FUNCTION_MODULES = ("torch", "_operator", "operator", "math", "builtins")


def _pure_function(target: Any) -> bool:
    if isinstance(target, torch._ops.HigherOrderOperator):  # torch.cond runs graphs that may hold our modules
        return False
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return True
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] in _PURE_FUNCTION_MODULES


def _run_fake(gm: fx.GraphModule, n: fx.Node, env: dict[fx.Node, Any], mode: FakeTensorMode) -> Any:
    """``n``'s value on its inputs' fake values; KeyError when it cannot be computed safely.

    Only what cannot change state is run: a module of ours may build state on its
    first call (an int8 linear packs its weight), which a fake call would fill with
    fake tensors for every later real call. So modules run only when they are fx
    graphs (a fused run, evaluated node by node here) or torch.nn's own layers in
    eval mode, and functions only when they are torch/operator/math ones.
    """
    args = fx.node.map_arg(n.args, env.__getitem__)  # KeyError: an input without a fake value
    kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
    if n.op == "get_attr":
        obj: Any = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part)
        return obj  # a real weight: the fake mode converts it where an op reads it
    if n.op == "call_function" and _pure_function(n.target):
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], str(n.target))(*args[1:], **kwargs)
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        if isinstance(mod, fx.GraphModule):
            inner = _fake_values(mod, mode, list(args))
            out = next(o for o in mod.graph.nodes if o.op == "output")
            return fx.node.map_arg(out.args[0], inner.__getitem__)
        if (type(mod).__module__.startswith("torch.nn.") and not mod.training
                and not isinstance(mod, torch.nn.modules.lazy.LazyModuleMixin)):
            return mod(*args, **kwargs)
    raise KeyError(n.name)


def _fake_values(gm: fx.GraphModule, mode: FakeTensorMode, inputs: list[Any] | None = None) -> dict[fx.Node, Any]:
    """Every node's fake value: its ``meta["val"]``, else computed from its inputs' fake values.

    ``inputs``: the placeholders' values (a fused submodule, evaluated inside its caller's run).
    Call it inside ``_fake_context``.
    """
    env: dict[fx.Node, Any] = {}
    placeholders = iter(inputs) if inputs is not None else None
    for n in gm.graph.nodes:
        if n.op == "placeholder" and placeholders is not None:
            value = next(placeholders, None)
            if value is not None:
                env[n] = value
        elif "val" in n.meta:
            env[n] = n.meta["val"]
        elif n.op not in ("placeholder", "output") and not has_side_effects(n):
            try:
                env[n] = _run_fake(gm, n, env, mode)
            except Exception:  # noqa: BLE001 - no fake kernel, an unknown input...: stays unknown
                pass
    return env


@contextlib.contextmanager
def _fake_context(mode: FakeTensorMode) -> Any:
    shape_env = mode.shape_env
    # No guard may be recorded: one would specialise a symbol of the capture to the example.
    quiet = shape_env.suppress_guards() if shape_env is not None else contextlib.nullcontext()
    saved = mode.allow_non_fake_inputs
    mode.allow_non_fake_inputs = True  # new weights and submodules hold real tensors
    try:
        with quiet, mode, torch.no_grad():
            yield
    finally:
        mode.allow_non_fake_inputs = saved


def symbolic_shapes(gm: fx.GraphModule) -> dict[fx.Node, list[tuple[str | None, ...] | None]] | None:
    """Per node, the symbolic dims (``TensorSpec.symbolic``) of each tensor it produces.

    None for a graph whose inputs have no fake values (the symbolic frontend's):
    nothing is known. An empty dict when no input has a symbolic size: every
    dimension is static. Otherwise weights are static and every other node has the
    dims of its fake value; a node without one is missing (unknown).
    """
    mode = _fake_mode(gm)
    if mode is None:
        return None
    placeholders = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    if not any(any(symbolic_dims(v) or ()) for v in placeholders if isinstance(v, FakeTensor)):
        return {}
    if all("val" in n.meta for n in gm.graph.nodes if n.op not in ("placeholder", "output")):
        values = {n: n.meta["val"] for n in gm.graph.nodes if "val" in n.meta}  # as captured: nothing to run
    else:
        with _fake_context(mode):
            values = _fake_values(gm, mode)
    return {n: [symbolic_dims(t) for t in _tensors(v)] for n, v in values.items() if n.op != "get_attr"}


class AnnotatingInterpreter(fx.Interpreter):
    """Runs the graph once and records what every node did."""

    def __init__(self, gm: fx.GraphModule, measure: bool = False, repeats: int = 5):
        super().__init__(gm, garbage_collect_values=True)
        self.measure = measure
        self.repeats = repeats
        self.counter = FlopCounterMode(display=False)
        self.symbolic: dict[fx.Node, list] | None = None  # symbolic_shapes(), set by run()

    def _specs(self, n: fx.Node, result: Any) -> list[TensorSpec]:
        """The tensors ``n`` produced, at their real (example) sizes, with their symbolic dims."""
        tensors = _tensors(result)
        if self.symbolic is None:  # nothing known
            known: list = [None] * len(tensors)
        elif not self.symbolic or n.op == "get_attr":  # a static graph, or a weight
            known = [(None,) * t.dim() for t in tensors]
        else:
            known = self.symbolic.get(n, [])
            if len(known) != len(tensors):  # no fake value, or one that does not match the real run
                known = [None] * len(tensors)
        return [TensorSpec(tuple(t.shape), t.dtype, sym if sym is None or len(sym) == t.dim() else None)
                for t, sym in zip(tensors, known)]

    def run_node(self, n: fx.Node) -> Any:
        if n.op in ("placeholder", "output"):
            result = super().run_node(n)
            ann = annotation(n)
            ann.outputs = self._specs(n, result) if n.op == "placeholder" else []
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
        ann.outputs = self._specs(n, result)
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
        self.symbolic = symbolic_shapes(self.module)
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


# Placeholder meta of a graph without fake values: {dim: name} of the dims that may change
# between calls, so the annotations after every pass know them too (``_stated_dims``).
_DYNAMIC_DIMS = "autoglm_dynamic_dims"


def _stated_dims(gm: fx.GraphModule, dynamic: Mapping[int, Mapping[int, Any]] | None) -> dict[int, dict[int, Any]]:
    """``dynamic`` remembered on the placeholders (when given), else what they remember."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if dynamic is not None:
        for i, n in enumerate(placeholders):
            n.meta[_DYNAMIC_DIMS] = {d: str(getattr(s, "name", s)) for d, s in dynamic.get(i, {}).items()}
    return {i: dict(n.meta[_DYNAMIC_DIMS]) for i, n in enumerate(placeholders) if n.meta.get(_DYNAMIC_DIMS)}


def _with_symbolic(spec: TensorSpec, sym: tuple | None) -> TensorSpec:
    ok = sym is not None and len(sym) == len(spec.shape)
    return TensorSpec(spec.shape, spec.dtype, sym if ok else None)


def _probe(gm: fx.GraphModule, inputs: Sequence[Any], dims: dict[int, dict[int, Any]]) -> None:
    """Symbolic dims of a graph without fake values, from one more run at grown sizes (shape_probe.py)."""
    example = {n: [s.shape for s in annotation(n).outputs] for n in gm.graph.nodes if has_annotation(n)}
    found = probe_symbolic_shapes(gm, inputs, dims, example)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in gm.graph.nodes:
        if not has_annotation(n) or n.op == "output":
            continue
        ann = annotation(n)
        if n.op == "get_attr" or not dims:  # a weight, or a graph whose every size is the example's
            syms: list = [(None,) * len(s.shape) for s in ann.outputs]
        elif n.op == "placeholder":  # known from ``dims`` even when the graph cannot be probed
            stated = dims.get(placeholders.index(n), {})
            syms = [tuple(stated.get(d) for d in range(len(s.shape))) for s in ann.outputs]
        else:
            syms = (found or {}).get(n, [None] * len(ann.outputs))
        ann.outputs = [_with_symbolic(s, sym) for s, sym in zip(ann.outputs, syms)]


def annotate(gm: fx.GraphModule, inputs: Sequence[Any], measure: bool = False, repeats: int = 5,
             dynamic: Mapping[int, Mapping[int, Any]] | None = None) -> Any:
    """Fill every node's annotation by running ``gm`` on ``inputs``; returns the outputs.

    Nodes keep their provenance and tags; only the measured facts are replaced.
    ``dynamic``: for a graph without fake values (symbolic frontend), the input dims
    that may change between calls, per flat input ``{dim: name}``; remembered on the
    graph, so the annotations after each pass know them too. A torch.export graph's
    own symbolic dims are used instead.
    """
    outputs = AnnotatingInterpreter(gm, measure=measure, repeats=repeats).run(*inputs)
    if _fake_mode(gm) is None:
        dims = _stated_dims(gm, dynamic)
        if dims or dynamic is not None:
            _probe(gm, inputs, dims)
    return outputs
