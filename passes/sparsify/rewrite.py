"""Graph edits shared by ``sparsify`` and its structured pruning (helper, not a pass).

Rewritten layers never touch the user's tensors (the captured graph shares
them with the user's model): new modules are installed under a pass-owned
``sparsified.`` namespace and the node is pointed at them, in the spelling it
already had:

- ``call_module`` (symbolic frontend): the node's target becomes the new module;
- ``aten.linear``/``aten.conv2d``/``aten.batch_norm`` with ``get_attr`` weights
  (export frontend): new ``get_attr`` nodes read the new module's tensors, so
  the graph stays aten-level and ``linear_view`` still sees a linear;
- a sparse-format module (CSR, BSR, 2:4) replaces the node by a
  ``call_module`` in both spellings.
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn

from autoglm.ir.meta import annotation, set_annotation

__all__ = ["NAMESPACE", "layer_name", "install_module", "point_node_at", "remove_dead_attrs"]

NAMESPACE = "sparsified"


def layer_name(node: fx.Node, module: nn.Module | None, weight_node: fx.Node | None) -> str:
    """A readable name for a layer: its module path, or its weight's path without ``.weight``."""
    if module is not None:
        return str(node.target)
    if weight_node is not None:
        target = str(weight_node.target)
        return target[: -len(".weight")] if target.endswith(".weight") else target
    return node.name


def install_module(gm: fx.GraphModule, name: str, module: nn.Module) -> str:
    """Register ``module`` under the pass namespace with a unique path; returns the path."""
    if not hasattr(gm, NAMESPACE):
        gm.add_module(NAMESPACE, nn.Module())
    holder = getattr(gm, NAMESPACE)
    base = name.replace(".", "_")
    attr, i = base, 1
    while hasattr(holder, attr):
        i += 1
        attr = f"{base}_{i}"
    holder.add_module(attr, module)
    return f"{NAMESPACE}.{attr}"


def _replace_arg(node: fx.Node, index: int, keyword: str, value: Any) -> None:
    if len(node.args) > index:
        args = list(node.args)
        args[index] = value
        node.args = tuple(args)
    elif keyword in node.kwargs or value is not None:
        kwargs = dict(node.kwargs)
        kwargs[keyword] = value
        node.kwargs = kwargs


def point_node_at(gm: fx.GraphModule, node: fx.Node, path: str, module: nn.Module,
                  tensor_args: dict[int, tuple[str, str]] | None = None) -> fx.Node:
    """Make ``node`` compute with the module installed at ``path``; returns the node now doing it.

    ``tensor_args`` maps argument positions of a functional node to
    ``(keyword, attribute of module)`` (e.g. ``{1: ("weight", "weight")}``);
    without it a functional node is replaced by a ``call_module`` on ``module``.
    """
    if node.op == "call_module":
        node.target = path
        return node
    if tensor_args is None:
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(path, (node.args[0],))
        set_annotation(new, annotation(node))  # keep tags and shapes; provenance is reset by the manager
        if "stack_trace" in node.meta:
            new.meta["stack_trace"] = node.meta["stack_trace"]
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        return new
    for index, (keyword, attr) in tensor_args.items():
        value = getattr(module, attr, None)
        if value is None:
            _replace_arg(node, index, keyword, None)
            continue
        with gm.graph.inserting_before(node):
            getter = gm.graph.get_attr(f"{path}.{attr}")
        _replace_arg(node, index, keyword, getter)
    return node


def remove_dead_attrs(gm: fx.GraphModule) -> None:
    """Drop ``get_attr`` nodes nobody reads and the modules only they kept alive."""
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
