"""Pass specs: ``"split_merge,partition(k=2),quantize(mode=dynamic)"`` ↔ pass objects.

The same names and options work from Python (dataclass fields), the CLI string
and config files (a list of ``{name: {option: value}}``). Values are Python
literals where they parse as one (``2``, ``0.5``, ``True``, ``[1, 2]``), else
strings (``dynamic``, ``2:4``); then they are checked against the option's type.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from typing import Any, Mapping, Sequence

from autoglm.ir.pass_base import GraphPass

__all__ = ["SpecError", "parse_spec", "build_pass", "coerce_option", "split_top_level"]


class SpecError(ValueError):
    """A pass spec names an unknown pass or option, or gives a value of the wrong type."""


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced ')' in pass spec {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth != 0 or quote:
        raise SpecError(f"unbalanced brackets or quotes in pass spec {text!r}")
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _literal(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words are strings: mode=dynamic, pattern=2:4


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """``"a,b(k=2)"`` → ``[("a", {}), ("b", {"k": 2})]`` (names/options unchecked)."""
    out = []
    for item in split_top_level(spec):
        if "(" in item:
            if not item.endswith(")"):
                raise SpecError(f"expected 'name(key=value, ...)' in pass spec, got {item!r}")
            name, body = item[: item.index("(")].strip(), item[item.index("(") + 1 : -1]
            options = {}
            for kv in split_top_level(body):
                if "=" not in kv:
                    raise SpecError(f"pass option {kv!r} in {item!r} must be key=value")
                k, v = kv.split("=", 1)
                options[k.strip()] = _literal(v)
        else:
            name, options = item.strip(), {}
        if not name.isidentifier():
            hint = f" (did you mean {name.replace('-', '_')!r}?)" if name.replace("-", "_").isidentifier() else ""
            raise SpecError(f"invalid pass name {name!r} in spec {spec!r}{hint}")
        out.append((name, options))
    return out


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a dataclass field type; returns (ok, coerced value)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        for a in args:
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return (value in args), value
    if tp is type(None):
        return value is None, value
    if origin in (list, tuple, Sequence, typing.Sequence):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, value
        inner = args[0] if args else Any
        coerced = []
        for v in value:
            ok, cv = _type_ok(v, inner)
            if not ok:
                return False, value
            coerced.append(cv)
        return True, (tuple(coerced) if origin is tuple else coerced)
    if origin in (dict, Mapping):
        return isinstance(value, dict), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value


def coerce_option(pass_cls: type[GraphPass], key: str, value: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(pass_cls.Options)}
    if key not in fields:
        valid = ", ".join(fields) or "(none)"
        raise SpecError(f"pass '{pass_cls.name}' has no option {key!r}{did_you_mean(key, fields)}; "
                        f"valid options: {valid} (autoglm passes describes them)")
    hints = typing.get_type_hints(pass_cls.Options)
    tp = hints.get(key, Any)
    ok, coerced = _type_ok(value, tp)
    if not ok:
        allowed = _literal_values(tp)
        if allowed and isinstance(value, str):
            raise SpecError(f"pass '{pass_cls.name}' option {key}={value!r}: must be one of "
                            f"{', '.join(map(str, allowed))}{did_you_mean(value, [str(a) for a in allowed])}")
        raise SpecError(
            f"pass '{pass_cls.name}' option {key}={value!r}: expected {type_name(tp)}, "
            f"got {type(value).__name__}"
        )
    return coerced


def did_you_mean(word: str, choices: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _literal_values(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return ()


def type_name(tp: Any) -> str:
    """A type as users write it: ``int``, ``float | None``, ``one of dynamic, static``."""
    allowed = _literal_values(tp)
    if allowed:
        return "one of " + ", ".join(map(str, allowed))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def build_pass(registry: Mapping[str, type[GraphPass]], name: str, options: Mapping[str, Any]) -> GraphPass:
    if name not in registry:
        raise SpecError(f"unknown pass {name!r}{did_you_mean(name, registry)}; valid passes: "
                        f"{', '.join(sorted(registry))}")
    cls = registry[name]
    coerced = {k: coerce_option(cls, k, v) for k, v in options.items()}
    try:
        return cls(**coerced)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"pass '{name}': {exc}") from exc
