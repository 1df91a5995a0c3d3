"""Turning the user's ``passes=`` argument into one explicit ordered list.

``"default"`` holds exact passes only (outputs unchanged within fp32 tolerance);
lossy passes (sparsify, quantize) are opt-in by name.
"""
from __future__ import annotations

from typing import Any, Sequence

from autoglm.ir.pass_base import GraphPass
from autoglm.passes import REGISTRY
from autoglm.passes.spec import SpecError, build_pass, parse_spec

__all__ = ["DEFAULT_PIPELINE", "resolve_passes", "pipeline_from_config"]

# The default pipeline, in order, with why each step is there. Steps whose pass is
# not registered in this build are skipped by name (so the list states intent).
DEFAULT_PIPELINE: list[tuple[str, str]] = [
    ("dce", "drop values nobody reads before costing the graph"),
    ("split_merge", "split overloaded nodes, fuse runs of tiny ones (multi-device only)"),
    ("partition", "cut the graph into one part per device (multi-device only)"),
]
_MULTI_DEVICE_ONLY = {"split_merge", "partition"}


def _default(devices: Sequence[str]) -> list[GraphPass]:
    out: list[GraphPass] = []
    for name, _why in DEFAULT_PIPELINE:
        if name not in REGISTRY:
            continue
        if name in _MULTI_DEVICE_ONLY and len(devices) < 2:
            continue
        opts: dict[str, Any] = {"k": len(devices), "fewer_ok": True} if name == "partition" else {}
        out.append(build_pass(REGISTRY, name, opts))
    return out


def resolve_passes(passes: Any, devices: Sequence[str]) -> list[GraphPass]:
    """``"default"``, ``"none"``, a spec string, a list of pass objects/specs, or a config list."""
    if passes is None or passes == "none":
        return []
    if passes == "default":
        return _default(devices)
    if isinstance(passes, str):
        return [build_pass(REGISTRY, name, opts) for name, opts in parse_spec(passes)]
    if isinstance(passes, GraphPass):
        return [passes]
    if isinstance(passes, (list, tuple)):
        out: list[GraphPass] = []
        for item in passes:
            if isinstance(item, GraphPass):
                out.append(item)
            elif isinstance(item, str):
                out.extend(resolve_passes(item, devices))
            elif isinstance(item, dict):
                out.extend(pipeline_from_config([item]))
            else:
                raise SpecError(f"cannot use {item!r} as a pass; give a pass object, a name or a spec string")
        return out
    raise SpecError(f"passes must be 'default', 'none', a spec string or a list, got {type(passes).__name__}")


def pipeline_from_config(items: Sequence[Any]) -> list[GraphPass]:
    """Config-file form: ``[{"name": "partition", "k": 2}, "dce", {"quantize": {"mode": "dynamic"}}]``."""
    out: list[GraphPass] = []
    for item in items:
        if isinstance(item, str):
            out.extend(resolve_passes(item, ["cpu"]))
        elif isinstance(item, dict) and "name" in item:
            opts = {k: v for k, v in item.items() if k != "name"}
            out.append(build_pass(REGISTRY, str(item["name"]), opts))
        elif isinstance(item, dict) and len(item) == 1:
            (name, opts), = item.items()
            out.append(build_pass(REGISTRY, str(name), dict(opts or {})))
        else:
            raise SpecError(f"config pass entry {item!r} must be a name, {{name: options}} or {{'name': ..., ...}}")
    return out
