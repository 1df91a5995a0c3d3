"""``autoglm passes``: every registered pass with its options, types and defaults."""
from __future__ import annotations

import argparse
import dataclasses
import textwrap
import typing
from typing import Any

from autoglm.cli.common import Console
from autoglm.passes.option_help import option_help
from autoglm.passes.spec import type_name

__all__ = ["add_parser", "run", "describe_passes"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("passes", parents=parents, help="list the passes and their options",
                       description="List every registered pass: what it does, whether it is exact, and its "
                                   "options with types and defaults (usable as pass(option=value)).")
    p.set_defaults(handler=run)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def describe_passes() -> list[dict[str, Any]]:
    from autoglm.passes import REGISTRY
    from autoglm.passes.pipeline import DEFAULT_PIPELINE

    defaults = {name: why for name, why in DEFAULT_PIPELINE}
    out = []
    for name, cls in REGISTRY.items():
        hints = typing.get_type_hints(cls.Options) if dataclasses.is_dataclass(cls.Options) else {}
        helps = option_help(cls.Options)
        options = [{"name": f.name, "type": type_name(hints.get(f.name, Any)), "default": _default(f),
                    "allowed": list(typing.get_args(hints[f.name])) if typing.get_origin(hints.get(f.name))
                    is typing.Literal else None, "help": helps.get(f.name, "")}
                   for f in dataclasses.fields(cls.Options)]
        out.append({"name": name, "summary": cls.summary or (cls.__doc__ or "").strip().split("\n")[0],
                    "exact": cls.exact, "requires": list(cls.requires), "ensures": list(cls.ensures),
                    "in_default_pipeline": name in defaults, "options": options})
    return out


def run(args: argparse.Namespace, console: Console) -> int:
    passes = describe_passes()
    lines = []
    for p in passes:
        flags = ["exact" if p["exact"] else "lossy"] + (["default"] if p["in_default_pipeline"] else [])
        lines.append(f"{p['name']}  [{', '.join(flags)}]  {p['summary']}")
        for o in p["options"]:
            lines.append(f"    {o['name']}: {o['type']} = {o['default']!r}")
            for chunk in textwrap.wrap(o["help"], width=96):
                lines.append(f"        {chunk}")
        if not p["options"]:
            lines.append("    (no options)")
    lines.append("use as --passes 'name(option=value),...' or in a config file; see docs/cli.md")
    console.result("\n".join(lines), {"ok": True, "passes": passes})
    return 0
