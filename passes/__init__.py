"""Graph passes: one pass per file, each a pure graph -> graph rewrite.

``REGISTRY`` is the one explicit list of passes by name (no registration by
import side effect). See README.md in this folder for the map.
"""
from __future__ import annotations

from autoglm.ir.pass_base import GraphPass, PassContext, PassResult
from autoglm.passes.eliminate_dead_code import EliminateDeadCode
from autoglm.passes.partition.partition import Partition
from autoglm.passes.quantize.quantize import Quantize
from autoglm.passes.quantize.lower import QuantizeLower
from autoglm.passes.split_merge.split_merge import SplitMerge
from autoglm.passes.sparsify.sparsify import Sparsify

__all__ = ["REGISTRY", "GraphPass", "PassContext", "PassResult"]

REGISTRY: dict[str, type[GraphPass]] = {
    cls.name: cls
    for cls in [
        EliminateDeadCode,
        Partition,
        Quantize,
        QuantizeLower,
        SplitMerge,
        Sparsify,
    ]
}
