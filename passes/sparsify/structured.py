"""Structured pruning that really shrinks layers (helper of ``sparsify(pattern=structured)``).

A *chain* is a producer layer whose output reaches exactly one consumer layer
through channel-wise ops only, so removing producer output channel ``i`` is
the same as removing consumer input channel ``i``::

    before:  x -> Linear(768->3072) -> gelu -> Linear(3072->768)
    after:   x -> Linear(768->1536) -> gelu -> Linear(1536->768)

    before:  x -> Conv(1->16) -> BN(16) -> relu -> maxpool -> Conv(16->32)
    after:   x -> Conv(1->8)  -> BN(8)  -> relu -> maxpool -> Conv(8->32)

Importance of channel ``i``: ``||W_prod[i]|| * ||W_cons[:, i]||`` (times the
batch-norm scale ``|gamma_i| / sqrt(var_i + eps)`` when one sits in between),
so a channel with a large input side but a near-zero output side still goes.
Layers that feed anything else (a residual add, a reshape, two users) cannot
shrink without changing shapes, and are reported as skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.ops import OpKind, conv_view, get_attr_value, linear_view, node_module, op_kind

__all__ = ["Chain", "find_chains", "channel_importance", "keep_count", "bn_tensors", "sliced", "shrunk_layers", "conv_like"]

aten = torch.ops.aten
_POOLS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, aten.max_pool2d.default, aten.avg_pool2d.default,
          aten.adaptive_avg_pool2d.default}
# Ops that act on each channel independently: pruning a channel before them
# equals pruning it after them.
_CHANNELWISE = {OpKind.ACTIVATION, OpKind.DROPOUT, OpKind.BATCH_NORM, OpKind.POOL}


@dataclass
class Chain:
    producer: Any  # LinearView | ConvView
    consumer: Any
    between: list[fx.Node] = field(default_factory=list)  # channel-wise ops from producer to consumer


def _view(node: fx.Node, gm: fx.GraphModule) -> Any:
    return linear_view(node, gm) or conv_view(node, gm)


def _is_channelwise(node: fx.Node, gm: fx.GraphModule, conv: bool) -> bool:
    kind = op_kind(node, gm)
    if kind == OpKind.OTHER and node.op == "call_function" and node.target in _POOLS:
        kind = OpKind.POOL
    if kind == OpKind.BATCH_NORM:
        return conv and bn_tensors(node, gm) is not None
    if kind == OpKind.POOL:
        return conv  # pooling over H, W keeps channels apart
    return kind in _CHANNELWISE


def find_chains(gm: fx.GraphModule, candidates: set[fx.Node]) -> tuple[list[Chain], dict[fx.Node, str]]:
    """Chains whose producer is in ``candidates``; plus why other candidates cannot shrink."""
    chains: list[Chain] = []
    skipped: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node not in candidates:
            continue
        prod = _view(node, gm)
        is_conv = not hasattr(prod, "weight_node")
        if is_conv and prod.groups != 1:
            skipped[node] = "grouped convolution"
            continue
        cur, between, reason = node, [], ""
        while True:
            users = list(cur.users)
            if len(users) != 1:
                reason = f"output has {len(users)} users; only a single path to one layer can shrink"
                break
            user = users[0]
            cons = _view(user, gm)
            if cons is not None and cons.input is cur:
                if (not hasattr(cons, "weight_node")) != is_conv or (is_conv and cons.groups != 1):
                    reason = "consumer is a different kind of layer"
                elif user not in candidates:
                    reason = "consumer is excluded or already sparsified"
                else:
                    chains.append(Chain(prod, cons, between))
                break
            if user.args and user.args[0] is cur and _is_channelwise(user, gm, is_conv):
                between.append(user)
                cur = user
                continue
            reason = f"output feeds {user.op} {getattr(user.target, '__name__', user.target)}, not a layer it can shrink"
            break
        if reason:
            skipped[node] = reason
    return chains, skipped


def bn_tensors(node: fx.Node, gm: fx.GraphModule) -> dict[str, Any] | None:
    """Batch norm's per-channel tensors (module or ``aten.batch_norm`` with get_attr args)."""
    mod = node_module(node, gm)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.running_mean is None or not mod.affine:
            return None
        return {"weight": mod.weight, "bias": mod.bias, "running_mean": mod.running_mean,
                "running_var": mod.running_var, "eps": mod.eps, "module": mod}
    if node.op == "call_function" and node.target in (aten.batch_norm.default, F.batch_norm):
        vals = [get_attr_value(a, gm) for a in node.args[1:5]]
        if any(not isinstance(v, torch.Tensor) for v in vals):
            return None
        eps = node.args[7] if len(node.args) > 7 else node.kwargs.get("eps", 1e-5)
        return {"weight": vals[0], "bias": vals[1], "running_mean": vals[2], "running_var": vals[3],
                "eps": float(eps), "module": None}
    return None


def channel_importance(chain: Chain, gm: fx.GraphModule) -> torch.Tensor:
    """One score per producer output channel; higher means keep."""
    w_out = chain.producer.weight.detach().flatten(1).float()
    w_in = chain.consumer.weight.detach().transpose(0, 1).flatten(1).float()  # (channels, ...)
    score = w_out.norm(dim=1) * w_in.norm(dim=1)
    for node in chain.between:
        bn = bn_tensors(node, gm) if op_kind(node, gm) == OpKind.BATCH_NORM else None
        if bn is not None:
            score = score * (bn["weight"].detach().abs() / torch.sqrt(bn["running_var"] + bn["eps"])).float()
    return score


def keep_count(channels: int, sparsity: float) -> int:
    """Channels to keep: the nearest whole number to ``(1 - sparsity) * channels``, at least one."""
    return max(1, min(channels, int(round((1.0 - sparsity) * channels))))


def sliced(t: torch.Tensor | None, index: torch.Tensor, dim: int) -> torch.Tensor | None:
    return None if t is None else t.detach().index_select(dim, index.to(t.device)).clone()



def conv_like(view: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    out_c, in_c, kh, kw = weight.shape
    conv = nn.Conv2d(in_c * view.groups, out_c, (kh, kw), stride=view.stride, padding=view.padding,
                     dilation=view.dilation, groups=view.groups, bias=bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _bn_like(bn: dict[str, Any], index: torch.Tensor) -> nn.Module:
    weight = sliced(bn["weight"], index, 0)
    cls = type(bn["module"]) if bn["module"] is not None else nn.BatchNorm2d
    new = cls(weight.numel(), eps=bn["eps"], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(sliced(bn["bias"], index, 0))
        new.running_mean.copy_(sliced(bn["running_mean"], index, 0))
        new.running_var.copy_(sliced(bn["running_var"], index, 0))
    if bn["module"] is not None:
        new.momentum = bn["module"].momentum
    return new.eval()


def shrunk_layers(chains: list[Chain], gm: fx.GraphModule, sparsity: float,
                  make_linear: Any) -> tuple[dict[fx.Node, nn.Module], dict[fx.Node, dict], dict[fx.Node, nn.Module],
                                             dict[fx.Node, torch.Tensor]]:
    """New (smaller) modules for every layer and batch norm in ``chains``, and their tags.

    Returns ``(layers, tags, batch_norms, kept_inputs)`` keyed by the node each
    replaces; ``kept_inputs[consumer]`` are the input channels it still reads.
    ``make_linear(weight, bias)`` builds a dense linear (shared with ``sparse_format``).
    """
    keep_out: dict[fx.Node, torch.Tensor] = {}
    keep_in: dict[fx.Node, torch.Tensor] = {}
    views: dict[fx.Node, Any] = {}
    tags: dict[fx.Node, dict] = {}
    bns: dict[fx.Node, nn.Module] = {}
    for chain in chains:
        score = channel_importance(chain, gm)
        k = keep_count(score.numel(), sparsity)
        index = score.topk(k).indices.sort().values
        prod, cons = chain.producer.node, chain.consumer.node
        keep_out[prod], keep_in[cons] = index, index
        views[prod], views[cons] = chain.producer, chain.consumer
        tags.setdefault(prod, {}).update({"rows_kept": k, "rows": score.numel(),
                                          "channel_sparsity": round(1.0 - k / score.numel(), 6)})
        tags.setdefault(cons, {}).update({"inputs_kept": k, "inputs": score.numel()})
        for node in chain.between:
            bn = bn_tensors(node, gm) if op_kind(node, gm) == OpKind.BATCH_NORM else None
            if bn is not None:
                bns[node] = _bn_like(bn, index)
    layers: dict[fx.Node, nn.Module] = {}
    for node, view in views.items():
        weight, bias = view.weight.detach(), view.bias
        if node in keep_out:
            weight = weight.index_select(0, keep_out[node].to(weight.device))
            bias = sliced(bias, keep_out[node], 0)
        elif bias is not None:
            bias = bias.detach()
        if node in keep_in:
            weight = weight.index_select(1, keep_in[node].to(weight.device))
        layers[node] = make_linear(weight, bias) if weight.dim() == 2 else conv_like(view, weight, bias)
        before = view.weight.numel()
        role = "+".join(r for r, d in (("producer", keep_out), ("consumer", keep_in)) if node in d)
        tags[node].update({"pattern": "structured", "role": role, "format": "pruned_dense",
                           "target": sparsity, "sparsity": round(1.0 - weight.numel() / before, 6),
                           "shape_before": list(view.weight.shape), "shape_after": list(weight.shape)})
    return layers, tags, bns, keep_in
