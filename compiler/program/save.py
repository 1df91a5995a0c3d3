"""Saving a ``Program``: the directory ``autoglm.load`` reads back (``program/io.py``).

    program.json          the tree: per segment its parent, the outcome that leads
                          to it, the values it imports/exports, its branch point
    segments/<i>/         each segment as an ordinary artifact (graph.json +
                          safetensors, no pickle; ``artifacts/directory.py``), with the
                          inputs of the call that first took it as example inputs

Apart from loading so that ``program.py`` can save without importing the loader
(which subclasses ``Program``): no import cycle.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from autoglm.artifacts.atomic import replace_dir, staging_dir
from autoglm.artifacts.directory import ARTIFACT_VERSION, save_artifact

__all__ = ["save_program", "PROGRAM_FILE"]

PROGRAM_FILE = "program.json"


def _tree(program: Any) -> list[Any]:
    """Every cached segment, parents before children."""
    out, queue = [], [program.cache.root] if program.cache.root is not None else []
    while queue:
        node = queue.pop(0)
        out.append(node)
        queue.extend(node.children[k] for k in sorted(node.children, key=repr))
    return out


def save_program(program: Any, path: str | os.PathLike) -> Path:
    """Write ``program`` (a ``Program``) as one directory, whole or not at all (layout: the module doc)."""
    nodes = _tree(program)
    if not nodes:
        raise RuntimeError("nothing to save: the program has no compiled path yet; call it once first")
    target = Path(path)
    with staging_dir(target.parent, target.name) as staging:
        tmp = staging / target.name
        tmp.mkdir()
        index = {id(n): i for i, n in enumerate(nodes)}
        entries = []
        for i, node in enumerate(nodes):
            plan = node.payload  # a program._SegmentPlan
            seg = plan.segment
            signature = seg.signature if seg.signature is not None else program.signature
            records = [asdict(r) if is_dataclass(r) else r for r in plan.records]
            save_artifact(tmp / "segments" / str(i), plan.graph_module, signature, plan.example, program.config,
                          extra={"records": records})
            entries.append({
                "parent": index[id(node.parent)] if node.parent is not None else None,
                "outcome": node.outcome,
                "imports": list(node.imports),
                "exports": list(node.exports),
                "n_effects": node.n_effects,
                "branch": ({"source": node.branch.source, "predicate": node.branch.predicate,
                            "kind": node.branch.kind} if node.branch is not None else None),
                "has_signature": seg.signature is not None,
            })
        doc = {"artifact_version": ARTIFACT_VERSION, "kind": "program", "n_inputs": program._n_inputs,
               "signature": program.signature.to_json(), "config": program.config, "segments": entries}
        (tmp / PROGRAM_FILE).write_text(json.dumps(doc, indent=1, default=str))
        replace_dir(tmp, target)
    return target
