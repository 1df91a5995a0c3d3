"""What a pass may claim in ``ensures``: each property is a check on the graph, not a string.

The pass manager runs the check of every property a pass ``ensures`` after the
pass, and re-checks the properties earlier passes established after every pass
that does not declare it ``preserves`` them: a property that no longer holds is
dropped (with the notes of the pass that established it) and the drop is
recorded, instead of a stale plan describing a graph that changed under it.

A check returns ``None`` when the property holds, else the reason it does not.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx

from autoglm.ir.meta import annotation, has_annotation, iter_compute_nodes

__all__ = ["PROPERTY_CHECKS", "check_property"]

Check = Callable[[fx.GraphModule, Any], "str | None"]


def _annotated(gm: fx.GraphModule, ctx: Any) -> str | None:
    missing = [n.name for n in iter_compute_nodes(gm.graph)
               if not has_annotation(n) or annotation(n).produces_tensors is None]
    return f"{len(missing)} nodes were never annotated ({', '.join(missing[:3])})" if missing else None


def _partitioned(gm: fx.GraphModule, ctx: Any) -> str | None:
    """Every compute node has a partition, and the plan (when there is one) lists exactly these nodes."""
    compute = [n for n in iter_compute_nodes(gm.graph)]
    missing = [n.name for n in compute if not has_annotation(n) or annotation(n).partition is None]
    if missing:
        return f"{len(missing)} of {len(compute)} compute nodes have no partition ({', '.join(missing[:3])})"
    plan = (getattr(ctx, "notes", {}).get("partition") or {}).get("plan")
    if plan is not None:
        planned = {name for part in plan.parts for name in part.nodes}
        unplanned = [n.name for n in compute if n.name not in planned]
        if unplanned:
            return (f"{len(unplanned)} of {len(compute)} compute nodes are not in the partition plan "
                    f"({', '.join(unplanned[:3])})")
    return None


def _quantize_ran(gm: fx.GraphModule, ctx: Any) -> str | None:
    # quantize_lower rewrites the q/dq patterns quantize left; its layer table says which they are
    return None if "quantize" in getattr(ctx, "notes", {}) else "no quantize layer table in the notes"


PROPERTY_CHECKS: dict[str, Check] = {
    "annotated": _annotated,
    "partitioned": _partitioned,
    "int8": _quantize_ran,
}


def check_property(name: str, gm: fx.GraphModule, ctx: Any) -> str | None:
    if name not in PROPERTY_CHECKS:
        raise KeyError(f"property {name!r} has no check in autoglm.ir.properties.PROPERTY_CHECKS")
    return PROPERTY_CHECKS[name](gm, ctx)
