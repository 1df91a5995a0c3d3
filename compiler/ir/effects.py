"""The one rule for "does this node have side effects?", and the DCE that honours it.

FX's ``Node.is_impure()`` knows placeholders, outputs and ops registered as
side-effecting, but treats in-place updates as pure: ``buf.copy_(x)`` or
``aten.add_.Tensor`` with no users looks dead and would be dropped, so a module
that updates a buffer in ``forward`` (a counter, a running memory) silently
stops doing it. Every dead-code elimination and every "may this node move or
merge?" question in the project asks ``has_side_effects`` instead.

    has_side_effects(buf.add_(1))    -> True   (in-place method)
    has_side_effects(x[i] = v)       -> True   (operator.setitem)
    has_side_effects(aten.copy_)     -> True   (mutable schema)
    has_side_effects(torch.relu(x))  -> False
"""
from __future__ import annotations

import operator

import torch.fx as fx
from torch.fx.node import _side_effectful_functions

__all__ = ["has_side_effects", "eliminate_dead_code"]


def _inplace_name(name: str) -> bool:
    return name.endswith("_") and not name.startswith("__")


def has_side_effects(node: fx.Node) -> bool:
    """True if running ``node`` changes state beyond producing its value (inputs and the output count:
    removing them changes the graph's signature)."""
    if node.op in ("placeholder", "output"):
        return True
    if node.op == "call_method":
        return _inplace_name(str(node.target))
    if node.op == "call_function":
        if node.target is operator.setitem or node.target in _side_effectful_functions:
            return True
        schema = getattr(node.target, "_schema", None)
        if schema is not None:
            return bool(schema.is_mutable)
        return _inplace_name(getattr(node.target, "__name__", ""))
    if node.op == "call_module" and node.graph.owning_module is not None:
        return node.is_impure()  # modules may declare themselves impure; FX needs the owning module to ask
    return False


def eliminate_dead_code(gm: fx.GraphModule) -> bool:
    """FX's DCE with the project's side-effect rule; also drops submodules nothing calls any more."""
    modified = gm.graph.eliminate_dead_code(is_impure_node=has_side_effects)
    if modified:
        gm.delete_all_unused_submodules()
    return modified
