"""ONNX export of a branching ``Program``: one file per compiled path plus a manifest of guards.

A ``Program`` (``autoglm.program.program``) compiles one graph per path through the
model's data-dependent branches. ONNX has ``If``, but only for branches that
came in as ``torch.cond`` (those are plain graphs and export through
``export_onnx`` directly). Python ``if``s were traced path by path, so each
compiled path becomes its own file::

    model.onnx  ->  model.path0.onnx, model.path1.onnx, model.manifest.json

In a path file each guard (``check_guard(pred, expected, source)`` in
``Program.path_graph``) becomes an extra output ``guard_k``: the file computes
its path *and* says whether the input belonged to it. The manifest lists, per
path, the outcomes and each guard's output name, expected value and source
line; ``autoglm.runtime.onnxruntime.OrtPathsExecutor`` runs the path files and
returns the first whose guards all hold.

Parity for a path file is checked against the same guard-free path graph in
PyTorch, so every input set exercises the whole file whichever branch it would
take; the guard outputs are compared too (exactly).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from autoglm.artifacts.atomic import move_into, staging_dir
from autoglm.export.onnx.check import OnnxExportError
from autoglm.export.onnx.export import ExportOptions, OnnxExportResult, _int8_budget, _leaf_names, export_graph

__all__ = ["MANIFEST_FORMAT", "ProgramExportResult", "export_program", "guards_as_outputs"]

MANIFEST_FORMAT = "autoglm.onnx-paths/1"


@dataclass
class ProgramExportResult:
    manifest: str
    paths: list[OnnxExportResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def guards_as_outputs(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[dict[str, Any]]]:
    """A copy of a path graph whose ``check_guard`` calls became extra outputs.

    Returns the graph and, per guard, ``{"expected", "source"}`` in output order.
    A guard on a Python value (a shape test) becomes a constant tensor: such a
    path is exported with static shapes, so the file only accepts the shapes the
    guard was decided for.
    """
    from autoglm.ir.guards import check_guard

    new = fx.GraphModule(gm, _copy_graph(gm.graph), class_name=type(gm).__name__)
    graph = new.graph
    output = next(n for n in graph.nodes if n.op == "output")
    guard_values: list[fx.Node] = []
    guards: list[dict[str, Any]] = []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not check_guard:
            continue
        value, expected, source = node.args[:3]
        with graph.inserting_before(output):
            if isinstance(value, fx.Node) and _is_tensor(value):
                guard_values.append(value)
            else:
                guard_values.append(graph.call_function(torch.tensor, (value,)))
        guards.append({"expected": expected, "source": str(source), "static": not (
            isinstance(value, fx.Node) and _is_tensor(value))})
        graph.erase_node(node)
    outs = output.args[0]
    outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
    output.args = (outs + tuple(guard_values),)
    graph.lint()
    new.recompile()
    return new, guards


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    import copy

    return copy.deepcopy(graph)


def _is_tensor(node: fx.Node) -> bool:
    """Annotated as producing a tensor (every compiled segment was annotated)."""
    from autoglm.ir.meta import output_specs

    return bool(output_specs(node)) or isinstance(node.meta.get("val"), torch.Tensor)


def export_program(program: Any, target: Path, opts: ExportOptions) -> ProgramExportResult:
    """Export every compiled path of ``program`` next to ``target`` (see the module doc)."""
    leaves = program.cache.leaves()
    if not leaves:
        raise OnnxExportError("the program has no compiled path yet: call it once (or compile with example inputs)")
    sig = program.signature
    input_names = _leaf_names(sig.in_spec, sig.in_positions, len(sig.in_positions) + len(sig.in_consts), "input")
    stem = target.name[: -len(".onnx")]
    results: list[OnnxExportResult] = []
    entries = []
    with staging_dir(target.parent, target.name) as tmp:
        for k, leaf in enumerate(leaves):
            gm, guards = guards_as_outputs(program.path_graph(leaf))
            leaf_sig = leaf.payload.segment.signature
            out_total = len(leaf_sig.out_positions) + len(leaf_sig.out_consts)
            output_names = _leaf_names(leaf_sig.out_spec, leaf_sig.out_positions, out_total, "output")
            guard_names = [f"guard_{i}" for i in range(len(guards))]
            path_opts = opts if not any(g["static"] for g in guards) else ExportOptions(**{**asdict(opts),
                                                                                            "dynamic": False})
            facts = {"autoglm.frontend": "branching", "autoglm.passes": json.dumps(program.config.get("passes", [])),
                     "autoglm.path": json.dumps({"outcomes": list(leaf.key), "guards": guards})}
            file = f"{stem}.path{k}.onnx"
            result = export_graph(gm, program.example_inputs, tmp / file, path_opts, input_names,
                                  output_names + guard_names, metadata=facts,
                                  int8_budget_db=_int8_budget(program, opts))
            results.append(result)
            entries.append({"file": file, "outcomes": list(leaf.key), "outputs": len(output_names),
                            "guards": [{"output": n, **g} for n, g in zip(guard_names, guards)]})
        manifest = {"format": MANIFEST_FORMAT, "inputs": input_names, "paths": entries}
        (tmp / f"{stem}.manifest.json").write_text(json.dumps(manifest, indent=2))
        move_into(tmp, target.parent)  # every path file and the manifest, together
    for r in results:  # report where the files ended up, not the staging directory
        r.path = str(target.parent / Path(r.path).name)
    return ProgramExportResult(str(target.parent / f"{stem}.manifest.json"), results)
