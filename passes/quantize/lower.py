"""Lower q/dq patterns to real int8 kernels (the fastest one measured here).

    before:  xd = dequantize(quantize(x, s, z)); wd = dequantize_per_channel(W_int8, W_scale)
             y = linear(xd, wd, b)
    after:   y = Int8Linear[W_int8, W_scale, b, kernel=<fastest exact one measured>](x)

Patterns (exactly what ``quantize`` writes, see docs/quantize.md): dynamic or
static ``aten.linear``; static ``aten.conv2d`` followed by an output q/dq, or a
dynamic one (fp32 output);
``aten.embedding`` of a dequantized table. Each linear's (conv's) kernel is
chosen by timing the candidates in ``autoglm.ir.int8.LINEAR_KERNELS``
(``CONV_KERNELS``) on the layer's real input shape, among those that compute
exactly the q/dq numbers on this CPU (``choose_kernel``): the timing race picks
the speed, never the result. A layer with no such kernel keeps its q/dq form.
``quantize(lower=True)`` runs this as its last step; the
registered ``quantize_lower`` pass does it on its own (e.g. after a
``quantize(lower=False)`` graph was inspected or saved).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from autoglm.ir.int8 import (CONV_KERNELS, LINEAR_KERNELS, QDQ, Int8Conv2d, Int8Embedding, Int8Linear,
                             choose_kernel, dequantize_weight, fake_quant_dynamic, fake_quant_static)
from autoglm.ir.meta import annotation, has_annotation, output_spec
from autoglm.ir.ops import get_attr_value
from autoglm.ir.pass_base import GraphPass, NoOptions, PassContext, PassResult
from autoglm.passes.quantize.buckets import choose_kernel_by_rows, timing_rows
from autoglm.passes.quantize.keep_partitions import inherit_partition, sync_partition_plan

__all__ = ["QuantizeLower", "lower_qdq", "drop_attr"]

aten = torch.ops.aten


@dataclass
class _Act:
    x: fx.Node  # the fp32 activation before quantization
    qparams: tuple[float, int] | None  # static (scale, zero point); None: dynamic
    nodes: list[fx.Node]  # the q/dq nodes, removed after lowering


def _act(n: Any) -> _Act | None:
    if not isinstance(n, fx.Node) or n.op != "call_function":
        return None
    if n.target is QDQ.dequantize:
        q = n.args[0]
        if isinstance(q, fx.Node) and q.target is QDQ.quantize and tuple(q.args[1:3]) == tuple(n.args[1:3]):
            return _Act(q.args[0], (float(q.args[1]), int(q.args[2])), [n, q])
    if n.target is QDQ.dequantize_t:
        q, scale, zp = n.args[0], n.args[1], n.args[2]
        if (isinstance(q, fx.Node) and q.target is QDQ.quantize_t and isinstance(scale, fx.Node)
                and scale.target is operator.getitem and isinstance(scale.args[0], fx.Node)
                and scale.args[0].target is QDQ.choose_qparams and scale.args[0].args[0] is q.args[0]):
            return _Act(q.args[0], None, [n, q, scale, zp, scale.args[0]])
    return None


def _weight(n: Any, gm: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor, list[fx.Node]] | None:
    if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target is QDQ.dequantize_channel):
        return None
    q, s = get_attr_value(n.args[0], gm), get_attr_value(n.args[1], gm)
    if n.args[2] is not None or n.args[3] != 0 or not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        return None
    return q, s, [n, n.args[0], n.args[1]]


def _example(x: fx.Node, channels: int, dim: int, default: tuple[int, ...]) -> torch.Tensor:
    """A random input of the layer's real shape (the activation's recorded shape) for timing.

    Drawn from a private seeded generator: lowering never consumes the caller's
    global RNG, and the same graph is timed on the same numbers every run.
    """
    node = x
    while output_spec(node) is None and node.op == "call_function" and node.args:  # new smoothing mul
        node = node.args[0]
    spec = output_spec(node)
    rank = 4 if dim == 1 else None  # a conv's input is (N, C, H, W)
    ok = (spec is not None and len(spec.shape) >= 1 and rank in (None, len(spec.shape))
          and spec.shape[dim] == channels)
    # The input was created in this same pass (an earlier layer's replacement) and
    # has no shape yet: time on a representative default shape instead.
    shape = tuple(spec.shape) if ok else default
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _module_name(gm: fx.GraphModule, weight_attr: fx.Node) -> str:
    base = str(weight_attr.target).removesuffix("_weight_int8").replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _match(node: fx.Node, gm: fx.GraphModule) -> tuple[Any, fx.Node, fx.Node, list[fx.Node], dict] | None:
    """(module, activation input, node to replace, nodes to drop, report row) or None."""
    if node.op != "call_function":
        return None
    if node.target is aten.embedding.default:
        w = _weight(node.args[0], gm)
        if w is None:
            return None
        return Int8Embedding(w[0], w[1]), node.args[1], node, [node] + w[2], {"kernel": "gather_int8"}
    if node.target not in (aten.linear.default, aten.conv2d.default):
        return None
    act, w = _act(node.args[0]), _weight(node.args[1], gm)
    bias_node = node.args[2] if len(node.args) > 2 else None
    bias = get_attr_value(bias_node, gm) if bias_node is not None else None
    if act is None or w is None or (bias_node is not None and bias is None):
        return None
    drop = [node] + act.nodes + w[2] + ([bias_node] if bias_node is not None else [])
    if node.target is aten.linear.default:
        mode = "dynamic" if act.qparams is None else "static"
        scale, zp = act.qparams or (None, None)
        in_features = int(w[0].shape[1])
        example = _example(act.x, in_features, -1, (16, in_features))
        key = (mode, tuple(example.shape), tuple(w[0].shape))
        x_qdq = fake_quant_dynamic(example) if scale is None else fake_quant_static(example, scale, zp)
        reference = torch.nn.functional.linear(x_qdq, dequantize_weight(w[0], w[1]), bias)
        rejected: dict[str, str] = {}

        def make(k: str) -> Int8Linear:
            return Int8Linear(w[0], w[1], bias, scale, zp, kernel=k)

        rows = timing_rows(act.x, in_features)
        if rows is not None:  # dynamic rows: time a few row counts, maybe one kernel per bucket
            def simulate(x: torch.Tensor) -> torch.Tensor:
                xq = fake_quant_dynamic(x) if scale is None else fake_quant_static(x, scale, zp)
                return torch.nn.functional.linear(xq, dequantize_weight(w[0], w[1]), bias)

            kernel, buckets, timed = choose_kernel_by_rows(make, LINEAR_KERNELS[mode], rows,
                                                           example.numel() // in_features, in_features,
                                                           (mode, tuple(w[0].shape)), simulate, rejected)
            if kernel is None:
                return None
            row = {**_kernel_row(kernel, {}, rejected), **timed}
            if buckets:
                row["kernel_by_rows"] = buckets
            mod = Int8Linear(w[0], w[1], bias, scale, zp, kernel=kernel, kernel_by_rows=buckets)
            return mod, act.x, node, drop, row
        kernel, times = choose_kernel(make, LINEAR_KERNELS[mode], example, key, reference=reference,
                                      rejected=rejected)
        if kernel is None:
            return None  # no kernel reproduces the q/dq numbers here: keep the q/dq form
        return make(kernel), act.x, node, drop, _kernel_row(kernel, times, rejected)
    return _match_conv(node, act, w, bias, drop)


def _match_conv(node: fx.Node, act: _Act, w: tuple, bias: torch.Tensor | None,
                drop: list[fx.Node]) -> tuple[Any, fx.Node, fx.Node, list[fx.Node], dict] | None:
    """A static conv (input and output q/dq) or a dynamic one (input q/dq, fp32 output)."""
    q_out = next(iter(node.users)) if len(node.users) == 1 else None
    out = _act(next(iter(q_out.users))) if q_out is not None and len(q_out.users) == 1 else None
    if act.qparams is None:
        mode, out, qparams = "dynamic", None, ()
    elif out is not None and out.x is node and out.qparams is not None:
        mode, qparams = "static", (*act.qparams, *out.qparams)
    else:
        return None
    stride, padding, dilation, groups = node.args[3:7]
    c_in, (kh, kw) = int(w[0].shape[1]) * int(groups), w[0].shape[2:]
    size = tuple(max(8, d * (k - 1) + 1) for d, k in zip(dilation, (kh, kw)))
    example = _example(act.x, c_in, 1, (1, c_in) + size)
    key = ("conv2d", mode, tuple(example.shape), tuple(w[0].shape), tuple(stride), tuple(padding), tuple(dilation),
           groups)
    x_qdq = fake_quant_static(example, *act.qparams) if act.qparams else fake_quant_dynamic(example)
    y = torch.nn.functional.conv2d(x_qdq, dequantize_weight(w[0], w[1]), bias, stride, padding, dilation, groups)
    reference = fake_quant_static(y, *out.qparams) if out is not None else y
    rejected: dict[str, str] = {}

    def make(k: str) -> Int8Conv2d:
        return Int8Conv2d(w[0], w[1], bias, stride, padding, dilation, groups, *qparams, kernel=k)

    kernel, times = choose_kernel(make, CONV_KERNELS[mode], example, key, reference=reference, rejected=rejected)
    if kernel is None:
        return None  # no kernel reproduces the q/dq numbers here: keep the q/dq form
    if out is None:
        return make(kernel), act.x, node, drop, _kernel_row(kernel, times, rejected)
    return make(kernel), act.x, out.nodes[0], drop + out.nodes, _kernel_row(kernel, times, rejected)


def _kernel_row(kernel: str, times: dict[str, float], rejected: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"kernel": kernel, "timings_us": {k: round(t * 1e6, 1) for k, t in times.items()}}
    if rejected:
        row["rejected"] = dict(rejected)  # candidate -> why it may not run here (e.g. inexact on this CPU)
    return row


def lower_qdq(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """Replace every q/dq pattern by an int8 module; returns one report row per layer."""
    rows = []
    graph = gm.graph
    for node in list(graph.nodes):
        if node.graph is not graph or node not in graph.nodes:
            continue
        found = _match(node, gm)
        if found is None:
            continue
        mod, x, replaced, drop, row = found
        weight_attr = next(d for d in drop if d.op == "get_attr")  # the int8 weight (first get_attr)
        name = _module_name(gm, weight_attr)
        gm.add_submodule(name, mod)
        with graph.inserting_before(replaced):
            new = graph.call_module(name, (x,))
        tagged = replaced if has_annotation(replaced) and "int8" in annotation(replaced).tags else node
        tags = dict(annotation(tagged).tags.get("int8", {})) if has_annotation(tagged) else {}
        annotation(new).tags["int8"] = {**tags, **row, "status": "int8"}
        inherit_partition([new], replaced)
        replaced.replace_all_uses_with(new)
        for d in sorted(set(drop), key=lambda n: -_position(graph, n)):
            if d.op == "get_attr":
                drop_attr(gm, d)  # int8 buffers now owned by the module; fp32 bias copies
            elif not d.users:
                graph.erase_node(d)
        rows.append({"layer": tags.get("layer", name), "module": name, **row})
    if rows:
        gm.recompile()
    return rows


def drop_attr(gm: fx.GraphModule, node: fx.Node | None) -> None:
    """Erase a get_attr nobody reads, and its tensor once no other get_attr names it."""
    if node is None or node.op != "get_attr" or node.users:
        return
    target = str(node.target)
    gm.graph.erase_node(node)
    if any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return
    owner_path, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if leaf in owner._parameters:
        del owner._parameters[leaf]
    elif leaf in owner._buffers:
        del owner._buffers[leaf]
    elif hasattr(owner, leaf):
        delattr(owner, leaf)


def _position(graph: fx.Graph, node: fx.Node) -> int:
    for i, n in enumerate(graph.nodes):
        if n is node:
            return i
    return -1


class QuantizeLower(GraphPass):
    name = "quantize_lower"
    Options = NoOptions
    exact = False  # kernels re-derive activation qparams; results match q/dq to rounding
    requires = ("int8",)
    summary = "replace q/dq patterns by the fastest measured exact int8 kernel"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        rows = lower_qdq(gm)
        if rows:
            ctx.notes.setdefault("quantize", {})["lowered"] = rows
            sync_partition_plan(gm, ctx.notes)
        return PassResult(gm, bool(rows))
