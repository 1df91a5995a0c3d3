"""Cost model: seconds per node, analytic (roofline) or measured.

Analytic: ``max(flops / peak_flops, bytes / bandwidth) + dispatch`` with a
fixed ``REFERENCE_PROFILE`` by default, so that an analytic plan is a function of
the graph alone: the same in every process, on every machine, whatever ran
before (a profile measured per machine made plans drift with the machine's load:
a partition test failed at 1.1004 > 1.10 after a fresh measurement). Pass
``profile=machine_profile()`` to plan for this machine's measured rates
(measured once and cached on disk: ``$AUTOGLM_CACHE`` or
``~/.cache/autoglm/machine-<threads>t.json``). Measured: the node's median
latency on its real inputs, cached by (op, shapes, dtype, device, threads) on
the ``CostModel`` (one compile's session, never process-wide), so identical
layers are timed once per compile.

What the roofline counts as bytes (the annotator records every tensor a node
touches, which over-counts some ops):

- pure views (view, transpose, permute, ...) move nothing: dispatch cost only;
- an embedding gathers rows: it reads indices and the rows it returns, not the
  whole table;
- nodes that produce no tensor (``x.shape``, ``getitem`` on a tuple of ints)
  cost one Python operation;
- a fused submodule (``split_merge``) costs the sum of the nodes it holds, so
  merging changes how work is grouped, not how much there is;
- an int8 linear/conv module has its multiply-adds counted from its shapes
  (``int8_flops``: the FLOP counter cannot see int8 kernels), written into its
  annotation by ``annotate_costs``.

Costs are at the example's shapes. A graph with symbolic shapes (a dynamic batch
or sequence, ``TensorSpec.symbolic``) is annotated and priced at its hints, the
sizes of the example inputs: a plan (splits, partitions) is balanced for that
shape and reused as is at every other one. The passes say so in their notes
(``"costs_at": "example shapes"``) when the graph has symbolic dimensions.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.fx as fx

from autoglm.cost.int8_flops import int8_flops
from autoglm.ir.meta import annotation, has_annotation, iter_compute_nodes, output_specs
from autoglm.ir.ops import OpKind, op_kind
from autoglm.ir.timing import median_seconds

__all__ = ["MachineProfile", "CostModel", "CostKind", "measure_machine", "machine_profile", "REFERENCE_PROFILE",
           "COSTS_AT"]

CostKind = Literal["analytic", "measured"]

# What a pass's notes say about the shapes its costs were computed at, on a graph with symbolic shapes.
COSTS_AT = "example shapes"


@dataclass
class MachineProfile:
    peak_flops: float  # FLOP/s of a large fp32 GEMM
    bandwidth: float  # bytes/s of a large copy
    dispatch_s: float  # fixed cost of launching one op from Python
    threads: int
    python_op_s: float = 1e-7  # a plain Python operation (getattr, getitem on a tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_machine(repeats: int = 5) -> MachineProfile:
    """Measure peak GEMM FLOP/s, copy bandwidth and op dispatch time (~1 s)."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm = median_seconds(lambda: torch.mm(a, b), repeats)
    big = torch.empty(32 * 1024 * 1024 // 4)
    dst = torch.empty_like(big)
    copy = median_seconds(lambda: dst.copy_(big), repeats)
    tiny = torch.randn(4)
    dispatch = median_seconds(lambda: [torch.add(tiny, tiny) for _ in range(100)], repeats) / 100
    shape = (2, 16, 64)
    python_op = median_seconds(lambda: [shape[1] for _ in range(1000)], repeats) / 1000
    return MachineProfile(
        peak_flops=2 * n**3 / gemm,
        bandwidth=2 * big.numel() * 4 / copy,
        dispatch_s=dispatch,
        threads=torch.get_num_threads(),
        python_op_s=python_op,
    )


# One core of the AMD EPYC (AVX-512) this project is developed on, 1 thread, as measured_machine()
# reported it (rounded). Only ratios matter for plans: compute- vs memory-bound, op vs dispatch.
REFERENCE_PROFILE = MachineProfile(peak_flops=70e9, bandwidth=17e9, dispatch_s=2.8e-6, threads=1, python_op_s=2.6e-8)


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


class CostModel:
    """Seconds per node. ``kind="measured"`` needs the graph's example inputs."""

    def __init__(self, kind: CostKind = "analytic", profile: MachineProfile | None = None, repeats: int = 5,
                 timings: dict[tuple, float] | None = None):
        if kind not in ("analytic", "measured"):
            raise ValueError(f"cost must be 'analytic' or 'measured', got {kind!r}")
        self.kind = kind
        self._profile = profile
        self.repeats = repeats
        # Measured latencies keyed by (op, input shapes, dtype, device), shared only with the
        # cost models this one hands its ``timings`` to (the passes of the same compile).
        self.timings: dict[tuple, float] = {} if timings is None else timings

    @property
    def profile(self) -> MachineProfile:
        if self._profile is None:
            self._profile = REFERENCE_PROFILE
        return self._profile

    def analytic(self, node: fx.Node) -> float:
        """Roofline seconds for one node from its annotation (0 for non-compute nodes)."""
        if node.op not in ("call_function", "call_method", "call_module"):
            return 0.0
        p = self.profile
        if not output_specs(node):
            return p.python_op_s  # shape arithmetic and tuple access: no tensor work
        if _is_pure_view(node):
            return p.dispatch_s
        gm = node.graph.owning_module
        kind = op_kind(node, gm) if gm is not None else OpKind.OTHER
        if node.op == "call_module" and gm is not None:
            inner = _fused_graph(node, gm)
            if inner is not None:
                return self._fused(node, inner)
        ann = annotation(node)
        moved = ann.bytes_moved
        if kind == OpKind.EMBEDDING:
            # A lookup touches the indices and the rows it returns, not the whole table.
            moved = 2 * ann.bytes_written + _index_bytes(node)
        return max(ann.flops / p.peak_flops, moved / p.bandwidth) + p.dispatch_s

    def _fused(self, node: fx.Node, inner: fx.GraphModule) -> float:
        """A fused submodule costs what its nodes cost (their annotations survive the merge)."""
        nodes = list(iter_compute_nodes(inner.graph))
        if nodes and all(has_annotation(n) and annotation(n).outputs for n in nodes):
            return sum(self.analytic(n) for n in nodes) + self.profile.dispatch_s
        ann = annotation(node)  # loaded from disk: inner facts are gone, use the module's totals
        p = self.profile
        return max(ann.flops / p.peak_flops, ann.bytes_moved / p.bandwidth) + p.dispatch_s * (len(nodes) + 1)

    def node_cost(self, node: fx.Node) -> float:
        ann = annotation(node)
        if self.kind == "measured" and ann.latency_s is not None:
            return ann.latency_s
        return self.analytic(node)

    def annotate_costs(self, gm: fx.GraphModule, example_inputs: Sequence[Any] | None = None) -> None:
        """Write ``cost_s`` on every node.

        With ``kind="measured"`` and ``example_inputs``, nodes are timed first (cached);
        without inputs, latencies already on the nodes are used and nodes never timed
        fall back to the analytic estimate.
        """
        if self.kind == "measured" and example_inputs is not None:
            self.measure(gm, example_inputs)
        for node in gm.graph.nodes:
            ann = annotation(node)
            if ann.flops == 0:  # the FLOP counter does not see int8 kernels: count their MACs
                ann.flops = int8_flops(node) or 0
            ann.cost_s = self.node_cost(node)

    def measure(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        """Time every compute node on its real inputs, reusing cached timings."""
        from autoglm.ir.annotate import AnnotatingInterpreter  # local: annotate imports meta only

        timings = self.timings

        class _Cached(AnnotatingInterpreter):
            def _time(inner, n: fx.Node, args: Any, kwargs: Any) -> float:  # noqa: N805
                key = _measure_key(n, gm, args, kwargs)
                if key not in timings:
                    timings[key] = AnnotatingInterpreter._time(inner, n, args, kwargs)
                return timings[key]

        _Cached(gm, measure=True, repeats=self.repeats).run(*example_inputs)

    def total(self, gm: fx.GraphModule) -> float:
        return sum(self.node_cost(n) for n in iter_compute_nodes(gm.graph))

    def node_costs(self, gm: fx.GraphModule) -> dict[fx.Node, float]:
        """Seconds for every compute node, in graph order."""
        return {n: self.node_cost(n) for n in iter_compute_nodes(gm.graph)}


# Ops that return a view of their input: no bytes move. reshape/flatten/contiguous
# may copy (after a transpose they do), so they keep their byte count.
_PURE_VIEW_TARGETS = {"view", "transpose", "permute", "expand", "unsqueeze", "squeeze", "t", "unflatten"}


def _is_pure_view(node: fx.Node) -> bool:
    target = node.target
    if node.op == "call_module":
        return False
    if node.op == "call_method":
        name = str(target)
    else:
        name = getattr(target, "_opname", None) or getattr(target, "__name__", "")
    return name in _PURE_VIEW_TARGETS


def _index_bytes(node: fx.Node) -> int:
    total = 0
    for a in node.all_input_nodes:
        for spec in output_specs(a):
            if not spec.dtype.is_floating_point:
                total += spec.nbytes
    return total


def _fused_graph(node: fx.Node, gm: fx.GraphModule) -> fx.GraphModule | None:
    try:
        mod = gm.get_submodule(str(node.target))
    except AttributeError:
        return None
    return mod if isinstance(mod, fx.GraphModule) else None


def _measure_key(n: fx.Node, gm: fx.GraphModule, args: Any, kwargs: Any) -> tuple:
    from torch.utils._pytree import tree_flatten

    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        # Fused submodules share a class name; their code tells them apart.
        detail = mod.code if isinstance(mod, fx.GraphModule) else getattr(mod, "extra_repr", lambda: "")()
        op = (type(mod).__qualname__, detail)
    else:
        op = (n.op, str(n.target))
    leaves, _ = tree_flatten((args, kwargs))
    sig = tuple(
        (tuple(v.shape), str(v.dtype), str(v.device)) if isinstance(v, torch.Tensor) else repr(v)[:50]
        for v in leaves
    )
    return (op, sig, torch.get_num_threads())
