"""Save and load FX GraphModules as JSON + safetensors, without pickle.

Loading never executes code from the file: node targets resolve only to
allowlisted callables (``torch``, ``operator``, ``math``, ``autoglm`` and a few
builtins), modules are rebuilt only from allowlisted classes (``torch.nn`` and
``autoglm``) by setting plain JSON attributes, and tensors come from
safetensors. Anything else in a file is refused with a clear error.

Modules of our own that hold non-strided tensors (packed int8 weights, sparse
formats) implement ``__autoglm_save__() -> (config, tensors)`` and the
classmethod ``__autoglm_load__(config, tensors)``.
"""
from __future__ import annotations

import builtins
import importlib
import math
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.ir.meta import annotation, has_annotation

__all__ = ["UnsafeArtifactError", "graph_to_json", "graph_from_json"]

_ALLOWED_FN_PREFIXES = ("torch.", "operator.", "_operator.", "math.", "autoglm.")
_ALLOWED_BUILTINS = {"getattr", "len", "slice", "range", "int", "float", "bool", "max", "min", "abs"}
_ALLOWED_CLASS_PREFIXES = ("torch.nn.", "autoglm.")
_PRIMITIVE = (bool, int, str, type(None))


class UnsafeArtifactError(ValueError):
    """An artifact names something we refuse to load (not allowlisted)."""


# ---------------------------------------------------------------- targets


def _fn_name(fn: Any) -> str:
    if isinstance(fn, torch._ops.OpOverload):
        return f"torch.ops.{fn.namespace}.{fn._opname}.{fn._overloadname}"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return f"torch.ops.{fn._qualified_op_name.replace('::', '.')}"
    short = getattr(fn, "__name__", "")
    # Prefer the public spelling: C bindings report private modules/qualnames.
    for public in ("torch", "torch.nn.functional", "operator", "math"):
        owner = importlib.import_module(public)
        if short and getattr(owner, short, None) is fn:
            return f"{public}.{short}"
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or short
    if mod == "builtins":
        return f"builtins.{name}"
    if mod == "_operator":
        mod = "operator"
    return f"{mod}.{name}"


def _resolve_fn(name: str) -> Any:
    if name.startswith("builtins."):
        short = name.split(".", 1)[1]
        if short not in _ALLOWED_BUILTINS:
            raise UnsafeArtifactError(f"refusing builtin {short!r} in artifact (allowed: {sorted(_ALLOWED_BUILTINS)})")
        return getattr(builtins, short)
    if not name.startswith(_ALLOWED_FN_PREFIXES):
        raise UnsafeArtifactError(f"refusing to load call target {name!r}: not a torch/operator/math/autoglm callable")
    if name.startswith("torch.ops."):
        obj: Any = torch.ops
        for part in name.split(".")[2:]:
            obj = getattr(obj, part)
        return obj
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            break
        return obj
    raise UnsafeArtifactError(f"cannot resolve call target {name!r}")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve_class(name: str) -> type:
    if not name.startswith(_ALLOWED_CLASS_PREFIXES):
        raise UnsafeArtifactError(f"refusing to rebuild module class {name!r}: not torch.nn or autoglm")
    cls = _resolve_fn(name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UnsafeArtifactError(f"{name!r} is not an nn.Module class")
    return cls


# ---------------------------------------------------------------- values


def _enc(v: Any) -> Any:
    if isinstance(v, fx.Node):
        return {"__node__": v.name}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {"__dict__": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, slice):
        return {"__slice__": [_enc(v.start), _enc(v.stop), _enc(v.step)]}
    if v is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).replace("torch.", "")}
    if isinstance(v, torch.device):
        return {"__device__": str(v)}
    if isinstance(v, torch.memory_format):
        return {"__memory_format__": str(v).replace("torch.", "")}
    if isinstance(v, torch.layout):
        return {"__layout__": str(v).replace("torch.", "")}
    if isinstance(v, torch.Size):
        return {"__tuple__": [int(x) for x in v]}
    raise TypeError(f"cannot serialise graph argument {v!r} of type {type(v).__name__}")


def _dec(v: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(v, list):
        return [_dec(x, env) for x in v]
    if not isinstance(v, dict):
        return v
    if "__node__" in v:
        return env[v["__node__"]]
    if "__tuple__" in v:
        return tuple(_dec(x, env) for x in v["__tuple__"])
    if "__dict__" in v:
        return {_dec(k, env): _dec(x, env) for k, x in v["__dict__"]}
    if "__slice__" in v:
        return slice(*(_dec(x, env) for x in v["__slice__"]))
    if "__ellipsis__" in v:
        return Ellipsis
    if "__float__" in v:
        return float(v["__float__"])
    for key, kind in (("__dtype__", torch.dtype), ("__memory_format__", torch.memory_format),
                      ("__layout__", torch.layout)):
        if key in v:
            obj = getattr(torch, v[key], None)
            if not isinstance(obj, kind):
                raise UnsafeArtifactError(f"unknown {key.strip('_')} {v[key]!r}")
            return obj
    if "__device__" in v:
        return torch.device(v["__device__"])
    raise UnsafeArtifactError(f"unknown encoded value {v!r}")


def _json_safe(v: Any) -> bool:
    if isinstance(v, (bool, int, str, type(None))):
        return True
    if isinstance(v, float):
        return True
    if isinstance(v, (list, tuple)):
        return all(_json_safe(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_safe(x) for k, x in v.items())
    return False


def _ann_json(node: fx.Node) -> dict[str, Any] | None:
    if not has_annotation(node):
        return None
    ann = annotation(node)
    return {
        "created_by": ann.created_by,
        "partition": ann.partition,
        "tags": {k: v for k, v in ann.tags.items() if _json_safe(v)},
    }


# ---------------------------------------------------------------- modules


def _module_to_json(mod: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], required: set[str]) -> dict:
    if isinstance(mod, fx.GraphModule):
        return {"graph_module": _graph_to_json(mod, prefix, tensors)}
    if hasattr(mod, "__autoglm_save__"):
        config, own = mod.__autoglm_save__()
        for k, t in own.items():
            tensors[f"{prefix}{k}"] = t
        return {"class": _class_name(type(mod)), "custom": config, "tensors": sorted(own)}
    cls_name = _class_name(type(mod))
    allowed = cls_name.startswith(_ALLOWED_CLASS_PREFIXES)
    if not allowed and prefix.rstrip(".") in required:
        raise TypeError(
            f"cannot save module {prefix.rstrip('.')!r} of class {cls_name}: only torch.nn and autoglm "
            "modules can be saved without pickle"
        )
    entry: dict[str, Any] = {"class": cls_name if allowed else None}
    if allowed:
        entry["attrs"] = {k: _enc(v) for k, v in vars(mod).items()
                          if not k.startswith("_") and k != "training" and _encodable(v)}
        entry["training"] = mod.training
    for name, p in mod._parameters.items():
        if p is not None:
            tensors[f"{prefix}{name}"] = p.detach()
    entry["params"] = [n for n, p in mod._parameters.items() if p is not None]
    entry["buffers"] = [n for n, b in mod._buffers.items() if b is not None]
    # Registered as None (Conv2d(bias=False).bias): forward reads the attribute, so it
    # must exist after loading (found on a ResNet artifact).
    entry["none_params"] = [n for n, p in mod._parameters.items() if p is None]
    for name, b in mod._buffers.items():
        if b is not None:
            tensors[f"{prefix}{name}"] = b
    # plain tensor attributes (get_attr constants torch.export lifts)
    plain = [k for k, v in vars(mod).items() if isinstance(v, torch.Tensor) and not k.startswith("_")]
    for k in plain:
        tensors[f"{prefix}{k}"] = getattr(mod, k)
    entry["tensor_attrs"] = plain
    entry["children"] = {n: _module_to_json(c, f"{prefix}{n}.", tensors, required)
                         for n, c in mod._modules.items() if c is not None}
    return entry


def _encodable(v: Any) -> bool:
    try:
        _enc(v)
        return not isinstance(v, torch.Tensor)
    except TypeError:
        return False


def _module_from_json(entry: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> nn.Module:
    if "graph_module" in entry:
        return _graph_from_json(entry["graph_module"], prefix, tensors)
    if "custom" in entry:
        cls = _resolve_class(entry["class"])
        own = {k: tensors[f"{prefix}{k}"] for k in entry["tensors"]}
        return cls.__autoglm_load__(entry["custom"], own)
    if entry.get("class"):
        cls = _resolve_class(entry["class"])
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        for k, v in entry.get("attrs", {}).items():
            setattr(mod, k, _dec(v, {}))
        mod.training = bool(entry.get("training", False))
    else:
        mod = nn.Module()  # a user container: only its children and tensors matter
    for name in entry.get("params", []):
        mod.register_parameter(name, nn.Parameter(tensors[f"{prefix}{name}"], requires_grad=False))
    for name in entry.get("none_params", []):
        mod.register_parameter(name, None)
    for name in entry.get("buffers", []):
        mod.register_buffer(name, tensors[f"{prefix}{name}"])
    for name in entry.get("tensor_attrs", []):
        setattr(mod, name, tensors[f"{prefix}{name}"])
    for name, child in entry.get("children", {}).items():
        mod.add_module(name, _module_from_json(child, f"{prefix}{name}.", tensors))
    return mod


# ---------------------------------------------------------------- graphs


def _graph_to_json(gm: fx.GraphModule, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    nodes = []
    required = set()
    for n in gm.graph.nodes:
        if n.op == "call_module":
            required.add(f"{prefix}{n.target}")
        if n.op in ("call_function",):
            target: Any = {"fn": _fn_name(n.target)}
        else:
            target = str(n.target)
        nodes.append({
            "name": n.name, "op": n.op, "target": target,
            "args": _enc(tuple(n.args)), "kwargs": _enc(dict(n.kwargs)),
            "ann": _ann_json(n), "stack_trace": n.meta.get("stack_trace"),
            "type": None,
        })
    required = {r[len(prefix):] if prefix and r.startswith(prefix) else r for r in required}
    root = {"class": None, "params": [], "buffers": [], "tensor_attrs": [],
            "children": {n: _module_to_json(c, f"{prefix}{n}.", tensors, {f"{prefix}{x}" for x in required})
                         for n, c in gm._modules.items() if c is not None}}
    # tensors directly on the GraphModule (get_attr targets without a dot)
    for name, p in list(gm._parameters.items()) + list(gm._buffers.items()):
        if p is not None:
            tensors[f"{prefix}{name}"] = p.detach()
            root["params" if name in gm._parameters else "buffers"].append(name)
    for k, v in vars(gm).items():
        if isinstance(v, torch.Tensor) and not k.startswith("_"):
            tensors[f"{prefix}{k}"] = v
            root["tensor_attrs"].append(k)
    return {"nodes": nodes, "root": root}


def _graph_from_json(data: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    root = _module_from_json(data["root"], prefix, tensors)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nd in data["nodes"]:
        op = nd["op"]
        if op not in ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output"):
            raise UnsafeArtifactError(f"unknown node op {op!r}")
        target = _resolve_fn(nd["target"]["fn"]) if op == "call_function" else nd["target"]
        if not isinstance(target, str) and op != "call_function":
            raise UnsafeArtifactError(f"bad target for {op} node {nd['name']!r}")
        args, kwargs = _dec(nd["args"], env), _dec(nd["kwargs"], env)
        node = graph.create_node(op, target, tuple(args), dict(kwargs), name=nd["name"])
        if nd.get("stack_trace"):
            node.meta["stack_trace"] = nd["stack_trace"]
        if nd.get("ann"):
            ann = annotation(node)
            ann.created_by = nd["ann"]["created_by"]
            ann.partition = nd["ann"]["partition"]
            ann.tags = dict(nd["ann"]["tags"])
        env[nd["name"]] = node
    graph.lint()
    return fx.GraphModule(root, graph)


def graph_to_json(gm: fx.GraphModule) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    data = _graph_to_json(gm, "", tensors)
    return data, tensors


def graph_from_json(data: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    return _graph_from_json(data, "", tensors)
