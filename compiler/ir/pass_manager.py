"""Runs an ordered list of passes with checks and records after each one.

After every pass: the ``modified`` flag is checked against a fingerprint of the
graph (``autoglm.ir.fingerprint``), then ``graph.lint()``, re-annotation on the example inputs (new
nodes get shapes/FLOPs/bytes; the same run yields the outputs), the verifier
(shape metadata present, output signature unchanged) and, with ``verify=True``,
a numerical comparison against the outputs before the pass (exact passes:
``assert_close`` defaults; lossy passes: SQNR, recorded). A failure raises
``PassError`` naming the pass, the passes before it, the node and the user's
source line. Each pass leaves a ``PassRecord`` for the report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.fx as fx

from autoglm.ir.annotate import annotate
from autoglm.ir.fingerprint import graph_fingerprint
from autoglm.ir.meta import annotation
from autoglm.ir.metrics import sqnr_db
from autoglm.ir.pass_base import GraphPass, NodeError, PassContext, PassError, PassResult
from autoglm.ir.properties import PROPERTY_CHECKS, check_property
from autoglm.ir.verify import VerificationError, output_signature, verify_graph

__all__ = ["PassRecord", "PassManager", "sqnr_db"]


@dataclass
class PassRecord:
    name: str
    spec: str
    exact: bool
    wall_s: float
    nodes_before: int
    nodes_after: int
    modified: bool
    created: int  # nodes this pass created (provenance)
    removed: int
    max_abs_error: float | None = None
    sqnr_db: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _check_order(passes: Sequence[GraphPass], initial: set[str]) -> None:
    have = set(initial)
    for i, p in enumerate(passes):
        missing = [r for r in p.requires if r not in have]
        if missing:
            before = ", ".join(q.name for q in passes[:i]) or "nothing"
            raise PassError(
                p.name,
                f"requires {missing} which no earlier pass ensures (runs after: {before}); "
                f"reorder the pipeline",
            )
        have.update(p.ensures)


class PassManager:
    def __init__(self, passes: Sequence[GraphPass], verify: bool = False, max_steps: int = 1):
        for p in passes:
            if not isinstance(p, GraphPass):
                raise TypeError(f"not a pass: {p!r} (expected an autoglm GraphPass)")
            unchecked = [e for e in (*p.ensures, *p.preserves) if e not in PROPERTY_CHECKS]
            if unchecked:
                raise TypeError(f"pass {p.name!r} claims properties {unchecked} that have no check "
                                "(autoglm.ir.properties.PROPERTY_CHECKS)")
        self.passes = list(passes)
        self.verify = verify
        self.max_steps = max_steps  # >1 re-runs the list until no pass modifies (fixed point)
        self.records: list[PassRecord] = []
        self._owner: dict[str, str] = {}  # property -> the pass that established it

    def run(self, gm: fx.GraphModule, ctx: PassContext, reference: Sequence[torch.Tensor] | None = None
            ) -> fx.GraphModule:
        """Run the pipeline. ``reference``: outputs of ``gm`` on the example inputs when
        the caller has just annotated it (saves one run); otherwise annotated here."""
        _check_order(self.passes, ctx.properties | {"annotated"})
        if reference is None:
            with torch.no_grad():
                reference = annotate(gm, ctx.example_inputs)
        reference = _as_tuple(reference)
        expected = output_signature(gm)
        for step in range(self.max_steps):
            any_modified = False
            for i, p in enumerate(self.passes):
                gm, reference, modified = self._run_one(p, gm, ctx, reference, expected, i)
                any_modified |= modified
            if not any_modified:
                break
        return gm

    def _run_one(self, p: GraphPass, gm: fx.GraphModule, ctx: PassContext, reference: tuple,
                 expected: list, index: int) -> tuple[fx.GraphModule, tuple, bool]:
        previous = [q.name for q in self.passes[:index]]
        before_ids = {id(n) for n in gm.graph.nodes}
        before_print = graph_fingerprint(gm)
        nodes_before = len(gm.graph.nodes)
        t0 = time.perf_counter()
        try:
            result = p(gm, ctx)
        except NodeError as exc:
            raise PassError(p.name, str(exc), exc.node, previous) from exc
        except PassError:
            raise
        except Exception as exc:
            raise PassError(p.name, f"{type(exc).__name__}: {exc}", None, previous) from exc
        wall = time.perf_counter() - t0
        if not isinstance(result, PassResult):
            raise PassError(p.name, f"returned {type(result).__name__}, expected PassResult", None, previous)
        new_gm = result.graph_module
        after_ids = {id(n) for n in new_gm.graph.nodes}
        created = 0
        for n in new_gm.graph.nodes:
            if id(n) not in before_ids:
                annotation(n).created_by = p.name
                created += 1
        removed = len(before_ids - after_ids)
        if not result.modified and (created or removed):
            raise PassError(p.name, f"reported modified=False but created {created} and removed {removed} nodes",
                            None, previous)
        if not result.modified and graph_fingerprint(new_gm) != before_print:
            # The flag decides whether the graph is re-annotated and verified: it may not lie.
            raise PassError(p.name, "reported modified=False but changed the graph (a node's target or arguments, "
                            "or a submodule/parameter); report modified=True", None, previous)
        record = PassRecord(p.name, p.spec(), p.exact, wall, nodes_before, len(new_gm.graph.nodes),
                            result.modified, created, removed, notes=dict(ctx.notes.get(p.name, {})))
        if not result.modified:  # nothing to re-annotate or re-verify
            self.records.append(record)
            self._establish(p, new_gm, ctx, previous)
            return new_gm, reference, False
        new_gm.recompile()
        try:
            with torch.no_grad():
                outputs = _as_tuple(annotate(new_gm, ctx.example_inputs))
            verify_graph(new_gm, expected)
        except VerificationError as exc:
            raise PassError(p.name, f"verifier: {exc}", exc.node, previous) from exc
        except Exception as exc:
            raise PassError(p.name, f"rewritten graph fails to run: {type(exc).__name__}: {exc}", None,
                            previous) from exc
        if self.verify:
            self._compare(p, reference, outputs, record, previous)
        self.records.append(record)
        self._invalidate(p, new_gm, ctx, record)
        self._establish(p, new_gm, ctx, previous)
        return new_gm, outputs, result.modified

    def _establish(self, p: GraphPass, gm: fx.GraphModule, ctx: PassContext, previous: list[str]) -> None:
        """``ensures`` is a claim the graph must back: each property is checked, then granted."""
        for prop in p.ensures:
            reason = check_property(prop, gm, ctx)
            if reason is not None:
                raise PassError(p.name, f"claims it ensures {prop!r}, but {reason}", None, previous)
            ctx.properties.add(prop)
            self._owner[prop] = p.name

    def _invalidate(self, p: GraphPass, gm: fx.GraphModule, ctx: PassContext, record: PassRecord) -> None:
        """A modifying pass may have broken what earlier passes established: re-check, drop what fails."""
        for prop in sorted(ctx.properties - set(p.preserves) - set(p.ensures)):
            if prop not in PROPERTY_CHECKS:
                continue  # given by the caller ("annotated" before any pass), not by a pass
            reason = check_property(prop, gm, ctx)
            if reason is None:
                continue
            ctx.properties.discard(prop)
            owner = self._owner.pop(prop, None)
            if owner is not None:
                ctx.notes.pop(owner, None)  # its plan describes a graph that no longer exists
            dropped = ctx.notes.setdefault("invalidated", {})
            dropped[prop] = f"{p.name} changed the graph after {owner or 'it was established'}: {reason}"
            record.notes.setdefault("invalidated", []).append(prop)

    def _compare(self, p: GraphPass, reference: tuple, outputs: tuple, record: PassRecord,
                 previous: list[str]) -> None:
        diffs = [float((r.double() - o.double()).abs().max()) for r, o in zip(reference, outputs)
                 if isinstance(r, torch.Tensor) and r.numel() and r.is_floating_point()]
        record.max_abs_error = max(diffs) if diffs else 0.0
        record.sqnr_db = sqnr_db(reference, outputs)
        if p.exact:
            try:
                for r, o in zip(reference, outputs):
                    torch.testing.assert_close(o, r)
            except AssertionError as exc:
                first = str(exc).strip().splitlines()[0]
                raise PassError(p.name, f"outputs differ from before the pass: {first}", None, previous) from exc
