"""The project's invariants, checked after every pass.

``graph.lint()`` checks FX's own rules (topological order, targets exist). On
top of that: every compute node carries shape metadata, the output signature
(number, shapes and dtypes of outputs) is the one captured, and every value that
crosses a partition boundary is a tensor that can be transferred.
"""
from __future__ import annotations

from typing import Sequence

import torch.fx as fx

from autoglm.ir.meta import TensorSpec, annotation, has_annotation, iter_compute_nodes, output_specs

__all__ = ["VerificationError", "verify_graph", "output_signature"]


class VerificationError(Exception):
    def __init__(self, message: str, node: fx.Node | None = None):
        super().__init__(message)
        self.node = node


def output_signature(gm: fx.GraphModule) -> list[TensorSpec]:
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    sig: list[TensorSpec] = []
    values = out.args[0]
    values = values if isinstance(values, (tuple, list)) else (values,)
    for v in values:
        if isinstance(v, fx.Node):
            sig.extend(output_specs(v))
    return sig


def verify_graph(gm: fx.GraphModule, expected_outputs: Sequence[TensorSpec] | None = None) -> None:
    """Raise ``VerificationError`` (with the offending node) if an invariant breaks."""
    try:
        gm.graph.lint()
    except Exception as exc:  # lint raises RuntimeError with a message naming the node
        raise VerificationError(f"graph.lint(): {exc}") from exc
    for node in iter_compute_nodes(gm.graph):
        ann = node.meta.get("autoglm")
        if ann is None or ann.produces_tensors is None:
            raise VerificationError("node was never annotated (no shape metadata)", node)
        if ann.produces_tensors and not ann.outputs:
            raise VerificationError("node produces tensors but has no shape metadata", node)
    if expected_outputs is not None:
        got = output_signature(gm)
        if [(s.shape, s.dtype) for s in got] != [(s.shape, s.dtype) for s in expected_outputs]:
            raise VerificationError(
                f"output signature changed: expected {[(s.shape, str(s.dtype)) for s in expected_outputs]}, "
                f"got {[(s.shape, str(s.dtype)) for s in got]}"
            )
    # Partition boundaries: a consumer in another partition must receive tensors only.
    for node in iter_compute_nodes(gm.graph):
        p = annotation(node).partition if has_annotation(node) else None
        if p is None:
            continue
        for user in node.users:
            if user.op == "output" or not has_annotation(user):
                continue
            q = annotation(user).partition
            if q is not None and q != p and not output_specs(node):
                raise VerificationError(f"value crosses partition {p} -> {q} but is not a tensor", node)
