"""What ``quantize`` can quantize in a graph, and how each layer is simulated.

``find_layers`` recognises Linear (``nn.Linear``, ``F.linear``, ``aten.linear``, and
``aten.addmm`` with an (in, out) weight: HF ``Conv1D`` under torch.export),
Conv2d and Embedding (weight-only) in either capture spelling and
returns one ``Layer`` per node, plus the reason for every node it skips.
``Layer.simulate`` is the exact math of the layer's q/dq subgraph (the same
``quantized_decomposed`` ops), so what the pass measures is what the graph runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoglm.ir.exclude import excluded_by
from autoglm.ir.int8 import dequantize_weight, fake_quant_dynamic, fake_quant_static, quantize_weight
from autoglm.ir.ops import OpKind, conv_view, get_attr_value, linear_view, node_module, op_kind

__all__ = ["Layer", "find_layers", "smooth_factors"]


@dataclass(eq=False)  # identity: layers are dict keys
class Layer:
    node: fx.Node
    kind: str  # "linear" | "conv2d" | "embedding"
    name: str  # module path or weight target, for users and `exclude`
    input: fx.Node  # activation input (token ids for embeddings)
    weight: torch.Tensor  # fp32, as in the model
    bias: torch.Tensor | None
    weight_node: fx.Node | None = None  # get_attr (functional spellings), removed after the rewrite
    bias_node: fx.Node | None = None
    conv: dict[str, Any] = field(default_factory=dict)  # stride, padding, dilation, groups
    per_channel: bool = True
    weight_qmax: int = 127  # widest weight code: 127, or 64 (int7) where fbgemm needs it to be exact
    mode: str = "dynamic"
    act: tuple[float, int] | None = None  # static input (scale, zero point)
    out: tuple[float, int] | None = None  # static conv output (scale, zero point)
    smooth: torch.Tensor | None = None  # SmoothQuant per-input-channel factors (x / s, W * s)
    sqnr_db: float | None = None

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.detach().float()
        if self.smooth is not None:
            w = w * self.smooth
        return quantize_weight(w, self.per_channel, self.weight_qmax)

    def simulate(self, x: torch.Tensor) -> torch.Tensor:
        q, s = self.quantized_weight()
        w = dequantize_weight(q, s)
        if self.kind == "embedding":
            return F.embedding(x, w)
        if self.smooth is not None:
            x = x * (1.0 / self.smooth)
        x = fake_quant_dynamic(x) if self.act is None else fake_quant_static(x, *self.act)
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        y = F.conv2d(x, w, self.bias, **self.conv)
        return fake_quant_static(y, *self.out) if self.out is not None else y


def _name(node: fx.Node, weight_node: fx.Node | None) -> str:
    if node.op == "call_module":
        return str(node.target)
    if weight_node is not None and weight_node.op == "get_attr":
        target = str(weight_node.target)
        return target[: -len(".weight")] if target.endswith(".weight") else target
    return node.name


def _embedding(node: fx.Node, gm: fx.GraphModule) -> tuple[fx.Node, torch.Tensor, fx.Node | None] | None:
    """(ids node, weight, weight get_attr node) for a plain lookup-table embedding."""
    if node.op == "call_module":
        mod = node_module(node, gm)
        if type(mod) is nn.Embedding and mod.max_norm is None and isinstance(node.args[0], fx.Node):
            return node.args[0], mod.weight, None
        return None
    if node.op == "call_function" and node.target is F.embedding and node.kwargs.get("max_norm") is None:
        ids, w_node = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    elif node.op == "call_function" and op_kind(node, gm) == OpKind.EMBEDDING and node.target is not F.embedding:
        w_node, ids = node.args[0], node.args[1]  # aten.embedding(weight, indices, ...)
    else:
        return None
    w = get_attr_value(w_node, gm)
    if isinstance(ids, fx.Node) and isinstance(w, torch.Tensor) and w.dim() == 2:
        return ids, w, w_node
    return None


def find_layers(gm: fx.GraphModule, mode: str, per_channel: bool, exclude: Sequence[str],
                embeddings: bool, dynamic_convs: bool = True) -> tuple[list[Layer], dict[str, str]]:
    """Quantizable layers in graph order, and ``{name: reason}`` for candidates left alone
    (``dynamic_convs=False``: convolutions stay fp32 in dynamic mode)."""
    layers: list[Layer] = []
    skipped: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        lin = linear_view(node, gm, addmm=True)  # HF Conv1D: rewritten as aten.linear with (out, in) weights
        conv = None if lin else conv_view(node, gm)
        emb = None if (lin or conv) else _embedding(node, gm)
        if lin is not None:
            layer = Layer(node, "linear", _name(node, lin.weight_node), lin.input, lin.weight, lin.bias,
                          lin.weight_node, lin.bias_node)
        elif conv is not None:
            layer = Layer(node, "conv2d", _name(node, None if conv.module else node.args[1]), conv.input,
                          conv.weight, conv.bias, None if conv.module else node.args[1],
                          None if conv.module or conv.bias is None else node.args[2],
                          conv={"stride": _pair(conv.stride), "padding": _pair(conv.padding),
                                "dilation": _pair(conv.dilation), "groups": conv.groups})
            if isinstance(conv.padding, str):
                skipped[layer.name] = f"padding={conv.padding!r} has no int8 kernel"
                continue
            if mode == "dynamic" and not dynamic_convs:
                skipped[layer.name] = ("dynamic int8 convolutions run slower than fp32 (dynamic_convs=False); "
                                       "mode=static quantizes them with calibrated ranges")
                continue
        elif emb is not None:
            ids, w, w_node = emb
            layer = Layer(node, "embedding", _name(node, w_node), ids, w, None, w_node)
            if not embeddings:
                skipped[layer.name] = "embeddings=False"
                continue
        else:
            continue
        pattern = excluded_by(layer.name, node.name, exclude)
        if pattern is not None:
            skipped[layer.name] = f"excluded by pattern {pattern!r}"
            continue
        if layer.weight.dtype != torch.float32:
            skipped[layer.name] = f"weight dtype {layer.weight.dtype} (only fp32 is quantized)"
            continue
        layer.per_channel, layer.mode = per_channel, mode
        layers.append(layer)
    return layers, skipped


def _pair(v: Any) -> Any:
    if isinstance(v, str):
        return v
    return list(v) if isinstance(v, (list, tuple)) else [int(v), int(v)]


def smooth_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant: s_j = max|x_j|^alpha / max|W_j|^(1-alpha), moving outliers from x into W."""
    w_absmax = weight.detach().float().abs().amax(dim=0).clamp_min(1e-5)
    s = act_absmax.clamp_min(1e-5).pow(alpha) / w_absmax.pow(1.0 - alpha)
    return s.clamp(1e-2, 1e2)
