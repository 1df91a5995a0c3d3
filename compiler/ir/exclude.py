"""The one meaning of a pass's ``exclude=`` option (quantize, sparsify).

A pattern excludes a layer when it matches, as an ``fnmatch`` glob, the layer's
module path (``model.layers.0.attn.q``), that path without the ``model.``
prefix capture adds (``layers.0.attn.q``), or the graph node's name
(``model_layers_0_attn_q``); or when it equals one component of the path
(``head`` excludes ``model.head`` and ``model.head.proj``). Before this helper,
quantize and sparsify each had their own rule and the same option excluded
different layers in each.
"""
from __future__ import annotations

import fnmatch
from typing import Sequence

__all__ = ["excluded_by"]


def excluded_by(layer_name: str, node_name: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that excludes this layer, or None."""
    short = layer_name[len("model."):] if layer_name.startswith("model.") else layer_name
    for p in patterns:
        if (fnmatch.fnmatchcase(layer_name, p) or fnmatch.fnmatchcase(short, p) or fnmatch.fnmatchcase(node_name, p)
                or p in layer_name.split(".")):
            return p
    return None
