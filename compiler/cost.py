"""Cost model: seconds per node, analytic (roofline) or measured.

Analytic: ``max(flops / peak_flops, bytes / bandwidth) + dispatch`` with this
machine's peak GEMM rate and memory bandwidth, measured once and cached on disk
(``$AUTOGLM_CACHE`` or ``~/.cache/autoglm/machine.json``); pass ``MachineProfile``
to override. Measured: the node's median latency on its real inputs, cached by
(op, shapes, dtype, device) so identical layers are timed once.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.fx as fx

from autoglm.ir.meta import annotation, iter_compute_nodes

__all__ = ["MachineProfile", "CostModel", "measure_machine", "machine_profile"]

CostKind = Literal["analytic", "measured"]


@dataclass
class MachineProfile:
    peak_flops: float  # FLOP/s of a large fp32 GEMM
    bandwidth: float  # bytes/s of a large copy
    dispatch_s: float  # fixed cost of launching one op from Python
    threads: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _median_time(fn: Any, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure_machine(repeats: int = 5) -> MachineProfile:
    """Measure peak GEMM FLOP/s, copy bandwidth and op dispatch time (~1 s)."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = _median_time(lambda: torch.mm(a, b), repeats)
    big = torch.empty(32 * 1024 * 1024 // 4)
    dst = torch.empty_like(big)
    copy = _median_time(lambda: dst.copy_(big), repeats)
    tiny = torch.randn(4)
    dispatch = _median_time(lambda: [torch.add(tiny, tiny) for _ in range(100)], repeats) / 100
    return MachineProfile(
        peak_flops=2 * n**3 / gemm,
        bandwidth=2 * big.numel() * 4 / copy,
        dispatch_s=dispatch,
        threads=torch.get_num_threads(),
    )


def _cache_dir() -> Path:
    return Path(os.environ.get("AUTOGLM_CACHE", Path.home() / ".cache" / "autoglm"))


_PROFILE: MachineProfile | None = None


def machine_profile(refresh: bool = False) -> MachineProfile:
    """This machine's profile: from memory, then the disk cache, else measured and cached."""
    global _PROFILE
    if _PROFILE is not None and not refresh:
        return _PROFILE
    path = _cache_dir() / f"machine-{torch.get_num_threads()}t.json"
    if path.exists() and not refresh:
        try:
            _PROFILE = MachineProfile(**json.loads(path.read_text()))
            return _PROFILE
        except (ValueError, TypeError):
            pass  # a corrupt cache is re-measured
    _PROFILE = measure_machine()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_PROFILE.to_json()))
        tmp.replace(path)
    except OSError:
        pass  # read-only home: keep the profile in memory only
    return _PROFILE


# Measured latencies keyed by (op, input shapes, dtype, device); process-wide.
_MEASURED: dict[tuple, float] = {}


class CostModel:
    """Seconds per node. ``kind="measured"`` needs the graph's example inputs."""

    def __init__(self, kind: CostKind = "analytic", profile: MachineProfile | None = None, repeats: int = 5):
        if kind not in ("analytic", "measured"):
            raise ValueError(f"cost must be 'analytic' or 'measured', got {kind!r}")
        self.kind = kind
        self._profile = profile
        self.repeats = repeats

    @property
    def profile(self) -> MachineProfile:
        if self._profile is None:
            self._profile = machine_profile()
        return self._profile

    def analytic(self, node: fx.Node) -> float:
        ann = annotation(node)
        if node.op not in ("call_function", "call_method", "call_module"):
            return 0.0
        p = self.profile
        return max(ann.flops / p.peak_flops, ann.bytes_moved / p.bandwidth) + p.dispatch_s

    def node_cost(self, node: fx.Node) -> float:
        ann = annotation(node)
        if self.kind == "measured" and ann.latency_s is not None:
            return ann.latency_s
        return self.analytic(node)

    def annotate_costs(self, gm: fx.GraphModule, example_inputs: Sequence[Any] | None = None) -> None:
        """Write ``cost_s`` on every node (measuring first when ``kind="measured"``)."""
        if self.kind == "measured":
            if example_inputs is None:
                raise ValueError("measured cost needs example inputs")
            self.measure(gm, example_inputs)
        for node in gm.graph.nodes:
            annotation(node).cost_s = self.node_cost(node)

    def measure(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        """Time every compute node on its real inputs, reusing cached timings."""
        from autoglm.ir.annotate import AnnotatingInterpreter  # local: annotate imports meta only

        class _Cached(AnnotatingInterpreter):
            def _time(inner, n: fx.Node, args: Any, kwargs: Any) -> float:  # noqa: N805
                key = _measure_key(n, gm, args, kwargs)
                if key not in _MEASURED:
                    _MEASURED[key] = AnnotatingInterpreter._time(inner, n, args, kwargs)
                return _MEASURED[key]

        _Cached(gm, measure=True, repeats=self.repeats).run(*example_inputs)

    def total(self, gm: fx.GraphModule) -> float:
        return sum(self.node_cost(n) for n in iter_compute_nodes(gm.graph))


def _measure_key(n: fx.Node, gm: fx.GraphModule, args: Any, kwargs: Any) -> tuple:
    from torch.utils._pytree import tree_flatten

    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        op = (type(mod).__qualname__, getattr(mod, "extra_repr", lambda: "")())
    else:
        op = (n.op, str(n.target))
    leaves, _ = tree_flatten((args, kwargs))
    sig = tuple(
        (tuple(v.shape), str(v.dtype), str(v.device)) if isinstance(v, torch.Tensor) else repr(v)[:50]
        for v in leaves
    )
    return (op, sig)
