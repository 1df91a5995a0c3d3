"""Typed accessors over ``node.meta``.

Every fact the compiler attaches to a node lives in one ``NodeAnnotation``
dataclass under a single key, so the code base never spreads loose string keys
around. Shapes come either from ShapeProp-style ``tensor_meta`` (symbolic
frontend, our own annotator) or from ``val`` fake tensors (torch.export); the
accessors read both.
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
]

_KEY = "autoglm"


@dataclass
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

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


def _spec_of(value: Any) -> list[TensorSpec]:
    if isinstance(value, torch.Tensor):
        return [TensorSpec(tuple(int(d) for d in value.shape), value.dtype)]
    if isinstance(value, (list, tuple)):
        out: list[TensorSpec] = []
        for v in value:
            out.extend(_spec_of(v))
        return out
    # ShapeProp's TensorMetadata is a NamedTuple with shape and dtype.
    if hasattr(value, "shape") and hasattr(value, "dtype") and isinstance(value.dtype, torch.dtype):
        return [TensorSpec(tuple(int(d) for d in value.shape), value.dtype)]
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
