"""``Program``: what ``autoglm.compile`` returns for a model with data-dependent branches.

Same interface as ``CompiledModel`` (the ``Compiled`` protocol) (``cm(*args, **kwargs)``, ``summary()``,
``graph_module``, ``notes``) plus ``stats`` (per branch point: source line,
predicate, hits per outcome, misses, re-plans, time re-planning), ``max_plans``
and ``on_limit``. See ``docs/dynamic_graphs.md`` for the design.

Each path segment is traced by ``autoglm.capture.branching`` and compiled like a
whole model would be: annotate, the same pass pipeline (its own partitioning
and placement when there are several devices), the same executor choice. The
example inputs of a segment are the real values of the call that first takes
it. ``autoglm.runtime.replan.PlanCache`` runs the segments and decides the
branches.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.capture.branching import Segment, trace_segment
from autoglm.capture.errors import CaptureError
from autoglm.capture.flat import FlatSignature
from autoglm.driver.compiled import CompiledViews
from autoglm.cost.model import CostModel
from autoglm.driver.graph import DriverOptions, compile_graph, preserved_buffers
from autoglm.ir.effects import has_side_effects
from autoglm.ir.pass_base import PassError
from autoglm.ir.guards import check_guard
from autoglm.runtime.replan import PlanCache, PlanLimitError, PlanNode, ReplanStats

__all__ = ["Program", "DynamicCompiledModel", "ProgramOptions", "compile_program"]


@dataclass
class ProgramOptions:
    """How each path segment is compiled (the driver's options, as for a whole model) and how many
    paths are kept."""

    driver: DriverOptions = field(default_factory=lambda: DriverOptions([]))
    max_plans: int = 64  # compiled paths kept; 2^6 covers six independent two-way branches
    on_limit: str = "eager"  # "eager": new paths past the limit run uncompiled; "error": raise
    backend: str = "fx"  # "onnxruntime": each compiled segment runs as its own ONNX session
    backend_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _SegmentPlan:
    """The compiler's record of one segment: traced form, compiled graph, pass records."""

    segment: Segment
    graph_module: fx.GraphModule
    records: list[Any]
    compiled: bool
    example: list[Any] = field(default_factory=list)  # inputs of the call that first took it (for save)


def _clone_inputs(values: Sequence[Any]) -> list[Any]:
    return [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in values]


class Program(CompiledViews):
    """A compiled model made of path-specialised segments joined at branch points."""

    def __init__(self, model: nn.Module, signature: FlatSignature, example_inputs: Sequence[torch.Tensor],
                 config: dict[str, Any], options: ProgramOptions, notes: dict[str, Any] | None = None):
        self.model = model
        self.signature = signature
        self.example_inputs = list(example_inputs)
        self.config = dict(config)
        self.frontend = "branching"
        self.notes = dict(notes or {})
        self.options = options
        self._n_inputs = len(self.example_inputs)
        self._cost = CostModel(options.driver.cost)  # one per program: segments share measured timings
        self.cache = PlanCache(self._build, max_plans=options.max_plans, on_limit=options.on_limit)
        self.executor = self._run_flat

    # -- the Compiled interface (autoglm.driver.compiled.Compiled) ----------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model: the path these inputs take, compiled the first time it is seen (re-planning)."""
        flat = self.signature.flatten_inputs(args, kwargs)
        out, leaf = self.cache.run(flat)
        sig = leaf.payload.segment.signature
        return sig.unflatten_outputs(out)

    forward = __call__

    def _run_flat(self, *flat: Any) -> Any:
        return self.cache.run(list(flat))[0]

    def warm_up(self, flat_inputs: Sequence[torch.Tensor]) -> None:
        """Compile the path ``flat_inputs`` take, leaving the model's buffers as they were."""
        with preserved_buffers(self.model), torch.no_grad():
            self.cache.run(list(flat_inputs))

    @property
    def stats(self) -> ReplanStats:
        """Cache hits, re-plans (new paths compiled), guard failures and eager fallbacks so far."""
        return self.cache.stats

    @property
    def max_plans(self) -> int:
        """How many paths may be compiled before ``on_limit`` applies."""
        return self.cache.max_plans

    @property
    def on_limit(self) -> str:
        """What happens past ``max_plans`` paths: ``"eager"`` (run the model as is) or ``"error"``."""
        return self.cache.on_limit

    @property
    def records(self) -> list[Any]:  # type: ignore[override]
        """Pass records of every compiled segment, in compile order."""
        out: list[Any] = []
        for node in self._nodes():
            out.extend(node.payload.records)
        return out

    @property
    def graph_module(self) -> fx.GraphModule:  # type: ignore[override]
        """The most recently compiled path as one graph, with its guards as ``check_guard`` nodes."""
        leaf = self.cache.last_leaf
        if leaf is None:
            raise RuntimeError("no path compiled yet: call the model once first")
        return self.path_graph(leaf)

    def paths(self) -> list[tuple]:
        """The outcome sequences of the compiled paths."""
        return [leaf.key for leaf in self.cache.leaves()]

    def summary(self) -> str:  # type: ignore[override]
        """The latest compiled path's summary, the number of paths and the re-planning statistics."""
        text = super().summary() if self.cache.last_leaf is not None else "no path compiled yet"
        return f"{text}\n{len(self.paths())} compiled paths; the table shows the latest\n{self.stats}"

    def save(self, path: str | os.PathLike) -> None:
        """Save the paths compiled so far (``autoglm.load`` runs them; see ``program/save.py``)."""
        from autoglm.program.save import save_program

        save_program(self, path)

    def export_onnx(self, path: str | os.PathLike, options: Any = None, **kwargs: Any) -> Any:
        """One ONNX file per compiled path plus a manifest of guards (``export/onnx/program.py``)."""
        from pathlib import Path

        from autoglm.export.onnx.export import resolve_options
        from autoglm.export.onnx.program import export_program

        target = Path(path)
        if target.suffix != ".onnx":
            raise ValueError(f"ONNX output path must end in .onnx, got {target}")
        return export_program(self, target, resolve_options(options, kwargs))

    def __repr__(self) -> str:
        return (f"Program(paths={self.stats.paths}, branch_points={len(self.stats.branch_points)}, "
                f"max_plans={self.max_plans}, on_limit={self.on_limit!r})")

    # -- building segments (called by the plan cache, under its exclusive lock) ------
    def _nodes(self) -> list[PlanNode]:
        out, stack = [], [self.cache.root] if self.cache.root is not None else []
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def _build(self, parent: PlanNode | None, outcome: Any, flat: Sequence[Any], env: dict[str, Any],
               compile: bool) -> PlanNode:
        if parent is None:
            decisions: tuple = ()
            expected, start, prefix = [], 0, ()
        else:
            prev: Segment = parent.payload.segment
            decisions = parent.key + (outcome,)
            expected = list(prev.decided) + [prev.branch]
            start, prefix = prev.traced_count, prev.node_names
        seg = trace_segment(self.model, self.signature, self._n_inputs, decisions, expected, start, prefix)
        missing = [name for name in seg.imports if name not in env]
        if missing:
            raise CaptureError(f"internal: values {missing} are used after a branch but were not kept at it",
                               source=seg.branch.source if seg.branch else "")
        example = [*flat, *[env[name] for name in seg.imports]]
        gm, run, records = seg.graph_module, seg.graph_module.forward, []
        if compile:
            gm, run, records = self._compile(seg.graph_module, example, (parent, outcome, seg.imports))
        bp = None
        if seg.branch is not None:
            bp = self.cache.branch_stats(seg.branch.source, seg.branch.predicate, seg.branch.kind)
        plan = _SegmentPlan(seg, gm, records, compile, _clone_inputs(example) if compile else [])
        return PlanNode(run, seg.imports, seg.exports, seg.n_effects, bp, plan)

    def _compile(self, gm: fx.GraphModule, example: Sequence[Any], where: tuple[PlanNode | None, Any, Sequence[str]]
                 ) -> tuple[fx.GraphModule, Any, list[Any]]:
        """The driver ``autoglm.compile`` runs on a whole graph, on one segment. ``where``: the
        segment's parent, the outcome that leads to it and the values it imports."""
        inputs = _clone_inputs(example)  # a segment may update its inputs in place
        options = dataclasses.replace(self.options.driver, calibration=self._segment_calibration(*where))
        with preserved_buffers(self.model):
            compiled = compile_graph(gm, inputs, options, cost_model=self._cost)
        gm, run = compiled.graph_module, compiled.executor
        if self.options.backend == "onnxruntime":
            run = self._on_onnxruntime(gm, inputs, run)
        return gm, run, compiled.records

    def _segment_calibration(self, parent: PlanNode | None, outcome: Any, imports: Sequence[str]
                             ) -> list[tuple] | None:
        """The model's calibration samples as this segment's inputs: each sample runs through the
        compiled segments before it and counts only if it takes the same branches to get here."""
        samples = self.options.driver.calibration
        if samples is None:
            return None
        chain: list[tuple[PlanNode, Any]] = []
        node, taken = parent, outcome
        while node is not None:
            chain.append((node, taken))
            node, taken = node.parent, node.outcome
        chain.reverse()
        out = []
        with preserved_buffers(self.model), torch.no_grad():
            for sample in samples:
                flat = ([sample] if isinstance(sample, torch.Tensor) else list(sample))[: self._n_inputs]
                env: dict[str, Any] = {}
                reached = True
                for seg_node, went in chain:
                    result = seg_node.run(*flat, *[env[name] for name in seg_node.imports])
                    env.update(zip(seg_node.exports, result[1:]))
                    if seg_node.decide(result[0]) != went:
                        reached = False
                        break
                if reached:
                    out.append(tuple([*flat, *[env[name] for name in imports]]))
        # Samples that took other branches do not reach this segment; with none left it is calibrated
        # on the call that first took it, and the note says how many samples each segment saw.
        self.notes.setdefault("segment_calibration_samples", []).append(len(out))
        return out or None

    def _on_onnxruntime(self, gm: fx.GraphModule, inputs: Sequence[Any], fx_run: Any) -> Any:
        """The segment as an onnxruntime session; kept on fx (and counted by reason) when it cannot be one."""
        from autoglm.export.onnx.check import OnnxExportError
        from autoglm.export.onnx.export import onnxruntime_for_graph

        reason = self._onnxruntime_refusal(gm, inputs)
        if reason is None:
            try:
                return onnxruntime_for_graph(gm, inputs, **self.options.backend_options)
            except (OnnxExportError, RuntimeError, TypeError, ValueError) as exc:
                text = str(exc).strip()
                reason = f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
        kept = self.notes.setdefault("onnxruntime_kept_fx", {})
        kept[reason] = kept.get(reason, 0) + 1
        return fx_run

    def _onnxruntime_refusal(self, gm: fx.GraphModule, inputs: Sequence[Any]) -> str | None:
        """Why this segment cannot be an onnxruntime session, or None."""
        compute = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
        if any(has_side_effects(n) for n in compute):
            return "a segment updates state in place (onnxruntime cannot update the model's buffers)"
        if not all(isinstance(v, torch.Tensor) for v in inputs):
            return "a segment takes non-tensor values"
        # A session holds what it reads as constants: a buffer the model updates (a running
        # memory, a counter) would be frozen at its export-time value.
        buffers = {id(b) for b in self.model.buffers()} if self.model is not None else set()
        if any(n.op == "get_attr" and id(_lookup(gm, str(n.target))) in buffers for n in gm.graph.nodes):
            return "a segment reads a model buffer (an onnxruntime session would freeze its value)"
        return None

    # -- one path as one graph ---------------------------------------------------------
    def path_graph(self, leaf: PlanNode) -> fx.GraphModule:
        """The segments from the root to ``leaf`` stitched into one flat graph.

        Each branch point becomes a ``check_guard`` node that raises when an input
        would leave this path, so the graph is only ever correct where it claims.
        """
        chain: list[PlanNode] = []
        node: PlanNode | None = leaf
        while node is not None:
            chain.append(node)
            node = node.parent
        chain.reverse()
        g = fx.Graph()
        root = nn.Module()
        values: dict[str, fx.Node] = {}
        inputs: list[fx.Node] = []
        for i, seg_node in enumerate(chain):
            plan: _SegmentPlan = seg_node.payload
            sgm = plan.graph_module
            env: dict[fx.Node, fx.Node] = {}
            placeholders = [n for n in sgm.graph.nodes if n.op == "placeholder"]
            for j, ph in enumerate(placeholders):
                if i == 0 and j < self._n_inputs:
                    inputs.append(g.placeholder(ph.name))
                env[ph] = inputs[j] if j < self._n_inputs else values[seg_node.imports[j - self._n_inputs]]
            for n in sgm.graph.nodes:
                if n.op == "placeholder":
                    continue
                if n.op == "output":
                    outs = tuple(n.args[0])
                    if seg_node.branch is None:
                        kept = outs[: len(outs) - seg_node.n_effects]
                        g.output(tuple(env[o] if isinstance(o, fx.Node) else o for o in kept))
                    else:
                        for name, o in zip(seg_node.exports, outs[1:]):
                            values[name] = env[o]
                        g.call_function(check_guard, (env[outs[0]], chain[i + 1].outcome, seg_node.branch.source))
                    continue
                if n.op in ("call_module", "get_attr"):
                    target = _adopt(root, sgm, str(n.target), i)
                    env[n] = g.create_node(n.op, target, tuple(fx.map_arg(n.args, env.__getitem__)),
                                           dict(fx.map_arg(n.kwargs, env.__getitem__)), n.name)
                    env[n].meta = dict(n.meta)
                else:
                    env[n] = g.node_copy(n, env.__getitem__)
        return fx.GraphModule(root, g, f"{type(self.model).__name__}Path")


def _adopt(root: nn.Module, source: fx.GraphModule, target: str, segment_index: int) -> str:
    """Give ``root`` the attribute ``target`` of ``source``; rename when another segment's differs."""
    obj: Any = source
    for part in target.split("."):
        obj = getattr(obj, part)
    name = target
    existing = _lookup(root, name)
    if existing is not None and existing is not obj:
        name = f"{target}_s{segment_index}"
    if _lookup(root, name) is None:
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        if isinstance(obj, nn.Module):
            mod.add_module(leaf, obj)
        elif isinstance(obj, nn.Parameter):
            mod.register_parameter(leaf, obj)
        elif isinstance(obj, torch.Tensor):
            mod.register_buffer(leaf, obj)
        else:
            setattr(mod, leaf, obj)
    return name


def _lookup(root: nn.Module, name: str) -> Any:
    obj: Any = root
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def compile_program(model: nn.Module, captured: Any, driver: DriverOptions, *, max_plans: int = 64,
                    on_limit: str = "eager", timings: dict[str, float] | None = None,
                    allow_fallback: bool = False, backend: str = "fx",
                    backend_options: dict[str, Any] | None = None) -> Program | str:
    """Build the ``Program`` for a model the symbolic frontend refused on a data-dependent branch.

    The example inputs' path is compiled here, so capture problems surface in
    ``autoglm.compile`` rather than at the first call. If that trace fails for a
    reason other than a branch, returns the reason when ``allow_fallback`` (the
    caller tries the export frontend and reports it) and raises ``CaptureError`` otherwise.
    """
    if on_limit not in ("eager", "error"):
        raise ValueError(f"on_limit must be 'eager' or 'error', got {on_limit!r}")
    if not isinstance(max_plans, int) or isinstance(max_plans, bool) or max_plans < 1:
        raise ValueError(f"max_plans must be a positive int, got {max_plans!r}")
    options = ProgramOptions(driver, max_plans, on_limit, backend, dict(backend_options or {}))
    config = driver.config(frontend="branching", backend=backend, max_plans=max_plans, on_limit=on_limit)
    timings = dict(timings or {})
    program = Program(model, captured.signature, captured.flat_inputs, config, options,
                      notes={"timings": timings, "frontend_reasons": dict(captured.reasons)})
    t0 = time.perf_counter()
    try:
        program.warm_up(captured.flat_inputs)
    except (CaptureError, TypeError, RuntimeError, AttributeError, NotImplementedError) as exc:
        if isinstance(exc, (PassError, PlanLimitError)):
            raise
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if allow_fallback:
            return reason
        raise CaptureError(f"could not capture {type(model).__name__} path by path",
                           {**captured.reasons, "branching": reason}, getattr(exc, "source", "")) from exc
    timings["first_path_s"] = time.perf_counter() - t0
    return program


# The name the issue and the docs use for the same object.
DynamicCompiledModel = Program
