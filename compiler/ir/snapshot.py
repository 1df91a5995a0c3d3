"""The graph as captured, kept beside the compiled one for the report's before/after.

Passes rewrite the graph in place, so without a copy the report cannot show
what the model looked like before them, nor measure the compiled model against
it. ``captured_copy`` copies the graph's nodes (cheap: no tensor is copied) and
gives each node its own annotation (passes update annotations in place); the
copy reads the same weight tensors and submodules as the original, which the
passes never modify in place (they add new ones and drop references). So the
copy costs a few kilobytes while the user's model is alive, and keeps the
captured weights alive after it (``DriverOptions(keep_captured=False)`` opts out).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch.fx as fx

from autoglm.ir.meta import annotation, has_annotation, set_annotation

__all__ = ["CapturedGraph", "captured_copy", "CAPTURED_NOTE"]

# Where the copy travels: ``notes[CAPTURED_NOTE]`` of the compile (and of the CompiledModel).
CAPTURED_NOTE = "captured"


@dataclass
class CapturedGraph:
    """The captured graph (runnable on the compiled model's flat inputs) with its annotations."""

    graph_module: fx.GraphModule

    def __repr__(self) -> str:  # never dump a whole graph into a log or a JSON fallback
        return f"CapturedGraph({len(self.graph_module.graph.nodes)} nodes)"


def captured_copy(gm: fx.GraphModule) -> CapturedGraph:
    """A runnable copy of ``gm``'s graph sharing its weights, with private annotations."""
    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)  # export graphs flatten their inputs through it
    value_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, value_map)
    old_output = next(n for n in gm.graph.nodes if n.op == "output")
    new_output = graph.output(out, type_expr=old_output.type)
    new_output.meta = dict(old_output.meta)
    value_map[old_output] = new_output
    for old, new in value_map.items():
        if has_annotation(old):
            ann = annotation(old)
            set_annotation(new, dataclasses.replace(ann, outputs=list(ann.outputs), tags=dict(ann.tags)))
    return CapturedGraph(fx.GraphModule(gm, graph, class_name="CapturedGraph"))
