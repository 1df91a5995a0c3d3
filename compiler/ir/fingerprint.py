"""A fingerprint of a graph module's structure, to hold passes to their ``modified`` flag.

A pass that changes a node in place (a new target, new arguments) and reports
``modified=False`` would skip re-annotation and verification, and the compiled
model would be wrong without any check firing. The pass manager compares the
fingerprint before and after every pass instead of trusting the flag.

What counts: every node's name, op, target and arguments (nodes by name), and
which submodule object and which parameter/buffer tensor sits at each path (by
identity, shape and dtype). Tensor *values* are not hashed: that would cost a
pass over every weight after every pass.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.fx as fx

__all__ = ["graph_fingerprint"]


def _key(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return ("%", value.name)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), _key(v)) for k, v in value.items()))
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), tuple(value.shape), str(value.dtype))
    if callable(value) and not isinstance(value, type):
        return ("fn", getattr(value, "__module__", ""), getattr(value, "__qualname__", repr(value)), id(value))
    return repr(value)


def graph_fingerprint(gm: fx.GraphModule) -> str:
    h = hashlib.sha1()
    for n in gm.graph.nodes:
        h.update(repr((n.name, n.op, _key(n.target), _key(n.args), _key(n.kwargs))).encode())
    for name, mod in gm.named_modules():
        h.update(f"m:{name}:{type(mod).__qualname__}:{id(mod)}".encode())
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        h.update(f"t:{name}:{id(t)}:{tuple(t.shape)}:{t.dtype}".encode())
    return h.hexdigest()
