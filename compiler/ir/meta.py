"""Typed accessors over ``node.meta``.

Every fact the compiler attaches to a node lives in one ``NodeAnnotation``
dataclass under a single key, so the code base never spreads loose string keys
around. Shapes come either from ShapeProp-style ``tensor_meta`` (symbolic
frontend, our own annotator) or from ``val`` fake tensors (torch.export); the
accessors read both.

Symbolic shapes. A graph captured with dynamic dimensions (``torch.export`` with
``dynamic_shapes``) takes other sizes than the example's along those dimensions.
A ``TensorSpec`` keeps the example's sizes (the *hints*: what FLOPs, bytes and
costs are computed at) and, next to them, which dimensions are symbolic
(``symbolic``: the symbol of each size that may change, such as ``"s13"``, None
for a fixed one). A pass that would write a size into the graph (a split that
slices a dimension at the example's size) must ask ``dim_is_static`` first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx

__all__ = [
    "NodeAnnotation",
    "TensorSpec",
    "annotation",
    "has_annotation",
    "set_annotation",
    "output_specs",
    "output_spec",
    "iter_compute_nodes",
    "private_copy",
    "symbolic_dims",
    "has_symbolic_shapes",
    "dim_is_static",
]

_KEY = "autoglm"


@dataclass
class TensorSpec:
    shape: tuple[int, ...]  # the example's sizes (hints, for symbolic dimensions)
    dtype: torch.dtype
    # Per dimension: the symbol of a size that may change between calls ("s13", "2*s13"), None
    # for a size fixed to the example. The whole field is None when nobody knows (a graph
    # without fake values, such as the symbolic frontend's, or one loaded from an artifact).
    symbolic: tuple[str | None, ...] | None = None

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Dimensions whose size may change between calls (empty when none are known)."""
        return tuple(d for d, sym in enumerate(self.symbolic or ()) if sym is not None)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class NodeAnnotation:
    """What the annotator and the passes know about one node."""

    outputs: list[TensorSpec] = field(default_factory=list)
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    param_bytes: int = 0
    latency_s: float | None = None  # measured, median of repeats, when asked for
    cost_s: float | None = None  # the cost model's estimate (analytic or measured)
    partition: int | None = None
    # Set by the annotator: None means this node was never run through it (a check can then fire).
    produces_tensors: bool | None = None
    created_by: str = "capture"  # provenance: the pass that created the node
    # Free-form facts a pass wants the report to show ("split": {...}, "int8": {...}).
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written


def has_annotation(node: fx.Node) -> bool:
    return _KEY in node.meta


def annotation(node: fx.Node) -> NodeAnnotation:
    """The node's annotation, created empty on first access."""
    ann = node.meta.get(_KEY)
    if ann is None:
        ann = NodeAnnotation()
        node.meta[_KEY] = ann
    return ann


def set_annotation(node: fx.Node, ann: NodeAnnotation) -> None:
    """Give ``node`` an existing annotation (a rewrite carrying facts over to a replacement)."""
    node.meta[_KEY] = ann


def _symbol(size: Any) -> str | None:
    """The symbol of a size that may change between calls; None for a fixed one.

    Read off the SymInt's expression without evaluating it: ``int(size)`` would add a
    guard to the shape environment, i.e. specialise the dimension to the example.
    """
    if not isinstance(size, torch.SymInt):
        return None
    expr = size.node.expr
    return str(expr) if getattr(expr, "free_symbols", None) else None


def symbolic_dims(value: Any) -> tuple[str | None, ...] | None:
    """Per dimension of a tensor value (a fake tensor from torch.export), its symbol or None.

    None for a real tensor: its sizes say nothing about which of them may change.
    """
    if isinstance(value, torch.Tensor) and not isinstance(value, torch._subclasses.FakeTensor):
        return None
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(_symbol(d) for d in shape)


def _hint(size: Any) -> int:
    """A size as an int: a symbolic size's example value, read without guarding on it (see ``_symbol``)."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        if hint is None:  # unbacked (data-dependent) size: no example value
            raise ValueError("size without a hint")
        return int(hint)
    return int(size)


def _spec_of(value: Any) -> list[TensorSpec]:
    if isinstance(value, torch.Tensor):
        return [TensorSpec(tuple(_hint(d) for d in value.shape), value.dtype, symbolic_dims(value))]
    if isinstance(value, (list, tuple)):
        out: list[TensorSpec] = []
        for v in value:
            out.extend(_spec_of(v))
        return out
    # ShapeProp's TensorMetadata is a NamedTuple with shape and dtype.
    if hasattr(value, "shape") and hasattr(value, "dtype") and isinstance(value.dtype, torch.dtype):
        return [TensorSpec(tuple(_hint(d) for d in value.shape), value.dtype)]
    return []


def output_specs(node: fx.Node) -> list[TensorSpec]:
    """Shapes and dtypes of the tensors a node produces (empty when unknown)."""
    ann = node.meta.get(_KEY)
    if ann is not None and ann.outputs:
        return ann.outputs
    for key in ("val", "tensor_meta"):
        if key in node.meta:
            try:
                specs = _spec_of(node.meta[key])
            except (TypeError, ValueError):  # symbolic sizes
                specs = []
            if specs:
                return specs
    return []


def output_spec(node: fx.Node) -> TensorSpec | None:
    specs = output_specs(node)
    return specs[0] if len(specs) == 1 else None


def has_symbolic_shapes(graph: fx.Graph) -> bool:
    """Whether some graph input has a dimension known to change between calls."""
    return any(s.dynamic_dims for n in graph.nodes if n.op == "placeholder" for s in output_specs(n))


def dim_is_static(node: fx.Node, dim: int) -> bool:
    """Whether dimension ``dim`` of ``node``'s tensor has the example's size on every call.

    In a graph with symbolic shapes a dimension counts as static only when it is
    known to be (a node whose symbolic dims are unknown might take any size); in a
    graph without them, every size is the example's as far as anyone can tell.
    """
    spec = output_spec(node)
    if spec is not None and spec.symbolic is not None:
        return spec.symbolic[dim] is None
    return not has_symbolic_shapes(node.graph)


def iter_compute_nodes(graph: fx.Graph) -> Iterator[fx.Node]:
    """Nodes that do work (not placeholders, attribute reads or the output)."""
    for node in graph.nodes:
        if node.op in ("call_function", "call_method", "call_module"):
            yield node


def private_copy(gm: "torch.fx.GraphModule") -> "torch.fx.GraphModule":
    """A deep copy whose annotations are its own: ``copy.deepcopy`` shares ``node.meta`` values."""
    import copy

    clone = copy.deepcopy(gm)
    for n in clone.graph.nodes:
        n.meta = {k: copy.copy(v) if isinstance(v, NodeAnnotation) else v for k, v in n.meta.items()}
    return clone
