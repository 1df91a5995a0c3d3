"""The graph as captured, kept beside the compiled one for the report's before/after.

Passes rewrite the graph in place, so without a copy the report cannot show
what the model looked like before them, nor measure the compiled model against
it. ``captured_copy`` copies the graph's nodes (cheap: no tensor is copied) and
gives each node its own annotation (passes update annotations in place).

The copy holds the captured weights and submodules by weak reference only: they
are the user's model's own tensors, alive while the model is. A strong copy kept
an int8 model's fp32 weights alive after the user dropped the model (87 MiB
held for a 22 MiB all-MiniLM-L6-v2), which defeats the point of int8. So
``graph`` (the structure, for the before/after view) is always there, and
``graph_module`` (runnable, for the default accuracy/latency check) is None once
any of those weights is gone; ``write_report(cm, path, model=model)`` measures
against the model instead. ``DriverOptions(keep_captured=False)`` keeps nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import weakref
from typing import Any

import torch.fx as fx

from autoglm.ir.meta import annotation, has_annotation, set_annotation

__all__ = ["CapturedGraph", "captured_copy", "CAPTURED_NOTE"]

# Where the copy travels: ``notes[CAPTURED_NOTE]`` of the compile (and of the CompiledModel).
CAPTURED_NOTE = "captured"


class CapturedGraph:
    """The captured graph's structure, and a runnable module while its weights are alive."""

    def __init__(self, graph: fx.Graph, attrs: dict[str, Any], class_name: str = "CapturedGraph"):
        self.graph = graph
        self._refs = {name: weakref.ref(obj) for name, obj in attrs.items()}
        self._class_name = class_name

    @property
    def graph_module(self) -> fx.GraphModule | None:
        """The captured graph, runnable on the compiled model's flat inputs; None once a weight is gone."""
        root: dict[str, Any] = {}
        for name, ref in self._refs.items():
            obj = ref()
            if obj is None:
                return None
            root[name] = obj
        return fx.GraphModule(root, self.graph, class_name=self._class_name)

    def __repr__(self) -> str:  # never dump a whole graph into a log or a JSON fallback
        return f"CapturedGraph({len(self.graph.nodes)} nodes)"


def _attrs(gm: fx.GraphModule, graph: fx.Graph) -> dict[str, Any]:
    """Every tensor and submodule the graph reads, by qualified name."""
    out: dict[str, Any] = {}
    for n in graph.nodes:
        if n.op in ("get_attr", "call_module"):
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            out[str(n.target)] = obj
    return out


def captured_copy(gm: fx.GraphModule) -> CapturedGraph:
    """A copy of ``gm``'s graph reading its weights by weak reference, with private annotations."""
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
    return CapturedGraph(graph, _attrs(gm, graph))
