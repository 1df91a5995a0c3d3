"""Compile configuration from TOML/YAML/JSON files and ``--set`` overrides.

The pass names and options are the same as in the spec string and the Python
API (``autoglm.passes.REGISTRY``, each pass's ``Options`` dataclass)::

    # autoglm.toml                          # autoglm.yaml
    devices = ["cpu", "cpu"]                devices: [cpu, cpu]
    passes = [                              passes:
      "dce",                                  - dce
      {partition = {k = 2}},                  - partition: {k: 2}
      {name = "quantize", mode = "dynamic"},  - {name: quantize, mode: dynamic}
    ]

``passes`` may also be a spec string (``"dce,partition(k=2)"``), ``"default"``
or ``"none"``. Top-level keys: ``passes``, ``devices``, ``frontend``, ``cost``,
``verify``, ``backend``; anything else is an error (typos should not be ignored).

Precedence: file < CLI flags (``--passes``, ``--devices``) < ``--set``.
``--set pass.option=value`` changes that option on every instance of the pass in
the pipeline (values parse like in spec strings: ``2``, ``0.5``, ``True``,
``[1, 2]``, else a string); ``--set key=value`` sets a top-level key.

The effective configuration (every pass with all of its options, defaults
included) is what ``effective()`` returns; the CLI stores it in the artifact's
``config.json`` under ``effective_config``, and such a ``config.json`` can be
passed back as ``--config`` to reproduce the build.

Config files are untrusted input, read within the limits of ``autoglm.loading.bounded_read``:
regular files only (no FIFO or device), at most ``AUTOGLM_MAX_CONFIG_BYTES`` (16 MiB),
UTF-8, nested at most ``AUTOGLM_MAX_NESTING`` (64) levels deep.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from autoglm.loading.bounded_read import parse_document, read_user_file
from autoglm.ir.pass_base import GraphPass
from autoglm.passes.spec import SpecError, parse_spec

__all__ = ["ConfigError", "CompileConfig", "load_config", "apply_overrides", "passes_from_value",
           "dynamic_from_value"]

TOP_LEVEL_KEYS = ("passes", "devices", "frontend", "cost", "verify", "backend", "dynamic")
PassItem = tuple[str, dict[str, Any]]


class ConfigError(ValueError):
    """A config file or ``--set`` override is malformed."""


@dataclass
class CompileConfig:
    """``passes`` is ``"default"``, ``"none"`` or an explicit list of (name, options)."""

    passes: str | list[PassItem] = "default"
    devices: list[str] | None = None
    frontend: str = "auto"
    cost: str = "analytic"
    verify: bool = False
    backend: str = "fx"
    dynamic: Any = None  # autoglm.compile's dynamic=: None infers, False is static, a dict states dims
    source: str = ""  # where it came from, for messages
    overrides: list[str] = field(default_factory=list)

    def build_pipeline(self) -> list[GraphPass]:
        """The pass objects (unknown names, options and bad values raise ``SpecError``)."""
        from autoglm.passes import REGISTRY
        from autoglm.passes.pipeline import resolve_passes
        from autoglm.passes.spec import build_pass

        if isinstance(self.passes, str):
            return resolve_passes(self.passes, self.devices or ["cpu"])
        return [build_pass(REGISTRY, name, opts) for name, opts in self.passes]

    def expanded(self) -> "CompileConfig":
        """Same config with ``"default"`` replaced by its explicit pass list (so ``--set`` can reach it)."""
        if not isinstance(self.passes, str):
            return self
        items = [(p.name, _options_dict(p)) for p in self.build_pipeline()]
        return dataclasses.replace(self, passes=items)

    def effective(self, pipeline: Sequence[GraphPass] | None = None) -> dict[str, Any]:
        """A config-file dict that reproduces this build exactly (all options spelled out)."""
        pipeline = self.build_pipeline() if pipeline is None else pipeline
        return {
            "passes": [{p.name: _options_dict(p)} for p in pipeline],
            "devices": list(self.devices or ["cpu"]),
            "frontend": self.frontend,
            "cost": self.cost,
            "verify": self.verify,
            "backend": self.backend,
            **({"dynamic": _dynamic_value(self.dynamic)} if self.dynamic is not None else {}),
        }


def _options_dict(p: GraphPass) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(p.options):
        v = getattr(p.options, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _read_text(path: Path) -> str:
    # Regular files only and at most AUTOGLM_MAX_CONFIG_BYTES (autoglm.loading.bounded_read): a FIFO or
    # /dev/zero given as --config must not hang the CLI or exhaust memory.
    data = read_user_file(path, "config file", "config", error=ConfigError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text ({exc})") from exc


def _parse_toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise ConfigError("TOML configs need Python 3.11+ (or pip install tomli); use YAML") from exc
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, and int() refusing a number with too many digits
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from exc
    except ValueError as exc:  # a constructor's int()/timestamp refusing a value
        raise ConfigError(f"{path}: YAML value error: {exc}") from exc


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and int() refusing a number with too many digits
        raise ConfigError(f"{path}: JSON syntax error: {exc}") from exc


_PARSERS = {".toml": _parse_toml, ".yaml": _parse_yaml, ".yml": _parse_yaml, ".json": _parse_json}


def _parse_file(path: Path) -> Any:
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix not in _PARSERS:
        raise ConfigError(f"config file {path}: unsupported extension {suffix or '(none)'!r}; "
                          "use .toml, .yaml or .json")
    # Deep nesting would end in a RecursionError (in the parser, or later in code walking the
    # result): refused, like documents over AUTOGLM_MAX_NESTING levels or AUTOGLM_MAX_DOC_NODES values.
    return parse_document(lambda t: _PARSERS[suffix](path, t), text, f"config file {path}", error=ConfigError)


def passes_from_value(value: Any, where: str) -> str | list[PassItem]:
    """Normalise the ``passes`` value of a config (string spec, or a list of entries)."""
    if isinstance(value, str):
        if value in ("default", "none"):
            return value
        return [(n, dict(o)) for n, o in parse_spec(value)]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: 'passes' must be a list or a spec string, got {type(value).__name__}")
    items: list[PassItem] = []
    for entry in value:
        if isinstance(entry, str):
            items.extend((n, dict(o)) for n, o in parse_spec(entry))
        elif isinstance(entry, dict) and "name" in entry:
            items.append((str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}))
        elif isinstance(entry, dict) and len(entry) == 1:
            (name, opts), = entry.items()
            if opts is not None and not isinstance(opts, dict):
                raise ConfigError(f"{where}: options of pass {name!r} must be a table/mapping, got {opts!r}")
            items.append((str(name), dict(opts or {})))
        else:
            raise ConfigError(f"{where}: pass entry {entry!r} must be a name, {{name: {{options}}}} or "
                              "{name: ..., option: ...}")
    return items


def _devices(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [d.strip() for d in value.split(",") if d.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value):
        raise ConfigError(f"{where}: 'devices' must be a non-empty list of device names like [\"cpu\", \"cpu\"]")
    return value


def _from_mapping(doc: Any, where: str) -> CompileConfig:
    if isinstance(doc, dict) and isinstance(doc.get("effective_config"), dict):
        doc = doc["effective_config"]  # an artifact's config.json: reproduce that build
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; valid settings: {', '.join(TOP_LEVEL_KEYS)}")
    cfg = CompileConfig(source=where)
    if "passes" in doc:
        cfg.passes = passes_from_value(doc["passes"], where)
    if "devices" in doc:
        cfg.devices = _devices(doc["devices"], where)
    for key in ("frontend", "cost", "backend"):
        if key in doc:
            if not isinstance(doc[key], str):
                raise ConfigError(f"{where}: {key!r} must be a string, got {doc[key]!r}")
            setattr(cfg, key, doc[key])
    if "dynamic" in doc:
        cfg.dynamic = dynamic_from_value(doc["dynamic"], where)
    if "verify" in doc:
        if not isinstance(doc["verify"], bool):
            raise ConfigError(f"{where}: 'verify' must be true or false, got {doc['verify']!r}")
        cfg.verify = doc["verify"]
    return cfg


_DIM_TEXT = re.compile(r"(\d+)=([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+):(\d*)\])?\Z")


def dynamic_from_value(value: Any, where: str) -> Any:
    """``dynamic`` from a file or ``--dynamic``: ``auto`` (infer), ``static``/false, a mapping
    ``{input: {dim: name or [name, min, max]}}`` or the text ``input_ids:0=batch,1=seq[1:512];mask:...``."""
    if value is None or value is True or value == "auto":
        return None
    if value is False or value in ("static", "none", "false"):
        return False
    if isinstance(value, str):
        value = _dynamic_text(value, where)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
        raise ConfigError(f"{where}: 'dynamic' must be auto, static, or a mapping of input -> {{dim: name}}")
    out: dict[str, dict[int, Any]] = {}
    for name, dims in value.items():
        for d, spec in dims.items():
            if not str(d).isdigit():
                raise ConfigError(f"{where}: dynamic {name!r}: dimension {d!r} is not a number")
            if isinstance(spec, list) and len(spec) == 3:
                spec = tuple(spec)
            elif not isinstance(spec, str):
                raise ConfigError(f"{where}: dynamic {name!r}[{d}] must be a name or [name, min, max]")
            out.setdefault(name, {})[int(d)] = spec
    return out


def _dynamic_text(text: str, where: str) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, dims = part.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"{where}: dynamic {part!r} must look like input_ids:0=batch,1=seq[1:512]")
        for item in dims.split(","):
            m = _DIM_TEXT.match(item.strip())
            if not m:
                raise ConfigError(f"{where}: dynamic {item.strip()!r} must look like 1=seq or 1=seq[1:512]")
            d, dim_name, lo, hi = m.groups()
            spec = dim_name if lo is None else [dim_name, int(lo), int(hi) if hi else None]
            out.setdefault(name.strip(), {})[d] = spec
    return out


def _dynamic_value(dynamic: Any) -> Any:
    """The config-file spelling of a ``dynamic`` setting (for effective configs)."""
    if dynamic is False:
        return "static"
    return {k: {str(d): (list(s) if isinstance(s, tuple) else s) for d, s in v.items()} for k, v in dynamic.items()}


def load_config(path: str | os.PathLike) -> CompileConfig:
    p = Path(path)
    return _from_mapping(_parse_file(p), str(p))


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def apply_overrides(cfg: CompileConfig, sets: Sequence[str]) -> CompileConfig:
    """Apply ``--set pass.option=value`` / ``--set key=value`` in order."""
    if not sets:
        return cfg
    cfg = cfg.expanded()
    items: list[PassItem] = [(n, dict(o)) for n, o in cfg.passes]  # type: ignore[union-attr]
    cfg = dataclasses.replace(cfg, passes=items, overrides=list(cfg.overrides) + list(sets))
    for text in sets:
        if "=" not in text:
            raise ConfigError(f"--set {text!r} must be pass.option=value or setting=value")
        key, raw = (s.strip() for s in text.split("=", 1))
        if "." not in key:
            if key not in TOP_LEVEL_KEYS or key == "passes":
                valid = ", ".join(k for k in TOP_LEVEL_KEYS if k != "passes")
                raise ConfigError(f"--set {text!r}: unknown setting {key!r}; valid: {valid}, or pass.option")
            merged = _from_mapping({key: raw if key in ("devices", "frontend", "cost", "backend", "dynamic")
                                    else _literal(raw)}, f"--set {text}")
            setattr(cfg, key, getattr(merged, key))
            continue
        name, option = key.split(".", 1)
        hits = [opts for n, opts in items if n == name]
        if not hits:
            present = ", ".join(n for n, _ in items) or "(none)"
            raise ConfigError(f"--set {text!r}: pass {name!r} is not in the pipeline (passes: {present}); "
                              "add it with --passes or in the config file")
        for opts in hits:
            opts[option] = _literal(raw)
    try:
        cfg.build_pipeline()  # validate names/options/types now, with the --set text in the error
    except SpecError as exc:
        raise ConfigError(f"after --set {' '.join(sets)}: {exc}") from exc
    return cfg
