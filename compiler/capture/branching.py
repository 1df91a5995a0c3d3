"""Branch-aware capture: trace one path of a model with data-dependent control flow.

Plain FX refuses ``if h.sum() > 0:`` (``Proxy.__bool__`` has no value to give).
``BranchingTracer`` replays a list of decided outcomes instead: the k-th time
the model asks for a Python value of a traced tensor (``to_bool``, ``iter``,
``len``, ``x in t``), it returns the k-th decided outcome and records a branch point. At
the first undecided branch it stops the trace (``Undecided``), carrying the
predicate node and the values the rest of the model can still use.

``trace_segment`` turns such a trace into one *segment*: the nodes traced since
the previous branch point, as a flat ``GraphModule``

    segment(*model_inputs, *imported_values) -> (predicate, *exported_values)

or, for the last segment of a path, ``-> model outputs``. Node names are the
join keys: tracing is deterministic, so a node traced before branch k has the
same name in every trace that shares the first k outcomes. The runtime
(``autoglm.runtime.replan``) runs the segments one after the other, so the
computation before a branch runs once per call and is shared by all paths.

Exported values are the traced values still referenced from Python at the
branch point (live ``Proxy`` objects): exactly what code after the branch can
use. Weights (``get_attr``) and model inputs are never exported; every segment
reads them itself.
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.proxy import Attribute, Proxy

from autoglm.capture.errors import CaptureError, user_frame
from autoglm.capture.flat import FlatSignature, fixed_arity_flat_call
from autoglm.capture.symbolic import AutoglmTracer, LengthHook
from autoglm.ir.effects import has_side_effects

__all__ = ["BranchInfo", "BranchingTracer", "Segment", "Undecided", "trace_segment", "tensor_contains",
           "NondeterministicTraceError"]

# Kinds of branch point: the Python value the model asked for.
BOOL = "bool"  # if / while / assert / `x in t`: outcome is True or False
SHAPE = "shape"  # a bool that depends only on input shapes: a guard on the input signature
LENGTH = "len"  # len() of a traced value or iteration over a tensor: outcome is the length


def tensor_contains(container: torch.Tensor, item: Any) -> torch.Tensor:
    """``item in container`` the way ``torch.Tensor.__contains__`` computes it."""
    return (container == item).any()


@dataclass(frozen=True)
class BranchInfo:
    """Where a branch point is and what it asks: user source line, predicate, kind."""

    source: str
    predicate: str
    kind: str


class Undecided(BaseException):
    """The trace reached a branch with no decided outcome (BaseException: user
    ``except Exception`` blocks must not swallow it)."""

    def __init__(self, predicate: fx.Node, info: BranchInfo, live: list[fx.Node]):
        super().__init__(info.source)
        self.predicate = predicate
        self.info = info
        self.live = live


class NondeterministicTraceError(CaptureError):
    """Two traces with the same decided outcomes disagreed."""


class _TensorLike(LengthHook):
    """``item in proxy`` as one guard, the way ``torch.Tensor.__contains__`` computes it
    (plain FX would iterate the tensor: a length guard plus one guard per element);
    ``len(proxy)`` through the tracer's ``length`` (``LengthHook``)."""

    tracer: Any

    def __contains__(self, item: Any) -> bool:
        found = self.tracer.create_proxy("call_function", tensor_contains, (self, item), {})
        return self.tracer.to_bool(found)

    def __getattr__(self, k: str) -> Any:
        attr = _BranchAttribute(self, k)  # `topk(...).indices` must keep __contains__
        self.tracer._track(attr)  # `s = x.shape` kept across a branch must stay live
        return attr


class _BranchProxy(_TensorLike, Proxy):
    pass


class _BranchAttribute(_TensorLike, Attribute):
    pass


_SHAPE_METHODS = {"size", "dim", "numel"}


def _shape_only(node: fx.Node) -> bool:
    """True when ``node`` is computed from input shapes alone (``x.shape[0] > 8``)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            continue
        if n.op == "call_method" and n.target in _SHAPE_METHODS and n.args[0].op == "placeholder":
            continue
        if n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "ndim") \
                and n.args[0].op == "placeholder":
            continue
        if n.op == "call_function" and getattr(n.target, "__module__", None) in ("_operator", "operator"):
            stack.extend(n.all_input_nodes)
            continue
        return False
    return True


def _describe(node: Any, depth: int = 3) -> str:
    """A short readable expression for a predicate node: ``gt(sum(fc1(x)), 0)``."""
    if not isinstance(node, fx.Node):
        return repr(node)
    if node.op in ("placeholder", "get_attr") or depth == 0:
        return str(node.target) if node.op == "get_attr" else node.name
    if node.op == "call_module":
        name = str(node.target).removeprefix("model.")
    elif node.op == "call_method":
        name = f".{node.target}"
    else:
        name = getattr(node.target, "__name__", str(node.target))
    inner = ", ".join(_describe(a, depth - 1) for a in node.args)
    return f"{name}({inner})"


class BranchingTracer(AutoglmTracer):
    """Follows ``decisions`` at the branch points it meets, in order; stops at the next one."""

    # Buffers are state (a context memory updated in forward): read them at run time,
    # never fold their trace-time value into the graph as a constant.
    proxy_buffer_attributes = True

    def __init__(self, decisions: Sequence[Any], expected: Sequence[BranchInfo] = ()) -> None:
        super().__init__()
        self.decisions = list(decisions)
        self.expected = list(expected)  # what earlier traces saw at these branches
        self.branches: list[BranchInfo] = []
        self._proxies: list[weakref.ref] = []

    def proxy(self, node: fx.Node) -> Proxy:
        p = _BranchProxy(node, self)
        self._track(p)
        return p

    def _track(self, p: Any) -> None:
        if isinstance(p, Proxy):
            self._proxies.append(weakref.ref(p))

    def to_bool(self, obj: Proxy) -> bool:
        return bool(self._decide(obj.node, SHAPE if _shape_only(obj.node) else BOOL))

    def iter(self, obj: Proxy) -> Any:
        # The length is read at run time (a guard), so a different length is a new path.
        length = self.create_proxy("call_method", "size", (obj, 0), {})
        n = int(self._decide(length.node, LENGTH))
        return iter([obj[i] for i in range(n)])

    def length(self, obj: Proxy) -> int:
        # ``len(x.shape)`` (a rank), ``len(x)`` (size 0), ``len(out)`` of a traced tuple: Python's
        # own len, read at run time, so a new rank or batch size is a new path, never a frozen one.
        n = self.create_proxy("call_function", len, (obj,), {})
        return int(self._decide(n.node, LENGTH))

    def _decide(self, predicate: fx.Node, kind: str) -> Any:
        info = BranchInfo(user_frame(), _describe(predicate), kind)
        k = len(self.branches)
        if k < len(self.expected) and self.expected[k] != info:
            raise NondeterministicTraceError(
                f"branch {k} moved from {self.expected[k].source} to {info.source} although the earlier "
                "branches went the same way; the model's Python control flow must depend only on its inputs "
                "and state", source=info.source)
        if k < len(self.decisions):
            self.branches.append(info)
            return self.decisions[k]
        raise Undecided(predicate, info, self._live_nodes())

    def _live_nodes(self) -> list[fx.Node]:
        """Nodes whose values Python code can still reach (through a live Proxy)."""
        nodes: dict[fx.Node, None] = {}
        for ref in self._proxies:
            p = ref()
            if p is None:
                continue
            node = p.__dict__.get("_node") if isinstance(p, Attribute) else p.node
            if node is not None and node.graph is self.graph:
                nodes[node] = None
        return list(nodes)


@dataclass
class Segment:
    """One traced stretch of a path, from the previous branch point to the next (or the end)."""

    graph_module: fx.GraphModule
    imports: tuple[str, ...]  # values computed by earlier segments, after the model inputs
    exports: tuple[str, ...]  # values after the predicate in the output tuple (non-final)
    traced_count: int  # nodes in the trace up to this segment's end: the next segment starts here
    branch: BranchInfo | None  # the branch point this segment ends at (None: last segment)
    node_names: tuple[str, ...] = ()  # names of every traced node up to the end (consistency check)
    signature: FlatSignature | None = None  # last segment: maps outputs back to the user's structure
    decided: list[BranchInfo] = field(default_factory=list)
    n_effects: int = 0  # trailing outputs that only keep in-place updates alive


def _traced(model: nn.Module, signature: FlatSignature, n_inputs: int, decisions: Sequence[Any],
            expected: Sequence[BranchInfo]) -> tuple[BranchingTracer, fx.Graph, Undecided | None, FlatSignature]:
    sig = copy.copy(signature)
    root = fixed_arity_flat_call(model, sig, n_inputs)
    tracer = BranchingTracer(decisions, expected)
    was_training = model.training
    model.eval()  # the same mode autoglm.compile captures in
    try:
        graph = tracer.trace(root)
        stop = None
    except Undecided as exc:
        graph, stop = tracer.graph, exc
    finally:
        model.train(was_training)
    return tracer, graph, stop, sig


def trace_segment(model: nn.Module, signature: FlatSignature, n_inputs: int, decisions: Sequence[Any],
                  expected: Sequence[BranchInfo], start: int, prefix_names: Sequence[str]) -> Segment:
    """Trace ``model`` following ``decisions`` and cut out the segment that starts at node ``start``.

    ``prefix_names`` are the first ``start`` node names of the parent's trace; they
    must match this trace's (same outcomes, same code), else the model is not
    deterministic under tracing and we refuse rather than join wrong values.
    """
    tracer, graph, stop, sig = _traced(model, signature, n_inputs, decisions, expected)
    nodes = list(graph.nodes)
    names = tuple(n.name for n in nodes if n.op != "output")
    if names[:start] != tuple(prefix_names):
        raise NondeterministicTraceError(
            "tracing the same branch outcomes twice produced different graphs; the model's traced code "
            "must depend only on its inputs, state and the branch outcomes", source=stop.info.source if stop else "")
    body = [n for n in nodes[start:] if n.op not in ("placeholder", "output")]
    body_set = set(body)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    out_node = next((n for n in nodes if n.op == "output"), None) if stop is None else None

    # Values this segment reads that an earlier segment computed.
    imports: dict[fx.Node, None] = {}
    readers = body + ([out_node] if out_node is not None else [])
    for n in readers:
        for a in n.all_input_nodes:
            if a not in body_set and a.op not in ("placeholder", "get_attr"):
                imports[a] = None
    if stop is not None and stop.predicate not in body_set and stop.predicate.op not in ("placeholder", "get_attr"):
        imports[stop.predicate] = None

    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for p in placeholders:
        env[p] = g.placeholder(p.name, type_expr=p.type)
    for a in imports:
        env[a] = g.placeholder(a.name)

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env:  # a weight first read in an earlier segment: read it here too
            assert a.op == "get_attr", f"internal: {a.format_node()} used before it is defined"
            env[a] = g.get_attr(a.target)
        return env[a]

    for n in body:
        env[n] = g.node_copy(n, lookup)
    # In-place updates (a buffer's copy_) have no users; returning them keeps any
    # pass's dead-code elimination from dropping them. The runtime drops them again.
    effects = [env[n] for n in body if n.op not in ("placeholder", "output") and has_side_effects(n)]
    if stop is None:
        assert out_node is not None
        outs = out_node.args[0]
        outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        g.output((*[lookup(o) if isinstance(o, fx.Node) else o for o in outs], *effects))
        exports: tuple[str, ...] = ()
        branch = None
        final_sig: FlatSignature | None = sig
    else:
        live = [n for n in stop.live if n in body_set and n.op not in ("placeholder", "get_attr")]
        exports = tuple(n.name for n in live)
        g.output((lookup(stop.predicate), *[env[n] for n in live], *effects))
        branch = stop.info
        final_sig = None
    gm = fx.GraphModule(tracer.root, g, type(model).__name__)
    return Segment(gm, tuple(a.name for a in imports), exports, len(names), branch, names, final_sig,
                   list(tracer.branches), len(effects))

