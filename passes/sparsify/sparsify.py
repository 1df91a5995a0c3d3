"""Sparsify Linear/Conv weights: N:M, unstructured or structured; format chosen by measurement.

    before:  x -> model.fc1 (Linear 768x3072) -> gelu -> model.fc2 (Linear 3072x768)
    after (pattern=2:4):
             x -> sparsified.model_fc1 (Linear, 2 of every 4 weights zero)  -> gelu -> ...
    after (pattern=unstructured, sparsity=0.95, CSR measured faster):
             x -> sparsified.model_fc1 (CsrLinear) -> gelu -> ...
    after (pattern=structured, sparsity=0.5):
             x -> sparsified.model_fc1 (Linear 768x1536) -> gelu -> sparsified.model_fc2 (Linear 1536x768)

Patterns: ``"N:M"`` (``"2:4"``: keep the N largest of every M weights along the
input dimension), ``"unstructured"`` (smallest magnitudes, per layer or
``scope="global"``), ``"structured"`` (remove whole output channels and shrink
the consumer; see ``prune_structured``). Masks come from magnitudes, counted
exactly, so each layer reaches the target to one weight.

Every rewritten node gets ``tags["sparse"]`` (pattern, achieved sparsity,
format, measured latencies) and the pass writes ``ctx.notes["sparsify"]``.
Execution format per linear: see ``sparse_format`` (a sparse format only where
it measured faster than dense). Dense-kept and structured layers stay
``nn.Linear``/``aten.linear`` with ``get_attr`` weights so ``quantize`` still
sees them (sparse + int8 storage: int8 keeps exact zeros). New weights live
under ``sparsified.``; the user's model is never modified. Lossy: ``exact=False``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx

from autoglm.ir.exclude import excluded_by
from autoglm.ir.meta import annotation, has_annotation
from autoglm.ir.ops import conv_view, linear_view
from autoglm.ir.pass_base import GraphPass, PassContext, PassResult
from autoglm.passes.sparsify.structured import conv_like, find_chains, shrunk_layers
from autoglm.passes.sparsify.formats import FORMATS, dense_linear, measure_modules, select_format
from autoglm.passes.sparsify.rewrite import install_module, layer_name, point_node_at, remove_dead_attrs

__all__ = ["SparsifyOptions", "Sparsify", "parse_pattern", "nm_mask", "magnitude_mask", "global_magnitude_masks"]

_WEIGHT_BIAS_ARGS = {1: ("weight", "weight"), 2: ("bias", "bias")}
_BN_ARGS = {1: ("weight", "weight"), 2: ("bias", "bias"), 3: ("running_mean", "running_mean"),
            4: ("running_var", "running_var")}


def parse_pattern(pattern: str) -> tuple[str, int, int]:
    """``"2:4"`` -> ``("nm", 2, 4)``; ``"unstructured"``/``"structured"`` -> ``(name, 0, 0)``."""
    text = str(pattern).strip().lower()
    if text in ("unstructured", "structured"):
        return text, 0, 0
    parts = text.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return "nm", n, m
    raise ValueError(f"sparsify: pattern must be 'N:M' with 0 < N < M (e.g. '2:4'), 'unstructured' or "
                     f"'structured'; got {pattern!r}")


@dataclass
class SparsifyOptions:
    pattern: str = "2:4"  # "N:M" (N of every M weights kept), "unstructured" or "structured" (whole channels removed, layers shrink)
    sparsity: float = 0.5  # unstructured/structured; N:M implies 1 - N/M
    scope: str = "layer"  # "global": one magnitude threshold over all layers (unstructured only)
    exclude: list[str] = field(default_factory=list)  # glob patterns on layer names ("head", "*.fc2")
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    score_weights: list[float] = field(default_factory=lambda: [0.4, 0.3, 0.3])  # latency, memory, accuracy
    measure_repeats: int = 5
    min_speedup: float = 1.1  # a sparse format must beat dense by this factor (guards against noise)
    max_rel_error: float = 1e-2  # output error a format may add relative to dense-with-zeros

    def __post_init__(self) -> None:
        kind, _, _ = parse_pattern(self.pattern)
        # CLI spellings a user will type: formats=dense|csr, formats=[dense,csr] (bare words arrive as one string)
        self.formats = [f.strip(" '\"") for item in self.formats
                        for f in str(item).strip("[] ").replace("|", ",").split(",") if f.strip(" '\"")]
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsify: sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"sparsify: scope must be 'layer' or 'global', got {self.scope!r}")
        if self.scope == "global" and kind != "unstructured":
            raise ValueError("sparsify: scope='global' applies to pattern='unstructured' only; "
                             "N:M and structured masks are per layer")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or "dense" not in self.formats:
            raise ValueError(f"sparsify: formats must include 'dense' and come from {list(FORMATS)}; got {self.formats}")
        if len(self.score_weights) != 3 or min(self.score_weights) < 0 or sum(self.score_weights) <= 0:
            raise ValueError(f"sparsify: score_weights must be three non-negative numbers (latency, memory, "
                             f"accuracy), got {self.score_weights}")
        if self.measure_repeats < 1 or self.min_speedup <= 0:
            raise ValueError("sparsify: measure_repeats must be >= 1 and min_speedup > 0")


# ---------------------------------------------------------------- masks


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights of every ``m`` along the input dimension.

    Conv weights ``(out, in, kh, kw)`` are grouped along ``in`` at each kernel
    position (the layout 2:4 hardware expects for implicit GEMM).
    """
    w = weight.detach().abs()
    if w.dim() == 4:
        w = w.permute(0, 2, 3, 1)
    if w.shape[-1] % m:
        raise ValueError(f"input dimension {w.shape[-1]} is not a multiple of {m}")
    groups = w.reshape(-1, m)
    index = groups.topk(n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, index, True).reshape(w.shape)
    return mask.permute(0, 3, 1, 2) if weight.dim() == 4 else mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero exactly ``round(sparsity * numel)`` smallest-magnitude weights (ties broken by order)."""
    flat = weight.detach().abs().flatten()
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device)
    mask[flat.topk(keep).indices] = True
    return mask.reshape(weight.shape)


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One magnitude ranking over all weights: layers with small weights lose more."""
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    out, start = [], 0
    for w in weights:
        out.append(mask[start:start + w.numel()].reshape(w.shape).to(w.device))
        start += w.numel()
    return out


# ---------------------------------------------------------------- the pass


def _record_inputs(gm: fx.GraphModule, inputs: Sequence[Any], wanted: set[fx.Node]) -> dict[fx.Node, Any]:
    """The value each wanted node produced on the example inputs (layer inputs for timing)."""
    seen: dict[fx.Node, Any] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if n in wanted:
                seen[n] = result
            return result

    with torch.no_grad():
        _Recorder(gm).run(*inputs)
    return seen


class Sparsify(GraphPass):
    name = "sparsify"
    Options = SparsifyOptions
    exact = False
    summary = "N:M / unstructured / structured weight sparsity; execution format chosen by measured cost"

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        opts: SparsifyOptions = self.options
        kind, n, m = parse_pattern(opts.pattern)
        layers, skipped = self._candidates(gm, opts)
        notes: dict[str, Any] = {"pattern": opts.pattern, "scope": opts.scope, "layers": [], "skipped": skipped}
        ctx.notes[self.name] = notes
        if not layers:
            return PassResult(gm, False)
        inputs = _record_inputs(gm, ctx.example_inputs, {view.input for _, view, _ in layers})
        if kind == "structured":
            modified = self._structured(gm, layers, inputs, opts, notes)
        else:
            modified = self._masked(gm, layers, inputs, opts, kind, n, m, notes)
        if modified:
            remove_dead_attrs(gm)
            gm.recompile()
        total = sum(r["params"] for r in notes["layers"])
        zeros = sum(r["params"] * r["sparsity"] for r in notes["layers"])
        notes["overall_sparsity"] = round(zeros / total, 6) if total else 0.0
        return PassResult(gm, modified)

    def _candidates(self, gm: fx.GraphModule, opts: SparsifyOptions) -> tuple[list, list]:
        layers, skipped = [], []
        for node in gm.graph.nodes:
            if has_annotation(node) and "sparse" in annotation(node).tags:
                continue  # already sparsified: a second run leaves it alone
            view = linear_view(node, gm) or conv_view(node, gm)
            if view is None:
                continue
            weight_node = getattr(view, "weight_node", None) or _conv_weight_node(node)
            name = layer_name(node, view.module, weight_node)
            pattern = excluded_by(name, node.name, opts.exclude)
            if pattern is not None:
                skipped.append({"layer": name, "reason": f"excluded by pattern {pattern!r}"})
                continue
            layers.append((node, view, name))
        return layers, skipped

    def _masked(self, gm: fx.GraphModule, layers: list, inputs: dict, opts: SparsifyOptions, kind: str, n: int,
                m: int, notes: dict) -> bool:
        masks: dict[fx.Node, torch.Tensor] = {}
        if kind == "nm":
            for node, view, name in layers:
                try:
                    masks[node] = nm_mask(view.weight, n, m)
                except ValueError as exc:
                    notes["skipped"].append({"layer": name, "reason": str(exc)})
        elif opts.scope == "global":
            masks = dict(zip([node for node, _, _ in layers],
                             global_magnitude_masks([view.weight for _, view, _ in layers], opts.sparsity)))
        else:
            masks = {node: magnitude_mask(view.weight, opts.sparsity) for node, view, _ in layers}
        target = 1.0 - n / m if kind == "nm" else opts.sparsity
        for node, view, name in layers:
            if node not in masks:
                continue
            weight = view.weight.detach() * masks[node]
            is_linear = weight.dim() == 2
            if is_linear and view.input in inputs:
                choice, module = select_format(weight, view.bias, inputs[view.input], opts.formats,
                                               (n, m) if kind == "nm" else None, opts.score_weights,
                                               opts.measure_repeats, opts.min_speedup, opts.max_rel_error)
                fmt_tag = choice.to_tag()
            else:  # convolutions run dense: torch has no sparse conv kernel worth measuring on CPU
                module = dense_linear(weight, view.bias) if is_linear else _dense_conv(view, weight)
                fmt_tag = {"format": "dense"}
            fmt = fmt_tag["format"]
            path = install_module(gm, name, module)
            keep_spelling = fmt == "dense" and node.op == "call_function"
            new_node = point_node_at(gm, node, path, module, _WEIGHT_BIAS_ARGS if keep_spelling else None)
            achieved = 1.0 - float(masks[node].sum()) / masks[node].numel()
            tag = {"pattern": opts.pattern, "target": round(target, 6), "sparsity": round(achieved, 6), **fmt_tag}
            annotation(new_node).tags["sparse"] = tag
            notes["layers"].append({"layer": name, "module": path, "shape": list(view.weight.shape),
                                    "params": view.weight.numel(), **tag})
        return bool(notes["layers"])

    def _structured(self, gm: fx.GraphModule, layers: list, inputs: dict, opts: SparsifyOptions,
                    notes: dict) -> bool:
        names = {node: name for node, _, name in layers}
        chains, cannot = find_chains(gm, set(names))
        consumers = {c.consumer.node for c in chains}
        for node, reason in cannot.items():
            if node not in consumers:  # a consumer that cannot itself produce is still shrunk
                notes["skipped"].append({"layer": names[node], "reason": reason})
        if not chains:
            return False
        modules, tags, bns, kept_inputs = shrunk_layers(chains, gm, opts.sparsity, dense_linear)
        views = {c.producer.node: c.producer for c in chains} | {c.consumer.node: c.consumer for c in chains}
        for node, module in modules.items():
            view = views[node]
            if view.input in inputs:  # record what shrinking bought on this target
                x = inputs[view.input]
                x_pruned = x if node not in kept_inputs else x.index_select(
                    x.dim() - 1 if view.weight.dim() == 2 else 1, kept_inputs[node].to(x.device))
                original = dense_linear(view.weight.detach(), view.bias) if view.weight.dim() == 2 else \
                    _dense_conv(view, view.weight.detach())
                lat, _ = measure_modules({"dense": original, "pruned_dense": module},
                                         {"dense": x, "pruned_dense": x_pruned}, opts.measure_repeats)
                tags[node]["latency_ms"] = {k: round(v * 1e3, 4) for k, v in lat.items()}
            path = install_module(gm, names[node], module)
            args = _WEIGHT_BIAS_ARGS if node.op == "call_function" else None
            new_node = point_node_at(gm, node, path, module, args)
            annotation(new_node).tags["sparse"] = tags[node]
            notes["layers"].append({"layer": names[node], "module": path,
                                    "params": int(torch.Size(tags[node]["shape_before"]).numel()), **tags[node]})
        for node, bn in bns.items():
            path = install_module(gm, f"{node.target}" if node.op == "call_module" else node.name, bn)
            point_node_at(gm, node, path, bn, _BN_ARGS if node.op == "call_function" else None)
        return True


def _conv_weight_node(node: fx.Node) -> fx.Node | None:
    w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    return w if isinstance(w, fx.Node) else None


def _dense_conv(view: Any, weight: torch.Tensor) -> torch.nn.Module:
    return conv_like(view, weight, None if view.bias is None else view.bias.detach())
