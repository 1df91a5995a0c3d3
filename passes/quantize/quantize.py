"""int8 quantization: q/dq rewrite, accuracy kept by measurement, then lowering.

    before:  x -> linear(x, W, b)
    after (lower=False, dynamic):
             qp = choose_qparams(x); xq = quantize(x, qp); xd = dequantize(xq, qp)
             wd = dequantize_per_channel(W_int8, W_scale)
             linear(xd, wd, b)
    after (lower=True):  x -> Int8Linear[W_int8, W_scale, b, kernel=<fastest exact one measured>]

Steps: find Linear/Conv2d/Embedding layers (both capture spellings); for static
mode or SmoothQuant, observe activations on calibration data; measure each
layer's SQNR against fp32 on the same inputs (and keep SmoothQuant only where it
raises that SQNR); with ``max_error`` set, keep the most sensitive layers fp32
until the whole-model metric on calibration data meets the budget; rewrite the
rest to q/dq (``quantized_decomposed`` ops, exportable to ONNX
QuantizeLinear/DequantizeLinear); lower to real int8 kernels unless
``lower=False`` (only kernels that compute exactly the q/dq numbers on this CPU
compete on speed, so the measured accuracy is the shipped accuracy; with
``max_error`` the lowered graph is measured once more). Decisions land in
``ctx.notes["quantize"]`` and ``tags["int8"]``. docs/quantize.md has the node patterns.
"""
from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.fx as fx

from autoglm.ir.effects import eliminate_dead_code
from autoglm.ir.int8 import (ACT_DTYPE, ACT_QMAX, ACT_QMIN, EPS, INT7_QMAX, QDQ, W_DTYPE, W_QMAX, W_QMIN, act_qparams,
                             weight_qmax_for_this_cpu)
from autoglm.ir.meta import annotation, has_symbolic_shapes
from autoglm.ir.metrics import sqnr_db
from autoglm.ir.pass_base import GraphPass, PassContext, PassResult
from autoglm.passes.quantize.calibrate import OBSERVERS, Probe, calibration_batches, observed_range
from autoglm.passes.quantize.keep_partitions import inherit_partition, nodes_between, sync_partition_plan
from autoglm.passes.quantize.lower import drop_attr, lower_qdq
from autoglm.passes.quantize.plan import Layer, find_layers, smooth_factors

__all__ = ["Quantize", "QuantizeOptions", "output_metric"]

aten = torch.ops.aten


@dataclass
class QuantizeOptions:
    mode: Literal["dynamic", "static"] = "dynamic"  # dynamic: activations quantized per call; static: calibrated
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"  # weight scales
    observer: Literal["minmax", "percentile", "mse"] = "minmax"  # static activation ranges
    # Accuracy budget on calibration data: with metric="cosine" the smallest allowed cosine
    # between int8 and fp32 outputs (per sample, e.g. 0.99); with "sqnr" the smallest SQNR in dB;
    # with a callable metric(fp32_outputs, int8_outputs) -> float (higher is better) its threshold.
    # None (the default): every layer whose SQNR gains go int8, no whole-model budget; the
    # report and the CLI still state the measured cosine.
    max_error: float | None = None
    metric: Any = "cosine"  # what max_error bounds: "cosine", "sqnr" (dB) or a callable (see above)
    # Per-layer floor: a layer whose own output SQNR (int8 vs fp32, same inputs) is below
    # this many dB stays fp32, whatever the whole-model budget says. None: no floor.
    min_layer_sqnr_db: float | None = None
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns on layer or node names
    # SmoothQuant alpha, kept per layer only where it raises that layer's measured SQNR; None: off.
    # 0.5 by default: on real all-MiniLM-L6-v2 (32 sentences x 64 tokens, calibration on 24 others)
    # the embedding cosine min went 0.9895 -> 0.9948 at the same speed (0.381x -> 0.385x eager).
    smooth: float | None = 0.5
    # Weight codes: "int8" (+-127), "int7" (+-64), or "auto": int7 where this CPU's fast int8
    # kernels (fbgemm) would saturate int8 codes, i.e. without VNNI (weight_qmax_for_this_cpu).
    weights: Literal["auto", "int8", "int7"] = "auto"
    embeddings: bool = True  # weight-only int8 embedding tables
    # Dynamic mode quantizes Conv2d only when True. Off by default: measured on a 2-core AVX-512
    # VNNI CPU, 1 thread, dynamic int8 convs (per-call input range, int8 im2col + torch._int_mm)
    # ran slower than fp32 on every shape tried (64ch 56x56: 3.1x, 128ch 28x28: 1.7x, 256ch
    # 14x14: 1.05x, the digits CNN: 2.2x), while static int8 convs ran 2.6-3.4x faster than fp32.
    dynamic_convs: bool = False
    lower: bool = True  # replace q/dq patterns by the fastest measured exact int8 kernel
    progress: bool = True  # tqdm bars while calibrating

    def __post_init__(self) -> None:
        _check(self)  # a bad option fails when the pipeline is built, before any capture or run


def _check(o: QuantizeOptions) -> None:
    allowed = {"mode": ("dynamic", "static"), "granularity": ("per_channel", "per_tensor"), "observer": OBSERVERS,
               "weights": ("auto", "int8", "int7")}
    for key, values in allowed.items():
        if getattr(o, key) not in values:
            raise ValueError(f"quantize: {key}={getattr(o, key)!r} is not one of {list(values)}")
    if not (callable(o.metric) or o.metric in ("cosine", "sqnr")):
        raise ValueError(f"quantize: metric={o.metric!r}; use 'cosine', 'sqnr' or a callable(ref, out) -> float")
    if o.metric == "cosine" and o.max_error is not None and not 0.0 < o.max_error <= 1.0:
        raise ValueError(f"quantize: max_error={o.max_error} with metric='cosine' is the minimum output cosine, "
                         "a number in (0, 1] such as 0.99")
    if o.smooth is not None and not 0.0 <= o.smooth <= 1.0:
        raise ValueError(f"quantize: smooth={o.smooth} must be a SmoothQuant alpha in [0, 1] (or None)")


# SmoothQuant is kept on a layer only when it raises the layer's SQNR by at least this much:
# smaller gains are within calibration noise, and each smoothed layer costs a Mul on its input
# (measured: smoothing the digits CNN's fc gained 0.35 dB and changed no held-out prediction).
SMOOTH_MIN_GAIN_DB = 1.0


def output_metric(metric: Any, reference: list[tuple], outputs: list[tuple]) -> float:
    """Whole-model accuracy over batches: min per-sample cosine, overall SQNR (dB), or a callback."""
    if callable(metric):
        return float(metric(reference, outputs))
    pairs = [(r.double(), o.double()) for rb, ob in zip(reference, outputs) for r, o in zip(rb, ob)
             if isinstance(r, torch.Tensor) and r.is_floating_point() and r.numel()]
    if metric == "sqnr":
        return sqnr_db([r for r, _ in pairs], [o for _, o in pairs])
    cos = [torch.nn.functional.cosine_similarity(r.reshape(r.shape[0] if r.dim() > 1 else 1, -1),
                                                 o.reshape(o.shape[0] if o.dim() > 1 else 1, -1), dim=1).min()
           for r, o in pairs]
    return float(min(cos)) if cos else 1.0


class Quantize(GraphPass):
    name = "quantize"
    Options = QuantizeOptions
    exact = False
    requires = ("annotated",)
    ensures = ("int8",)
    summary = "int8 Linear/Conv2d/Embedding (dynamic or static), accuracy budget by measurement"

    def __init__(self, options: Any = None, **kwargs: Any):
        super().__init__(options, **kwargs)

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        o = self.options
        layers, skipped = find_layers(gm, o.mode, o.granularity == "per_channel", o.exclude, o.embeddings,
                                      o.dynamic_convs)
        if not layers:
            ctx.notes[self.name] = {"mode": o.mode, "layers": [_row(n, "fp32", r) for n, r in skipped.items()]}
            return PassResult(gm, False)
        qmax, weights_why = _weight_codes(o.weights)
        for layer in layers:
            if layer.kind != "embedding":  # a gathered table is weight-only: no kernel to keep exact
                layer.weight_qmax = qmax
        n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
        batches = calibration_batches(ctx.calibration, ctx.example_inputs, n_inputs)
        if o.mode == "static" or o.smooth is not None:
            self._calibrate(gm, layers, batches)
        reference = self._sensitivity(gm, layers, batches)
        floor = o.min_layer_sqnr_db
        below = [layer for layer in layers if floor is not None and layer.sqnr_db < floor]
        chosen, kept, final = self._fit_budget(gm, [layer for layer in layers if layer not in below], batches,
                                               reference)
        for layer in below:
            kept[layer] = f"layer SQNR {layer.sqnr_db:.1f} dB < min_layer_sqnr_db={floor}"
        replaced: dict[fx.Node, fx.Node] = {}
        for layer in chosen:
            # A layer reading an earlier rewritten layer must read its replacement
            # (found by the fuzzer: chained Linears referenced an erased node).
            layer.input = replaced.get(layer.input, layer.input)
            replaced[layer.node] = self._rewrite(gm, layer)
        for layer, reason in kept.items():
            annotation(layer.node).tags["int8"] = {"status": "fp32", "reason": reason, "sqnr_db": layer.sqnr_db}
        eliminate_dead_code(gm)  # the project rule: in-place buffer updates are not dead
        gm.delete_all_unused_submodules()  # the fp32 layers the rewrite replaced
        gm.recompile()
        notes: dict[str, Any] = {
            "mode": o.mode, "granularity": o.granularity, "observer": o.observer if o.mode == "static" else None,
            "metric": o.metric if isinstance(o.metric, str) else getattr(o.metric, "__name__", "callable"),
            "max_error": o.max_error, "metric_value_qdq": final, "calibration_batches": len(batches),
            "weights": {"codes": "int7" if qmax == INT7_QMAX else "int8", "qmax": qmax, "why": weights_why},
            "layers": [_row(layer.name, "int8" if layer in chosen else "fp32", kept.get(layer), layer)
                       for layer in layers] + [_row(n, "fp32", r) for n, r in skipped.items()],
        }
        if o.lower and chosen:
            notes["lowered"] = lower_qdq(gm)
            if has_symbolic_shapes(gm.graph):  # said, not silent: how kernel choices serve other shapes
                notes["kernels_timed_at"] = _kernel_shape_note(notes["lowered"])
            if o.max_error is not None:
                notes["metric_value_lowered"] = self._check_lowered(gm, batches, reference)
        ctx.notes[self.name] = notes
        sync_partition_plan(gm, ctx.notes)
        return PassResult(gm, bool(chosen))

    # ------------------------------------------------------------ measurement

    def _calibrate(self, gm: fx.GraphModule, layers: list[Layer], batches: list[tuple]) -> None:
        """Observe inputs (and conv outputs) on calibration data; set ranges and smoothing."""
        observe: dict[fx.Node, list] = {}
        for layer in layers:
            if layer.kind != "embedding":
                observe.setdefault(layer.node, []).append((f"in:{layer.name}", layer.input, layer.kind == "linear"))
        probe = Probe(gm, observe=observe)
        probe.run_all(batches, "quantize: calibrate", self.options.progress)
        for layer in layers:
            stats = probe.stats.get(f"in:{layer.name}")
            if stats is None:
                continue
            if self.options.smooth is not None and layer.kind == "linear" and stats.channel_absmax is not None:
                layer.smooth = smooth_factors(stats.channel_absmax, layer.weight, self.options.smooth)
            if self.options.mode == "static":
                layer.act = act_qparams(*observed_range(stats, self.options.observer))
        if self.options.mode == "static":
            self._calibrate_conv_outputs(gm, layers, batches)

    def _calibrate_conv_outputs(self, gm: fx.GraphModule, layers: list[Layer], batches: list[tuple]) -> None:
        # The int8 conv kernel re-quantizes its output: observe the output of the
        # simulated (input-quantized) conv, which is what that step will see.
        convs = [layer for layer in layers if layer.kind == "conv2d"]
        if not convs:
            return
        observe = {c.node: [(f"out:{c.name}", None, False)] for c in convs}
        override = {c.node: (c.input, c.simulate) for c in convs}
        probe = Probe(gm, observe=observe, override=override)
        probe.run_all(batches, "quantize: calibrate conv outputs", self.options.progress)
        for c in convs:
            c.out = act_qparams(*observed_range(probe.stats[f"out:{c.name}"], self.options.observer))

    def _sensitivity(self, gm: fx.GraphModule, layers: list[Layer], batches: list[tuple]) -> list[tuple]:
        """Per-layer SQNR vs fp32 on the same inputs; SmoothQuant stays only where it raises it."""
        def variant(layer: Layer, smooth: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
            def run(x: torch.Tensor) -> torch.Tensor:
                saved, layer.smooth = layer.smooth, smooth
                try:
                    return layer.simulate(x)
                finally:
                    layer.smooth = saved
            return run

        compare = {}
        for layer in layers:
            variants = {"plain": variant(layer, None)}
            if layer.smooth is not None:
                variants["smooth"] = variant(layer, layer.smooth)
            compare[layer.node] = (layer.input, variants)
        probe = Probe(gm, compare=compare)
        reference = probe.run_all(batches, "quantize: sensitivity", self.options.progress)
        for layer in layers:
            plain = probe.sqnr_db(layer.node, "plain")
            smoothed = probe.sqnr_db(layer.node, "smooth") if layer.smooth is not None else -math.inf
            if smoothed >= plain + SMOOTH_MIN_GAIN_DB:
                layer.sqnr_db = smoothed
            else:
                layer.smooth, layer.sqnr_db = None, plain
        return reference

    def _fit_budget(self, gm: fx.GraphModule, layers: list[Layer], batches: list[tuple],
                    reference: list[tuple]) -> tuple[list[Layer], dict[Layer, str], float | None]:
        """Keep the k most sensitive layers fp32, smallest k (binary search) meeting ``max_error``."""
        o = self.options

        def score(active: list[Layer]) -> float:
            override = {layer.node: (layer.input, layer.simulate) for layer in active}
            outs = Probe(gm, override=override).run_all(batches, "quantize: accuracy", o.progress)
            return output_metric(o.metric, reference, outs)

        if o.max_error is None:
            return list(layers), {}, score(layers)
        by_sensitivity = sorted(layers, key=lambda layer: layer.sqnr_db)
        lo, hi = 0, len(layers)  # hi: keeping all fp32 always meets the budget
        best = score(layers)
        if best >= o.max_error:
            return list(layers), {}, best
        scores = {len(layers): None}
        while lo + 1 < hi:  # invariant: k=lo fails, k=hi meets the budget
            mid = (lo + hi) // 2
            s = score(by_sensitivity[mid:])
            scores[mid] = s
            lo, hi = (lo, mid) if s >= o.max_error else (mid, hi)
        keep = by_sensitivity[:hi]
        reasons = {layer: f"accuracy budget: among the {hi} most sensitive layers (SQNR {layer.sqnr_db:.1f} dB); "
                          f"{o.metric}>={o.max_error} needs them fp32" for layer in keep}
        chosen = [layer for layer in layers if layer not in reasons]
        return chosen, reasons, scores.get(hi)

    def _check_lowered(self, gm: fx.GraphModule, batches: list[tuple], reference: list[tuple]) -> float:
        """The budget measured again on the graph that ships (the chosen kernels, not the simulation).

        Kernels qualify only if they compute the q/dq numbers exactly (``choose_kernel``),
        so this equals ``metric_value_qdq`` up to float rounding; a miss means a kernel
        broke that promise on this machine, and is reported rather than shipped silently.
        """
        o = self.options
        value = output_metric(o.metric, reference, Probe(gm).run_all(batches, "quantize: check lowered", o.progress))
        if value < o.max_error:
            warnings.warn(f"quantize: the lowered int8 graph measures {o.metric}={value:.6g} on the calibration "
                          f"data, below max_error={o.max_error} that its q/dq simulation met; an int8 kernel "
                          "disagrees with the simulation here (quantize(lower=False) keeps the q/dq form)",
                          RuntimeWarning, stacklevel=2)
        return value

    # ------------------------------------------------------------ rewrite

    def _rewrite(self, gm: fx.GraphModule, layer: Layer) -> fx.Node:
        g, node = gm.graph, layer.node
        q, s = layer.quantized_weight()
        base = _attr_base(layer.name)
        first = node.prev  # the rewrite inserts between this and node: those inherit node's partition
        with g.inserting_before(node):
            wq = g.get_attr(_register(gm, f"{base}_weight_int8", q))
            ws = g.get_attr(_register(gm, f"{base}_weight_scale", s))
            w = g.call_function(QDQ.dequantize_channel, (wq, ws, None, 0, W_QMIN, W_QMAX, W_DTYPE))
            if layer.kind == "embedding":
                out = g.call_function(aten.embedding.default, (w, layer.input))
            else:
                x = layer.input
                if layer.smooth is not None:
                    inv = g.get_attr(_register(gm, f"{base}_smooth_inv", (1.0 / layer.smooth).float()))
                    x = g.call_function(aten.mul.Tensor, (x, inv))
                x = _qdq(g, x, layer.act)
                b = layer.bias_node
                if b is None and layer.bias is not None:
                    b = g.get_attr(_register(gm, f"{base}_bias", layer.bias.detach().float()))
                if layer.kind == "linear":
                    out = g.call_function(aten.linear.default, (x, w, b))
                else:
                    c = layer.conv
                    out = g.call_function(aten.conv2d.default,
                                          (x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"]))
                    out = _qdq(g, out, layer.out) if layer.out is not None else out
        annotation(out).tags["int8"] = {"status": "int8", "layer": layer.name, "kind": layer.kind,
                                        "mode": layer.mode if layer.kind != "embedding" else "weight-only",
                                        "sqnr_db": _round(layer.sqnr_db), "smoothquant": layer.smooth is not None}
        inherit_partition(nodes_between(first, node), node)
        node.replace_all_uses_with(out)
        g.erase_node(node)
        drop_attr(gm, layer.weight_node)
        return out


def _kernel_shape_note(lowered: list[dict[str, Any]]) -> str:
    """One line for cm.notes: which kernel choices were timed per row-count bucket, which at one shape."""
    by_rows = [r for r in lowered if "timed_at_rows" in r]
    split = [r for r in by_rows if r.get("kernel_by_rows")]
    rest = len(lowered) - len(by_rows)
    parts = []
    if by_rows:
        counts = sorted({int(c) for r in by_rows for c in r["timed_at_rows"]})
        parts.append(f"{len(by_rows)} dynamic linear(s) timed at row counts {counts[0]}-{counts[-1]} "
                     f"(x1/64 to x64 of the example's); {len(split)} specialise by row-count bucket "
                     f"(kernel_by_rows), {len(by_rows) - len(split)} have one kernel fastest at every count")
    if rest:
        parts.append(f"{rest} layer(s) timed at the example's shape and used at every shape")
    return "; ".join(parts) + " (candidates are exact, so a bucket changes speed, never results)"


def _weight_codes(choice: str) -> tuple[int, str]:
    """(widest weight code, why) for ``QuantizeOptions.weights``."""
    if choice == "int8":
        return W_QMAX, "weights='int8'"
    if choice == "int7":
        return INT7_QMAX, "weights='int7'"
    qmax = weight_qmax_for_this_cpu()
    if qmax == W_QMAX:
        return qmax, "auto: fbgemm's int8 kernels are exact with int8 weights on this CPU"
    return qmax, ("auto: without VNNI fbgemm saturates int8 weights and the exact int8 kernel (torch._int_mm) "
                  "is slower than fp32 here; int7 weights keep fbgemm exact (weights='int8' to override)")


def _qdq(g: fx.Graph, x: fx.Node, act: tuple[float, int] | None) -> fx.Node:
    if act is None:  # dynamic: ONNX DynamicQuantizeLinear + DequantizeLinear
        qp = g.call_function(QDQ.choose_qparams, (x, ACT_QMIN, ACT_QMAX, EPS, ACT_DTYPE))
        scale, zp = g.call_function(operator.getitem, (qp, 0)), g.call_function(operator.getitem, (qp, 1))
        xq = g.call_function(QDQ.quantize_t, (x, scale, zp, ACT_QMIN, ACT_QMAX, ACT_DTYPE))
        return g.call_function(QDQ.dequantize_t, (xq, scale, zp, ACT_QMIN, ACT_QMAX, ACT_DTYPE))
    scale, zp = act
    xq = g.call_function(QDQ.quantize, (x, scale, zp, ACT_QMIN, ACT_QMAX, ACT_DTYPE))
    return g.call_function(QDQ.dequantize, (xq, scale, zp, ACT_QMIN, ACT_QMAX, ACT_DTYPE))


def _attr_base(name: str) -> str:
    return "int8_" + "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def _register(gm: fx.GraphModule, base: str, value: torch.Tensor) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.register_buffer(name, value.contiguous())
    return name


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, 2)


def _row(name: str, status: str, reason: str | None, layer: Layer | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"layer": name, "status": status, "reason": reason or ""}
    if layer is not None:
        row.update(kind=layer.kind, sqnr_db=_round(layer.sqnr_db), smoothquant=layer.smooth is not None)
    return row
