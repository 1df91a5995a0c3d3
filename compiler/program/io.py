"""Loading a saved ``Program`` (a model with data-dependent branches).

A program is a tree of compiled segments joined at branch points
(``runtime/replan.py``). Saved, it is one directory, written whole or not at all:

    program.json          the tree: per segment its parent, the outcome that leads
                          to it, the values it imports/exports, its branch point
    segments/<i>/         each segment as an ordinary artifact (graph.json +
                          safetensors, no pickle; ``artifacts.py``), with the
                          inputs of the call that first took it as example inputs

``autoglm.load`` returns a ``LoadedProgram``: it runs every path that was
compiled before saving, with the same guards and statistics. It has no model
to trace, so an input that takes a path never compiled raises
``PathNotSavedError`` naming the branch point; warm the program up on inputs
covering the paths you need (``program.warm_up(flat_inputs)``) before saving.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from autoglm.artifacts.directory import ARTIFACT_VERSION, ArtifactError, load_artifact, read_artifact_json
from autoglm.artifacts.graph_json import UnsafeArtifactError
from autoglm.capture.branching import BranchInfo, Segment
from autoglm.capture.flat import FlatSignature
from autoglm.ir.treespec import UnsafeTreeSpecError
from autoglm.driver.graph import DriverOptions, executor_for_loaded
from autoglm.program.program import Program, ProgramOptions, _SegmentPlan
from autoglm.program.save import PROGRAM_FILE
from autoglm.runtime.replan import PlanNode

__all__ = ["load_program", "is_program", "LoadedProgram", "PathNotSavedError", "PROGRAM_FILE"]


class PathNotSavedError(RuntimeError):
    """A loaded program met an input whose path was not compiled before saving."""


def is_program(path: str | os.PathLike) -> bool:
    return (Path(path) / PROGRAM_FILE).is_file()


class LoadedProgram(Program):
    """A saved program: its compiled paths, and no model to trace new ones."""

    def _build(self, parent: PlanNode | None, outcome: Any, flat: Sequence[Any], env: dict[str, Any],
               compile: bool) -> PlanNode:
        where = (f"the branch at {parent.branch.source} ({parent.branch.predicate}) went {outcome!r}"
                 if parent is not None and parent.branch is not None else "the program has no saved root")
        raise PathNotSavedError(f"{where}, a path that was not compiled before the program was saved; compile the "
                                "model again and call it on such inputs before saving")

    def warm_up(self, flat_inputs: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            self.cache.run(list(flat_inputs))


def load_program(path: str | os.PathLike, *, trust_remote_code: bool = False) -> LoadedProgram:

    root = Path(path)
    try:
        doc = read_artifact_json(root / PROGRAM_FILE, "program")
        version = doc.get("artifact_version"), doc.get("kind")
        signature = FlatSignature.from_json(doc["signature"], trusted=trust_remote_code)
        config = dict(doc["config"])
        entries = list(doc["segments"])
    except UnsafeTreeSpecError as exc:
        raise UnsafeArtifactError(f"program {root}: {exc}; refused") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{root / PROGRAM_FILE} is not a valid autoglm program: {type(exc).__name__}: {exc}") \
            from exc
    if version != (ARTIFACT_VERSION, "program"):
        raise ArtifactError(f"{root}: program format {version} not supported (expected {(ARTIFACT_VERSION, 'program')})")
    options = ProgramOptions(DriverOptions([], list(config.get("devices", ["cpu"]))),
                             max_plans=int(config.get("max_plans", 64)), on_limit="eager")
    nodes: list[PlanNode] = []
    first_inputs: list[torch.Tensor] = []
    program: LoadedProgram | None = None
    for i, entry in enumerate(entries):
        gm, sig, example, seg_config = load_artifact(root / "segments" / str(i), trust_remote_code=trust_remote_code)
        if program is None:
            first_inputs = example[: int(doc["n_inputs"])]
            program = LoadedProgram(None, signature, first_inputs, config, options)  # type: ignore[arg-type]
        try:
            branch = BranchInfo(**entry["branch"]) if entry["branch"] else None
            parent = nodes[entry["parent"]] if entry["parent"] is not None else None
            seg = Segment(gm, tuple(entry["imports"]), tuple(entry["exports"]), 0, branch,
                          signature=sig if entry["has_signature"] else None, n_effects=int(entry["n_effects"]))
        except (TypeError, KeyError, IndexError) as exc:
            raise ArtifactError(f"{root / PROGRAM_FILE}: segment {i} is malformed: {exc}") from exc
        run = executor_for_loaded(gm, seg_config)
        bp = program.cache.branch_stats(branch.source, branch.predicate, branch.kind) if branch else None
        node = PlanNode(run, seg.imports, seg.exports, seg.n_effects, bp,
                        _SegmentPlan(seg, gm, seg_config.get("records", []), True, example))
        node.parent, node.outcome = parent, entry["outcome"]
        if parent is None:
            program.cache.root = node
        else:
            parent.children[node.outcome] = node
        if branch is None:
            program.cache.stats.paths += 1
            program.cache.last_leaf = node
        nodes.append(node)
    if program is None:
        raise ArtifactError(f"{root / PROGRAM_FILE}: the program has no segments")
    program.frontend = "branching (loaded)"
    return program
