"""The pass contract every graph rewrite follows.

A pass is a class with a registered ``name``, an ``Options`` dataclass, what it
``requires`` and ``ensures``, and a ``run`` that returns ``PassResult``. Passes
keep no state between runs: everything they need arrives in the ``PassContext``.

    class Dce(GraphPass):
        name = "dce"
        def run(self, gm, ctx):
            return PassResult(gm, eliminate_dead_code(gm))  # autoglm.ir.effects
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch.fx as fx

__all__ = ["PassResult", "PassContext", "GraphPass", "NoOptions", "PassError", "NodeError", "source_line"]


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


@dataclass
class NoOptions:
    pass


@dataclass
class PassContext:
    """Everything a pass may read: example inputs, target devices, cost model, data.

    ``example_inputs`` are the flat tensors the graph's placeholders take.
    ``calibration`` is an iterable of such flat input tuples (for lossy passes).
    ``properties`` accumulates what earlier passes ensured ("partitioned", ...).
    """

    example_inputs: Sequence[Any]
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    cost: Any = None  # autoglm.cost.model.CostModel
    calibration: Any = None
    properties: set[str] = field(default_factory=set)
    # Facts passes leave for the report, keyed by pass name (plan, layer table...).
    notes: dict[str, Any] = field(default_factory=dict)


class GraphPass:
    """Base class of all passes; subclasses set the class variables and ``run``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    exact: ClassVar[bool] = True  # outputs unchanged within fp32 tolerance
    requires: ClassVar[tuple[str, ...]] = ()
    # Properties (autoglm.ir.properties) the pass establishes, checked on its output graph, and
    # those it keeps valid; any other property held before a modifying pass is re-checked after it.
    ensures: ClassVar[tuple[str, ...]] = ()
    preserves: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""

    def __init__(self, options: Any = None, **kwargs: Any):
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            options = dataclasses.replace(options, **kwargs)
        if not isinstance(options, self.Options):
            raise TypeError(f"{self.name}: options must be {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:  # pragma: no cover - interface
        """Rewrite ``gm`` (in place or a new module) and return it with whether anything changed."""
        raise NotImplementedError

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        """Same as ``run``."""
        return self.run(gm, ctx)

    def spec(self) -> str:
        """The spec-string spelling of this pass with its non-default options."""
        changed = []
        for f in dataclasses.fields(self.options):
            v = getattr(self.options, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            if v != default:
                changed.append(f"{f.name}={v!r}")
        return f"{self.name}({','.join(changed)})" if changed else self.name

    def __repr__(self) -> str:
        return f"<pass {self.spec()}>"


_INTERNAL_PATHS = ("/torch/", "/autoglm/", "/compiler/capture/", "/site-packages/transformers/")


def source_line(node: fx.Node | None) -> str:
    """The user's source line that produced ``node``: the innermost non-library frame."""
    if node is None:
        return ""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    frames = []
    for i, ln in enumerate(lines):
        if ln.startswith("File "):
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            frames.append((ln, code))
    user = [f for f in frames if not any(p in f[0] for p in _INTERNAL_PATHS)]
    chosen = (user or frames or [("", "")])[-1]
    return f"{chosen[0]}: {chosen[1]}".strip(": ")


class NodeError(Exception):
    """Raised by a pass when a specific node cannot be handled."""

    def __init__(self, node: fx.Node, message: str):
        super().__init__(message)
        self.node = node


class PassError(RuntimeError):
    """A pass failed, or its output failed verification; names pass, node, source."""

    def __init__(self, pass_name: str, message: str, node: fx.Node | None = None, previous: Sequence[str] = ()):
        parts = [f"pass '{pass_name}' failed: {message}"]
        if previous:
            parts.append(f"after passes: {', '.join(previous)}")
        if node is not None:
            try:
                parts.append(f"node: {node.format_node()}")
            except Exception:  # format_node can fail on half-rewritten graphs
                parts.append(f"node: {node.name}")
            src = source_line(node)
            if src:
                parts.append(f"source: {src}")
        super().__init__("; ".join(parts))
        self.pass_name = pass_name
        self.node = node
