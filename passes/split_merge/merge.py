"""Fuse runs of light nodes into one submodule (a helper of the ``split_merge`` pass).

A *run* is a sequence of compute nodes that are adjacent in graph order (only
placeholders and ``get_attr`` nodes may sit between them) with a single exit:
every node but the last is used only inside the run, so the run computes one
value. It may read any number of outside values, which become the fused
module's inputs. The fused module is an ``fx.GraphModule`` named after the ops
it holds (``fused_add_layer_norm``); weights read through ``get_attr`` move into
it, and the inner nodes keep their annotations so the cost model can still
price them one by one.

Why a fused call is cheaper than the nodes it replaces (it must be: on CPU the
point of merging small ops is that they cost more in dispatch than in math):
inside the fused module each op is written in its cheapest exact spelling, the
direct C binding of the same kernel. ``nn.LayerNorm``/``nn.GELU``/... module
calls become ``torch.layer_norm``/``F.gelu`` calls on the module's own weights,
aten overloads (``aten.add.Tensor``, whose Python ``OpOverload`` call costs about
a microsecond) become ``torch.add``, ``F.softmax`` becomes ``torch.softmax``,
and eval-mode dropout disappears. Same kernels, same bits. The fused module
itself is called without ``nn.Module`` hook dispatch (``FusedGraphModule``).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.meta import annotation
from autoglm.ir.ops import get_attr_value

from autoglm.passes.split_merge.split import drop_unused_get_attrs, unique_attr_name

__all__ = ["FusedGraphModule", "find_runs", "fuse_run", "op_label"]

_COMPUTE = ("call_function", "call_method", "call_module")
aten = torch.ops.aten


class FusedGraphModule(fx.GraphModule):
    """A fused run of nodes. Internal to a compiled graph, so calling it is calling its
    generated ``forward``: no ``nn.Module`` hook dispatch (hooks on it would not run)."""

    def recompile(self) -> Any:
        result = super().recompile()
        # Every GraphModule instance has its own class; recompile() installed a wrapped
        # __call__ there, replace it by the generated forward itself.
        type(self).__call__ = type(self).forward
        return result


# Same kernel, cheaper call: aten overloads whose torch binding takes the same arguments.
_ATEN_TO_TORCH: dict[Any, Callable[..., Any]] = {
    aten.add.Tensor: torch.add, aten.sub.Tensor: torch.sub, aten.mul.Tensor: torch.mul,
    aten.div.Tensor: torch.div, aten.relu.default: torch.relu, aten.tanh.default: torch.tanh,
    aten.sigmoid.default: torch.sigmoid, aten.gelu.default: F.gelu, aten.softmax.int: torch.softmax,
    aten.layer_norm.default: torch.layer_norm, aten.transpose.int: torch.transpose,
    aten.matmul.default: torch.matmul, aten.bmm.default: torch.bmm, aten.reshape.default: torch.reshape,
    aten.permute.default: torch.permute, aten.unsqueeze.default: torch.unsqueeze, aten.t.default: torch.t,
    aten.mean.dim: torch.mean,
}
_ATEN_TO_METHOD = {aten.view.default: "view"}
_ELEMENTWISE_MODULES: dict[type, Callable[..., Any]] = {nn.ReLU: torch.relu, nn.Tanh: torch.tanh,
                                                        nn.Sigmoid: torch.sigmoid}


def op_label(node: fx.Node, gm: fx.GraphModule) -> str:
    """A short snake_case name of what a node does: ``layer_norm``, ``gelu``, ``matmul``."""
    if node.op == "call_module":
        name = type(gm.get_submodule(str(node.target))).__name__
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    elif node.op == "call_method":
        name = str(node.target)
    else:
        t = node.target
        name = getattr(t, "_opname", None) or getattr(t, "__name__", None) or str(t)
    return re.sub(r"\W+", "_", name).strip("_").lower() or "op"


def find_runs(graph: fx.Graph, mergeable: Callable[[fx.Node], bool], load: Callable[[fx.Node], float],
              cap: float, min_length: int = 2) -> list[list[fx.Node]]:
    """Maximal single-exit runs of adjacent mergeable nodes whose summed load stays <= ``cap``.

    Greedy from the front of each stretch of mergeable nodes: a run starting at
    ``s`` takes the longest valid end, then the next run starts after it. The
    result is stable: running it again on the rewritten graph finds nothing new.
    """
    stretches: list[list[fx.Node]] = []
    current: list[fx.Node] = []
    for n in graph.nodes:
        if n.op not in _COMPUTE:
            continue  # placeholders and get_attr nodes do not break adjacency
        if mergeable(n):
            if current and annotation(current[-1]).partition != annotation(n).partition:
                stretches.append(current)  # never fuse across a partition boundary
                current = []
            current.append(n)
        else:
            if current:
                stretches.append(current)
            current = []
    if current:
        stretches.append(current)
    runs = []
    for seq in stretches:
        runs.extend(_runs_in(seq, load, cap, min_length))
    return runs


def _runs_in(seq: list[fx.Node], load: Callable[[fx.Node], float], cap: float,
             min_length: int) -> list[list[fx.Node]]:
    pos = {n: i for i, n in enumerate(seq)}
    # reach[i]: the last position (in seq) that uses seq[i]; inf when a user lies outside seq.
    reach = [max((pos.get(u, math.inf) for u in n.users), default=-1) for n in seq]
    runs, s = [], 0
    while s < len(seq):
        best, furthest, total, e = s, -1.0, load(seq[s]), s
        while e + 1 < len(seq):
            furthest = max(furthest, reach[e])  # seq[e] stops being the last node
            if furthest == math.inf:
                break
            e += 1
            total += load(seq[e])
            if total > cap:
                break
            if furthest <= e:
                best = e
        if best - s + 1 >= min_length:
            runs.append(seq[s:best + 1])
            s = best + 1
        else:
            s += 1
    return runs


def fuse_run(gm: fx.GraphModule, run: Sequence[fx.Node], cost_s: float) -> fx.Node:
    """Replace ``run`` by one ``call_module`` of a new fused ``GraphModule``; returns that node."""
    members = set(run)
    sub = fx.Graph()
    root = nn.Module()
    env: dict[fx.Node, fx.Node] = {}
    outside: list[fx.Node] = []
    for n in run:  # placeholders first, in order of first use
        for a in n.all_input_nodes:
            if a not in members and a.op != "get_attr" and a not in env:
                env[a] = sub.placeholder(a.name)
                outside.append(a)
    read_attrs: list[fx.Node] = []
    for n in run:
        for a in n.all_input_nodes:
            if a.op == "get_attr" and a not in env:
                env[a] = _constant(sub, root, get_attr_value(a, gm), str(a.target))
                read_attrs.append(a)
        env[n] = _emit(sub, root, n, gm, env)
    sub.output(env[run[-1]])
    labels = list(dict.fromkeys(op_label(n, gm) for n in run))
    label = "_".join(labels[:4]) + ("_etc" if len(labels) > 4 else "")
    name = unique_attr_name(gm, f"fused_{label}")
    class_name = "".join(part.capitalize() for part in name.split("_"))
    gm.add_submodule(name, FusedGraphModule(root, sub, class_name=class_name))
    with gm.graph.inserting_before(run[-1]):
        fused = gm.graph.call_module(name, tuple(outside))
    fused.meta["stack_trace"] = run[-1].meta.get("stack_trace")
    annotation(fused).tags["merged"] = {"nodes": [n.name for n in run], "ops": labels, "cost_s": cost_s}
    annotation(fused).partition = annotation(run[-1]).partition
    run[-1].replace_all_uses_with(fused)
    for n in reversed(run):
        gm.graph.erase_node(n)
    drop_unused_get_attrs(gm, read_attrs)
    return fused


def _constant(sub: fx.Graph, root: nn.Module, value: Any, path: str) -> fx.Node:
    """A ``get_attr`` in the fused graph for a tensor it reads (shared, not copied)."""
    name = unique_attr_name(root, path.rsplit(".", 1)[-1])
    setattr(root, name, value)
    return sub.get_attr(name)


def _emit(sub: fx.Graph, root: nn.Module, n: fx.Node, gm: fx.GraphModule, env: dict[fx.Node, fx.Node]) -> fx.Node:
    """``n`` rewritten into the fused graph, in its cheapest exact spelling."""
    args = fx.node.map_arg(n.args, env.__getitem__)
    kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
    new: fx.Node | None = None
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        kind = type(mod)
        short = str(n.target).rsplit(".", 1)[-1]
        if kind is nn.Dropout and not mod.training and len(args) == 1 and not kwargs:
            return args[0]  # identity in eval mode
        if kind is nn.LayerNorm and len(args) == 1 and not kwargs:
            w = _constant(sub, root, mod.weight, f"{short}_weight") if mod.weight is not None else None
            b = _constant(sub, root, mod.bias, f"{short}_bias") if mod.bias is not None else None
            new = sub.call_function(torch.layer_norm, (args[0], tuple(mod.normalized_shape), w, b, mod.eps, True))
        elif kind is nn.GELU and len(args) == 1 and not kwargs:
            new = sub.call_function(F.gelu, (args[0],), {"approximate": mod.approximate})
        elif kind in _ELEMENTWISE_MODULES and not getattr(mod, "inplace", False) and len(args) == 1:
            new = sub.call_function(_ELEMENTWISE_MODULES[kind], (args[0],))
        elif kind is nn.Softmax and mod.dim is not None and len(args) == 1:
            new = sub.call_function(torch.softmax, (args[0], mod.dim))
        else:  # anything else is called as the module it is, shared with the parent
            target = unique_attr_name(root, short)
            root.add_module(target, mod)
            new = sub.call_module(target, args, kwargs)
    elif n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
        if n.target in _ATEN_TO_TORCH:
            new = sub.call_function(_ATEN_TO_TORCH[n.target], args, kwargs)
        elif n.target in _ATEN_TO_METHOD and not kwargs:
            new = sub.call_method(_ATEN_TO_METHOD[n.target], args)
    elif n.op == "call_function" and n.target is F.softmax:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is not None and kwargs.get("dtype") is None and len(args) <= 2:
            new = sub.call_function(torch.softmax, (args[0], dim))
    if new is None:
        new = sub.create_node(n.op, n.target, args, kwargs, name=n.name)
    new.meta = dict(n.meta)  # keeps shapes, FLOPs and bytes for the cost model
    return new
