"""Graph passes: one pass per file, each a pure graph -> graph rewrite.

``REGISTRY`` is the one explicit list of passes by name (no registration by
import side effect). See README.md in this folder for the map.
"""
from __future__ import annotations

from autoglm.ir.pass_base import GraphPass, PassContext, PassResult
from autoglm.passes.eliminate_dead_code import EliminateDeadCode

__all__ = ["REGISTRY", "GraphPass", "PassContext", "PassResult"]

REGISTRY: dict[str, type[GraphPass]] = {
    cls.name: cls
    for cls in [
        EliminateDeadCode,
    ]
}
