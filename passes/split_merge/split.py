"""Exact shards of one heavy node (a helper of the ``split_merge`` pass).

Each split keeps the math of the original node and only regroups it:

- Linear by output features: ``y = cat([x @ W[r_i].T + b[r_i]], -1)``;
- Linear by input features: ``y = sum_i x[..., c_i] @ W[:, c_i].T`` (+ bias once);
- Conv2d by output channels: ``y = cat([conv(x, W[r_i], b[r_i])], channel_dim)``;
- batched matmul / attention scores by a batch dimension (batch or heads):
  ``y = cat([a[.., i, ..] @ b[.., i, ..]], d)``.

Only a dimension whose size is the example's on every call is split: the slices
name fixed bounds, so splitting a symbolic dimension (a dynamic batch) would bake
the example's size into the graph and drop rows of a larger batch. Weight
dimensions (output/input features, output channels) are always fixed; a matmul
is split along a static batch dimension (the heads) or not at all.

Shards are written in the spelling of the node they replace: ``nn.Linear`` /
``nn.Conv2d`` submodules for ``call_module`` nodes, and functional calls with
``get_attr`` weights (aten overloads in an export graph) otherwise, so the later
passes that look for linears and convolutions still find them. Every node a
split creates is tagged ``tags["split"]`` with its share of the original cost.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import skip_init

from autoglm.ir.meta import annotation, dim_is_static, output_specs
from autoglm.ir.ops import conv_view, linear_view, matmul_view

__all__ = ["SplitChoice", "split_choice", "apply_split", "unique_attr_name", "drop_unused_get_attrs"]

aten = torch.ops.aten


@dataclass
class SplitChoice:
    """How a node can be split: ``how`` names the dimension, ``extent`` its size."""

    how: str  # "linear_out" | "linear_in" | "conv_out" | "matmul_batch"
    extent: int  # the most shards the dimension allows
    dim: int = -1  # the batch dimension for matmul splits


def _rank(node: fx.Node) -> int | None:
    specs = output_specs(node)
    return len(specs[0].shape) if len(specs) == 1 else None


def split_choice(node: fx.Node, gm: fx.GraphModule, linear_dim: str, shards: int) -> SplitChoice | str:
    """How ``node`` can be split into ``shards``, or the reason it cannot."""
    lv = linear_view(node, gm)
    if lv is not None:
        n_out, n_in = lv.weight.shape
        by = linear_dim
        if by == "auto":  # output split: no change of summation order; input split when outputs are few
            by = "out" if n_out >= shards else "in"
        return SplitChoice("linear_out", n_out) if by == "out" else SplitChoice("linear_in", n_in)
    cv = conv_view(node, gm)
    if cv is not None:
        if cv.groups != 1:
            return "grouped convolution (groups != 1) is not split"
        return SplitChoice("conv_out", int(cv.weight.shape[0]))
    mv = matmul_view(node, gm)
    if mv is not None:
        a, b = output_specs(mv.a), output_specs(mv.b)
        if len(a) != 1 or len(b) != 1:
            return "matmul operands have no shape metadata"
        sa, sb = a[0].shape, b[0].shape
        if len(sa) < 3 or len(sa) != len(sb) or sa[:-2] != sb[:-2]:
            return f"matmul {list(sa)} @ {list(sb)} has no shared batch dimension to split"
        batch = list(sa[:-2])
        # Sizes that change between calls cannot be cut at the example's bounds (module docstring).
        fixed = [d for d in range(len(batch)) if dim_is_static(mv.a, d) and dim_is_static(mv.b, d)]
        if not fixed:
            return (f"every batch dimension of matmul {list(sa)} @ {list(sb)} is symbolic (its size changes "
                    f"between calls); a split would fix it to the example's")
        dim = max(fixed, key=lambda d: (batch[d], d))  # largest; ties -> heads over batch
        return SplitChoice("matmul_batch", int(batch[dim]), dim)
    return "no exact split for this op (supported: Linear, Conv2d, batched matmul)"


def _chunks(n: int, k: int, sizes: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``k`` (start, length) pieces of ``range(n)``: ``sizes`` when given, else sizes differing by at most one."""
    if sizes is None:
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    if len(sizes) != k or sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"shard sizes {list(sizes)} do not cut {n} into {k} non-empty pieces")
    out, start = [], 0
    for length in sizes:
        out.append((start, length))
        start += length
    return out


def unique_attr_name(gm: nn.Module, base: str) -> str:
    """A free attribute name on ``gm`` derived from ``base`` (dots become underscores)."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in base).strip("_") or "attr"
    if base[0].isdigit():
        base = f"m_{base}"
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _is_aten(node: fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload)


class _Builder:
    """Creates nodes before ``node`` in its spelling (aten or torch) and tags them."""

    def __init__(self, gm: fx.GraphModule, node: fx.Node, how: str, pieces: list[tuple[int, int]], cost_s: float):
        self.gm, self.graph, self.node = gm, gm.graph, node
        self.aten = _is_aten(node)
        self.tag = {"of": node.name, "how": how, "shards": len(pieces)}
        extent = sum(length for _, length in pieces)
        self.shares = [cost_s * length / extent for _, length in pieces]  # cost in proportion to the slice

    def mark(self, n: fx.Node, role: str, shard: int | None = None) -> fx.Node:
        tag = dict(self.tag, role=role, cost_s=self.shares[shard] if role == "shard" and shard is not None else 0.0)
        if shard is not None:
            tag["shard"] = shard
        annotation(n).tags["split"] = tag
        n.meta["stack_trace"] = self.node.meta.get("stack_trace")
        annotation(n).partition = annotation(self.node).partition  # when run after partitioning
        return n

    def narrow(self, x: fx.Node, dim: int, start: int, length: int) -> fx.Node:
        if self.aten:
            n = self.graph.call_function(aten.slice.Tensor, (x, dim, start, start + length))
        else:
            n = self.graph.call_function(torch.narrow, (x, dim, start, length))
        return self.mark(n, "slice")

    def combine_cat(self, parts: list[fx.Node], dim: int) -> fx.Node:
        fn = aten.cat.default if self.aten else torch.cat
        return self.mark(self.graph.call_function(fn, (parts, dim)), "combine")

    def combine_sum(self, parts: list[fx.Node]) -> fx.Node:
        fn = aten.add.Tensor if self.aten else operator.add
        total = parts[0]
        for p in parts[1:]:
            total = self.mark(self.graph.call_function(fn, (total, p)), "combine")
        return total

    def constant(self, base: str, value: torch.Tensor, like: torch.Tensor) -> fx.Node:
        name = unique_attr_name(self.gm, base)
        t = value.detach().clone()
        if isinstance(like, nn.Parameter):
            setattr(self.gm, name, nn.Parameter(t, requires_grad=like.requires_grad))
        else:  # a buffer (e.g. weights frozen from Dynamo inputs): registered, so get_attr finds it
            self.gm.register_buffer(name, t)
        n = self.graph.get_attr(name)
        annotation(n).tags["split"] = dict(self.tag, role="weight", cost_s=0.0)
        return n

    def submodule(self, base: str, module: nn.Module, args: tuple) -> fx.Node:
        name = unique_attr_name(self.gm, base)
        self.gm.add_submodule(name, module)
        return self.graph.call_module(name, args)


def _weight_pieces(w: torch.Tensor, b: torch.Tensor | None, by_out: bool, start: int, length: int,
                   first: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if by_out:
        return w[start:start + length], (b[start:start + length] if b is not None else None)
    return w[:, start:start + length], (b if first else None)  # input split: bias added once


def _shard_module(template: nn.Module, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
    """A copy of ``template`` (Linear/Conv2d) holding ``w`` and ``b``, without random init."""
    if isinstance(template, nn.Linear):
        mod = skip_init(nn.Linear, w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    else:
        c: Any = template
        mod = skip_init(nn.Conv2d, w.shape[1], w.shape[0], c.kernel_size, stride=c.stride, padding=c.padding,
                        dilation=c.dilation, groups=1, bias=b is not None, device=w.device, dtype=w.dtype)
    mod.weight = nn.Parameter(w.detach().clone(), requires_grad=template.weight.requires_grad)
    if b is not None:
        mod.bias = nn.Parameter(b.detach().clone(), requires_grad=template.weight.requires_grad)
    mod.train(template.training)
    return mod


def _split_weighted(gm: fx.GraphModule, node: fx.Node, choice: SplitChoice, pieces: list[tuple[int, int]],
                    cost_s: float) -> fx.Node:
    view: Any = linear_view(node, gm) if choice.how.startswith("linear") else conv_view(node, gm)
    is_conv = choice.how == "conv_out"
    by_out = choice.how != "linear_in"
    build = _Builder(gm, node, choice.how, pieces, cost_s)
    weight_arg = node.args[1] if node.op == "call_function" and len(node.args) > 1 else None
    if view.module is not None:
        base = str(node.target)
    elif isinstance(weight_arg, fx.Node) and weight_arg.op == "get_attr":
        base = str(weight_arg.target).removesuffix(".weight")
    else:
        base = node.name
    rank = _rank(node) or 2
    parts = []
    with gm.graph.inserting_before(node):
        for i, (start, length) in enumerate(pieces):
            w, b = _weight_pieces(view.weight, view.bias, by_out, start, length, first=i == 0)
            x = view.input if by_out else build.narrow(view.input, -1, start, length)
            if view.module is not None:
                y = build.submodule(f"{base}_shard{i}", _shard_module(view.module, w, b), (x,))
            else:
                w_node = build.constant(f"{base}_weight_shard{i}", w, view.weight)
                b_node = build.constant(f"{base}_bias_shard{i}", b, view.bias) if b is not None else None
                y = gm.graph.call_function(node.target, *_with_operands(node, x, w_node, b_node))
            parts.append(build.mark(y, "shard", i))
        if not by_out:
            return build.combine_sum(parts)
        channel_dim = (1 if rank == 4 else 0) if is_conv else -1
        return build.combine_cat(parts, channel_dim)


def _with_operands(node: fx.Node, x: fx.Node, w: fx.Node, b: fx.Node | None) -> tuple[tuple, dict]:
    """``node``'s arguments (stride, padding...) with input, weight and bias replaced."""
    args, kwargs = list(node.args), dict(node.kwargs)
    for i, (key, value) in enumerate((("input", x), ("weight", w), ("bias", b))):
        if i < len(args):
            args[i] = value
        elif key in kwargs or value is not None:
            kwargs[key] = value
    return tuple(args), kwargs


def _split_matmul(gm: fx.GraphModule, node: fx.Node, choice: SplitChoice, pieces: list[tuple[int, int]],
                  cost_s: float) -> fx.Node:
    mv = matmul_view(node, gm)
    assert mv is not None
    build = _Builder(gm, node, choice.how, pieces, cost_s)
    fn: Any = node.target if node.op == "call_function" else torch.matmul
    parts = []
    with gm.graph.inserting_before(node):
        for i, (start, length) in enumerate(pieces):
            a = build.narrow(mv.a, choice.dim, start, length)
            b = build.narrow(mv.b, choice.dim, start, length)
            parts.append(build.mark(gm.graph.call_function(fn, (a, b)), "shard", i))
        return build.combine_cat(parts, choice.dim)


def apply_split(gm: fx.GraphModule, node: fx.Node, choice: SplitChoice, shards: int, cost_s: float,
                sizes: Sequence[int] | None = None) -> fx.Node:
    """Replace ``node`` by ``shards`` exact pieces; returns the node that combines them.

    ``sizes`` (summing to ``choice.extent``) sets each piece's share of the split
    dimension; by default the pieces are as even as the dimension allows.
    """
    pieces = _chunks(choice.extent, shards, sizes)
    if choice.how == "matmul_batch":
        combined = _split_matmul(gm, node, choice, pieces, cost_s)
    else:
        combined = _split_weighted(gm, node, choice, pieces, cost_s)
    node.replace_all_uses_with(combined)
    inputs = node.all_input_nodes
    gm.graph.erase_node(node)
    drop_unused_get_attrs(gm, inputs)
    return combined


def drop_unused_get_attrs(gm: fx.GraphModule, candidates: list[fx.Node]) -> None:
    """Erase ``get_attr`` nodes nobody reads any more, and their tensors when no node refers to them."""
    for n in candidates:
        if n.op != "get_attr" or n.users:
            continue
        target = str(n.target)
        gm.graph.erase_node(n)
        if any(m.op == "get_attr" and m.target == target for m in gm.graph.nodes):
            continue  # another get_attr node reads the same tensor
        owner_path, _, attr = target.rpartition(".")
        try:
            owner = gm.get_submodule(owner_path) if owner_path else gm
        except AttributeError:
            continue
        if isinstance(getattr(owner, attr, None), torch.Tensor):
            delattr(owner, attr)
