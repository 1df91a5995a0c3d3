"""Run-time re-planning: a plan cache of path segments joined at branch points.

A model with data-dependent branches compiles to a tree of ``PlanNode``s. The
root is the code before the first branch; each node ends at a branch point
(its first output is the predicate) or at the model's outputs (a leaf: one
complete path). Per call::

    run root segment -> decide(predicate) -> children[outcome] -> run it -> ...

Values the later segments need travel in ``env`` by node name, so the code
before a branch runs once per call whichever way the branch goes. A missing
child is a *miss*: the compiler's ``build`` callback traces and compiles the
segment on the spot with the call's real values as example inputs, the node is
cached, and the call continues. A new leaf is a *re-plan* (one per distinct
path). The number of leaves is bounded by ``max_plans``; past it the policy is
``"error"`` (raise ``PlanLimitError``) or ``"eager"`` (the rest of the call runs
its traced ops uncompiled and uncached), counted in ``stats`` and warned once.

Thread safety: hits take no lock beyond a shared "reader" hold. Tracing patches
``torch.nn.Module.__call__`` process-wide, so a build waits until no call is
mid-flight and holds new calls back (a readers/writer gate); a second thread
that misses on the same outcome finds the first one's node and compiles nothing.

This module imports nothing from the compiler: the compiler hands in ``build``.
"""
from __future__ import annotations

import operator
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence


from autoglm.ir.guards import GuardFailure, check_guard  # graphs call it; the IR layer defines it

__all__ = ["PlanNode", "PlanCache", "PlanLimitError", "GuardFailure", "check_guard", "BranchStats", "ReplanStats", "ON_LIMIT_POLICIES"]

ON_LIMIT_POLICIES = ("eager", "error")


class PlanLimitError(RuntimeError):
    """A call needed a new path but the plan cache already holds ``max_plans`` paths."""


@dataclass
class BranchStats:
    """What happened at one branch point (one source line) over all calls."""

    source: str
    predicate: str
    kind: str  # "bool" or "len"
    outcomes: dict[Any, int] = field(default_factory=dict)  # hits per outcome (found in the cache)
    misses: int = 0  # outcomes not in the cache: a segment was compiled
    replans: int = 0  # new paths that first diverged here
    replan_s: float = 0.0  # time spent tracing + compiling those paths
    limit_events: int = 0  # new paths refused or run uncompiled because the cache was full

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "predicate": self.predicate, "kind": self.kind,
                "hits": {str(k): v for k, v in self.outcomes.items()}, "misses": self.misses,
                "replans": self.replans, "replan_s": self.replan_s, "limit_events": self.limit_events}


@dataclass
class ReplanStats:
    """Totals plus one ``BranchStats`` per branch point; ``str()`` prints a table."""

    max_plans: int
    on_limit: str
    calls: int = 0
    paths: int = 0  # compiled paths (leaves) in the cache
    replans: int = 0  # paths compiled, the first one included: one per distinct path taken
    replan_s: float = 0.0
    first_compile_s: float = 0.0  # the first call's trace + compile (part of replan_s)
    limit_events: int = 0
    uncached_calls: int = 0  # calls whose new path ran uncompiled (on_limit="eager")
    branch_points: dict[tuple[str, str], BranchStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "paths": self.paths, "replans": self.replans, "replan_s": self.replan_s,
                "first_compile_s": self.first_compile_s, "max_plans": self.max_plans, "on_limit": self.on_limit,
                "limit_events": self.limit_events, "uncached_calls": self.uncached_calls,
                "branch_points": [b.as_dict() for b in self.branch_points.values()]}

    def __str__(self) -> str:
        lines = [f"{self.calls} calls, {self.paths} paths compiled (max_plans={self.max_plans}, "
                 f"on_limit={self.on_limit!r}), {self.replans} re-plans in {self.replan_s * 1e3:.1f} ms, "
                 f"{self.limit_events} limit events, {self.uncached_calls} uncached calls"]
        for b in self.branch_points.values():
            hits = ", ".join(f"{k}: {v}" for k, v in b.outcomes.items()) or "-"
            lines.append(f"  [{b.kind}] {b.source}")
            lines.append(f"      predicate {b.predicate}; hits {{{hits}}}; misses {b.misses}; re-plans {b.replans} "
                         f"({b.replan_s * 1e3:.1f} ms); limit events {b.limit_events}")
        return "\n".join(lines)


class PlanNode:
    """One compiled segment. ``run(*flat_inputs, *imports) -> (predicate, *exports)`` or the outputs."""

    __slots__ = ("run", "imports", "n_imports", "fetch", "exports", "n_effects", "branch", "decide", "children", "parent",
                 "outcome", "payload")

    def __init__(self, run: Callable[..., Any], imports: Sequence[str], exports: Sequence[str], n_effects: int,
                 branch: BranchStats | None, payload: Any = None):
        self.run = run
        self.imports = tuple(imports)
        # itemgetter: one C call instead of a list comprehension (a Python frame on 3.11)
        self.n_imports = len(self.imports)
        self.fetch = operator.itemgetter(*self.imports) if self.imports else None
        self.exports = tuple(exports)
        self.n_effects = n_effects
        self.branch = branch
        self.decide: Callable[[Any], Any] = int if branch is not None and branch.kind == "len" else bool
        self.children: dict[Any, PlanNode] = {}
        self.parent: PlanNode | None = None
        self.outcome: Any = None
        self.payload = payload  # the compiler's own record of this segment (graph, signature)

    @property
    def key(self) -> tuple:
        """The outcomes that lead here from the root."""
        out, node = [], self
        while node.parent is not None:
            out.append(node.outcome)
            node = node.parent
        return tuple(reversed(out))


class _Gate:
    """Many concurrent calls, or one build and no calls (tracing is process-global)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._build = threading.Lock()

    def enter(self) -> None:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1

    def leave(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._writing and self._readers == 0:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Called by a thread inside ``enter``: trade the shared hold for the exclusive one."""
        self.leave()
        self._build.acquire()
        try:
            with self._cond:
                self._writing = True
                while self._readers:
                    self._cond.wait()
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
            self._build.release()
            self.enter()


@dataclass
class _CallState:
    origin: BranchStats | None = None  # where this call's new path diverged
    replanning: bool = False
    uncached: bool = False


Build = Callable[[PlanNode | None, Any, Sequence[Any], dict[str, Any], bool], PlanNode]


class PlanCache:
    """The plan tree, the guard loop and the policy when the tree is full.

    ``build(parent, outcome, flat_inputs, env, compile)`` returns the ``PlanNode``
    that follows ``outcome`` at ``parent`` (the root when ``parent`` is None),
    compiled when ``compile`` is true. ``branch_stats(source, predicate, kind)``
    gives the shared ``BranchStats`` for a branch point.
    """

    def __init__(self, build: Build, max_plans: int = 64, on_limit: str = "eager"):
        if on_limit not in ON_LIMIT_POLICIES:
            raise ValueError(f"on_limit must be one of {ON_LIMIT_POLICIES}, got {on_limit!r}")
        if not isinstance(max_plans, int) or max_plans < 1:
            raise ValueError(f"max_plans must be a positive int, got {max_plans!r}")
        self._build = build
        self.max_plans = max_plans
        self.on_limit = on_limit
        self.root: PlanNode | None = None
        self.stats = ReplanStats(max_plans, on_limit)
        self._gate = _Gate()
        self._count_lock = threading.Lock()
        self._warned = False
        self.last_leaf: PlanNode | None = None  # the most recently compiled path's leaf

    def branch_stats(self, source: str, predicate: str, kind: str) -> BranchStats:
        key = (source, kind)
        bp = self.stats.branch_points.get(key)
        if bp is None:
            bp = self.stats.branch_points[key] = BranchStats(source, predicate, kind)
        return bp

    def leaves(self) -> list[PlanNode]:
        out: list[PlanNode] = []
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            if node.branch is None:
                out.append(node)
            stack.extend(node.children.values())
        return out

    def run(self, flat: Sequence[Any]) -> tuple[Any, PlanNode]:
        """Run one call; returns the flat outputs and the leaf (its path) that produced them."""
        gate = self._gate
        cond = gate._cond
        with cond:  # gate.enter() inlined, with the call count under the same lock: ~1 us a call less
            while gate._writing:
                cond.wait()
            gate._readers += 1
            self.stats.calls += 1
        try:
            state = _CallState()
            env: dict[str, Any] = {}
            node = self.root
            if node is None:
                node = self._miss(None, None, flat, env, state)
            while True:
                fetch = node.fetch
                if fetch is None:
                    out = node.run(*flat)
                elif node.n_imports == 1:
                    out = node.run(*flat, fetch(env))
                else:
                    out = node.run(*flat, *fetch(env))
                bp = node.branch
                if bp is None:
                    if node.n_effects:
                        out = out[: len(out) - node.n_effects]
                    return out, node
                if node.exports:
                    env.update(zip(node.exports, out[1:]))
                outcome = node.decide(out[0])
                child = node.children.get(outcome)
                if child is None:
                    child = self._miss(node, outcome, flat, env, state)
                else:
                    with self._count_lock:
                        bp.outcomes[outcome] = bp.outcomes.get(outcome, 0) + 1
                node = child
        finally:
            gate.leave()

    def _miss(self, parent: PlanNode | None, outcome: Any, flat: Sequence[Any], env: dict[str, Any],
              state: _CallState) -> PlanNode:
        bp = parent.branch if parent is not None else None
        with self._gate.exclusive():
            if state.uncached:  # this call is past the limit: run the rest of its path uncompiled
                return self._make(parent, outcome, flat, env, False)
            existing = parent.children.get(outcome) if parent is not None else self.root
            if existing is not None:  # another thread compiled it while we waited
                if bp is not None:
                    bp.outcomes[outcome] = bp.outcomes.get(outcome, 0) + 1
                return existing
            if not state.replanning:
                state.origin = bp
                if self.stats.paths >= self.max_plans:
                    return self._over_limit(parent, outcome, flat, env, state)
                state.replanning = True
            t0 = time.perf_counter()
            node = self._make(parent, outcome, flat, env, True)
            elapsed = time.perf_counter() - t0
            if parent is not None:
                parent.children[outcome] = node
            else:
                self.root = node
            stats = self.stats
            stats.replan_s += elapsed
            if state.origin is None:
                stats.first_compile_s += elapsed
            else:
                state.origin.replan_s += elapsed
            if bp is not None:
                bp.misses += 1
                bp.outcomes.setdefault(outcome, 0)
            if node.branch is None:  # a new leaf: one more path, one more re-plan
                stats.paths += 1
                stats.replans += 1
                if state.origin is not None:
                    state.origin.replans += 1
                self.last_leaf = node
            return node

    def _over_limit(self, parent: PlanNode | None, outcome: Any, flat: Sequence[Any], env: dict[str, Any],
                    state: _CallState) -> PlanNode:
        bp = parent.branch if parent is not None else None
        self.stats.limit_events += 1
        if bp is not None:
            bp.limit_events += 1
        where = f"branch at {bp.source} ({bp.predicate}) went {outcome!r}" if bp else "a new path"
        if self.on_limit == "error":
            raise PlanLimitError(
                f"{where}: a path not compiled yet, and the plan cache already holds max_plans={self.max_plans} "
                "paths; raise max_plans or use on_limit='eager' to run such calls uncompiled")
        if not self._warned:
            self._warned = True
            warnings.warn(f"{where}: plan cache full (max_plans={self.max_plans}); this and later new paths run "
                          "uncompiled and uncached (see .stats.uncached_calls)", RuntimeWarning, stacklevel=4)
        self.stats.uncached_calls += 1
        state.uncached = True
        return self._make(parent, outcome, flat, env, False)

    def _make(self, parent: PlanNode | None, outcome: Any, flat: Sequence[Any], env: dict[str, Any],
              compile: bool) -> PlanNode:
        node = self._build(parent, outcome, flat, env, compile)
        node.parent, node.outcome = parent, outcome
        return node
