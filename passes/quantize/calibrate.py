"""Calibration for ``quantize``: run the graph on data, observe, compare, simulate.

One interpreter (``Probe``) serves every measurement the pass makes:

* ``observe``: record a node's input or output activation in an ``ActStats``
  (exact min/max, a capped random sample for percentile/MSE observers, and
  per-channel |max| for SmoothQuant);
* ``compare``: run a node normally and also a simulated int8 variant on the same
  fp32 input, accumulating signal and noise (per-layer SQNR);
* ``override``: replace a node's result by its simulation (whole-model accuracy
  of a candidate plan without copying the graph).

Observers turn ``ActStats`` into a range: ``minmax`` (exact), ``percentile``
(99.99th of the sample on each side), ``mse`` (the clip range, among shrunk
min/max ranges, with the least fake-quant MSE on the sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx

from autoglm.ir.int8 import act_qparams, fake_quant_static
from autoglm.ir.metrics import sqnr_from_sums
from autoglm.ir.progress import bar as progress_bar

__all__ = ["ActStats", "Probe", "calibration_batches", "observed_range", "OBSERVERS"]

OBSERVERS = ("minmax", "percentile", "mse")
_SAMPLE_PER_BATCH = 16384
_SAMPLE_CAP = 262144


@dataclass
class ActStats:
    lo: float = math.inf
    hi: float = -math.inf
    samples: list[torch.Tensor] = field(default_factory=list)
    channel_absmax: torch.Tensor | None = None  # over the last dim (Linear input features)

    def observe(self, x: torch.Tensor, channels: bool = False) -> None:
        x = x.detach().float()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        flat = x.reshape(-1)
        if sum(s.numel() for s in self.samples) < _SAMPLE_CAP:
            # A seeded choice keeps calibration deterministic for the same data.
            g = torch.Generator().manual_seed(len(self.samples))
            idx = torch.randint(0, flat.numel(), (min(_SAMPLE_PER_BATCH, flat.numel()),), generator=g)
            self.samples.append(flat[idx])
        if channels:
            cur = x.reshape(-1, x.shape[-1]).abs().amax(dim=0)
            self.channel_absmax = cur if self.channel_absmax is None else torch.maximum(self.channel_absmax, cur)


def observed_range(stats: ActStats, observer: str) -> tuple[float, float]:
    """The activation range an observer picks from what was seen."""
    if observer == "minmax" or not stats.samples:
        return stats.lo, stats.hi
    sample = torch.cat(stats.samples)
    if observer == "percentile":
        return float(torch.quantile(sample, 1e-4)), float(torch.quantile(sample, 1 - 1e-4))
    if observer == "mse":
        best, best_err = (stats.lo, stats.hi), math.inf
        for shrink in torch.linspace(0.3, 1.0, 15).tolist():
            lo, hi = stats.lo * shrink, stats.hi * shrink
            scale, zp = act_qparams(lo, hi)
            err = float(((fake_quant_static(sample, scale, zp) - sample) ** 2).mean())
            if err < best_err:
                best, best_err = (lo, hi), err
        return best
    raise ValueError(f"unknown observer {observer!r}; use one of {OBSERVERS}")


def calibration_batches(calibration: Any, example_inputs: Sequence[Any], n_inputs: int) -> list[tuple]:
    """Flat input tuples from ``ctx.calibration`` (iterable / DataLoader) or the example inputs.

    A batch may be one tensor or a tuple/list; extra trailing items (labels from a
    DataLoader) are dropped, fewer items than the graph takes is an error.
    """
    source = [tuple(example_inputs)] if calibration is None else calibration
    out = []
    for i, batch in enumerate(source):
        items = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        if len(items) < n_inputs:
            raise ValueError(f"calibration batch {i} has {len(items)} inputs but the graph takes {n_inputs}; "
                             "give flat input tuples like the example inputs")
        out.append(items[:n_inputs])
    if not out:
        raise ValueError("calibration data is empty; pass at least one batch of inputs")
    return out


Simulation = Callable[[torch.Tensor], torch.Tensor]


class Probe(fx.Interpreter):
    """Runs ``gm`` once per batch with observation, comparison and overrides (see module doc)."""

    def __init__(self, gm: fx.GraphModule, observe: dict[fx.Node, list[tuple[str, fx.Node | None, bool]]] = None,
                 compare: dict[fx.Node, tuple[fx.Node, dict[str, Simulation]]] = None,
                 override: dict[fx.Node, tuple[fx.Node, Simulation]] = None):
        super().__init__(gm, garbage_collect_values=True)
        self.observe_at = observe or {}
        self.compare_at = compare or {}
        self.override_at = override or {}
        self.stats: dict[str, ActStats] = {}
        self.signal: dict[fx.Node, float] = {}
        self.noise: dict[tuple[fx.Node, str], float] = {}

    def run_node(self, n: fx.Node) -> Any:
        for key, src, channels in self.observe_at.get(n, ()):
            if src is not None:  # an input: still in env because this node has not run yet
                self.stats.setdefault(key, ActStats()).observe(self.env[src], channels)
        if n in self.override_at:
            src, fn = self.override_at[n]
            result = fn(self.env[src])
        else:
            result = super().run_node(n)
        for key, src, channels in self.observe_at.get(n, ()):
            if src is None:
                self.stats.setdefault(key, ActStats()).observe(result, channels)
        if n in self.compare_at:
            src, variants = self.compare_at[n]
            ref = result.double()
            self.signal[n] = self.signal.get(n, 0.0) + float((ref**2).sum())
            for name, fn in variants.items():
                err = float(((fn(self.env[src]).double() - ref) ** 2).sum())
                self.noise[(n, name)] = self.noise.get((n, name), 0.0) + err
        return result

    def sqnr_db(self, n: fx.Node, variant: str) -> float:
        return sqnr_from_sums(self.signal.get(n, 0.0), self.noise.get((n, variant), 0.0))

    def run_all(self, batches: Iterable[tuple], desc: str = "", progress: bool = True) -> list[tuple]:
        outs = []
        with torch.no_grad():
            for batch in progress_bar(list(batches), desc, show=progress):
                out = self.run(*batch)
                outs.append(tuple(out) if isinstance(out, (tuple, list)) else (out,))
        return outs
