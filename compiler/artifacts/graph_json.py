"""Save and load FX GraphModules as JSON + safetensors, without pickle.

Loading never executes code from the file, by construction:

* every call target, method and module class resolves through the one exact
  table in ``autoglm.loading.op_table`` (no prefix matching, no attribute walks from
  file text); ``builtins.getattr`` nodes may read only tensor attributes;
* every name from the file that FX would paste into generated Python source
  (node names, placeholder targets, ``get_attr``/``call_module`` targets,
  keyword-argument names, module attribute names) must be a plain identifier
  (or a dotted path of them that names an existing parameter, buffer or
  submodule); stack traces lose control characters;
* modules are rebuilt from their class by setting plain JSON attributes that do
  not shadow ``nn.Module``'s own machinery or a method; tensors come from
  safetensors;
* shapes, dtypes and costs are read from the file (``ann``), never obtained by
  running the graph; get_attr shapes are checked against the real weights.

Anything else in a file is refused with a clear error before a graph is built.

Modules of our own that hold non-strided tensors (packed int8 weights, sparse
formats) implement ``__autoglm_save__() -> (config, tensors)`` and the
classmethod ``__autoglm_load__(config, tensors)``.
"""
from __future__ import annotations

import inspect
import keyword
import math
import re
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from autoglm.ir.meta import TensorSpec, annotation, has_annotation
from autoglm.loading.file_safety import comment_safe
from autoglm.loading.op_table import (TENSOR_ATTRIBUTES, UnsafeArtifactError, function_name, resolve_function,
                              resolve_method, resolve_module_class)

__all__ = ["UnsafeArtifactError", "graph_to_json", "graph_from_json"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NODE_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
# nn.Module's own bookkeeping (_parameters, _modules, hooks...): a file may never set these.
_MODULE_MACHINERY = frozenset(vars(nn.Module()))


def _identifier(name: Any, what: str, *, leading_underscores: bool = False) -> str:
    """A plain identifier. ``leading_underscores``: node names, which are local variables of the
    generated code, may start with ``__`` (torch.export names ``aten.__and__`` nodes ``__and___tensor``)
    but may not be dunders; member names never start with ``__`` (``__class__``, ``__dict__``...)."""
    plain = isinstance(name, str) and _IDENT.match(name) and not keyword.iskeyword(name)
    if not plain or (name.startswith("__") and (name.endswith("__") or not leading_underscores)):
        raise UnsafeArtifactError(f"{what} {str(name)[:80]!r} is not a plain Python identifier; refused")
    return name


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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
    for key, table in _NAMED_VALUES.items():
        if key in v:
            if not isinstance(v[key], str) or v[key] not in table:
                raise UnsafeArtifactError(f"unknown {key.strip('_')} {str(v[key])[:40]!r}")
            return table[v[key]]
    if "__device__" in v:
        return torch.device(str(v["__device__"]))
    raise UnsafeArtifactError(f"unknown encoded value {str(v)[:80]!r}")


def _named(kind: type) -> dict[str, Any]:
    return {str(obj).replace("torch.", ""): obj for obj in vars(torch).values() if isinstance(obj, kind)}


# Exact tables of the torch enum values a file may name (no getattr on text from the file).
_NAMED_VALUES = {"__dtype__": _named(torch.dtype), "__memory_format__": _named(torch.memory_format),
                 "__layout__": _named(torch.layout)}


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
        # Saved so that loading never has to run the graph to learn them.
        "outputs": [[list(o.shape), str(o.dtype).replace("torch.", "")] for o in ann.outputs],
        "flops": ann.flops, "bytes_read": ann.bytes_read, "bytes_written": ann.bytes_written,
        "param_bytes": ann.param_bytes, "cost_s": ann.cost_s, "latency_s": ann.latency_s,
    }


def _ann_from_json(node: fx.Node, data: Any) -> None:
    if not isinstance(data, dict):
        raise UnsafeArtifactError(f"node {node.name}: annotation is not an object")
    ann = annotation(node)
    ann.created_by = str(data.get("created_by", "capture"))
    part = data.get("partition")
    ann.partition = int(part) if part is not None else None
    tags = data.get("tags") or {}
    ann.tags = {str(k): v for k, v in tags.items()} if isinstance(tags, dict) else {}
    dtypes = _NAMED_VALUES["__dtype__"]
    if "outputs" in data:  # artifacts written before shapes were saved leave it None
        ann.produces_tensors = bool(data["outputs"])
    for shape, dtype in data.get("outputs") or []:
        if dtype not in dtypes or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise UnsafeArtifactError(f"node {node.name}: malformed output spec {str([shape, dtype])[:80]}")
        ann.outputs.append(TensorSpec(tuple(shape), dtypes[dtype]))
    for key in ("flops", "bytes_read", "bytes_written", "param_bytes"):
        setattr(ann, key, int(data.get(key) or 0))
    for key in ("cost_s", "latency_s"):
        setattr(ann, key, float(data[key]) if data.get(key) is not None else None)


# ---------------------------------------------------------------- modules

# Child, parameter and buffer names: identifiers or nn.Sequential's digits (FX writes them as getattr strings).
_MEMBER = re.compile(r"[A-Za-z0-9_]+\Z")


def _member(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _MEMBER.match(name) or name.startswith("__"):
        raise UnsafeArtifactError(f"{what} {str(name)[:80]!r} is not a plain attribute name; refused")
    return name


def _saved_attrs(mod: nn.Module) -> dict[str, Any]:
    """Plain instance attributes (private ones too: MultiheadAttention reads ``_qkv_same_embed_dim``)."""
    return {k: _enc(v) for k, v in vars(mod).items()
            if k not in _MODULE_MACHINERY and _IDENT.match(k) and not k.startswith("__") and _encodable(v)}


def _module_to_json(mod: nn.Module, prefix: str, tensors: dict[str, torch.Tensor], required: set[str]) -> dict:
    if isinstance(mod, fx.GraphModule):
        return {"graph_module": _graph_to_json(mod, prefix, tensors)}
    cls_name = _class_name(type(mod))
    allowed = _loadable_class(cls_name)
    if hasattr(mod, "__autoglm_save__") and allowed:
        config, own = mod.__autoglm_save__()
        for k, t in own.items():
            tensors[f"{prefix}{k}"] = t
        return {"class": cls_name, "custom": config, "tensors": sorted(own)}
    if not allowed and prefix.rstrip(".") in required:
        raise TypeError(
            f"cannot save module {prefix.rstrip('.')!r} of class {cls_name}: only torch.nn and autoglm "
            "modules can be saved without pickle"
        )
    entry: dict[str, Any] = {"class": cls_name if allowed else None}
    if allowed:
        entry["attrs"] = _saved_attrs(mod)
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


def _loadable_class(name: str) -> bool:
    try:
        resolve_module_class(name)
        return True
    except UnsafeArtifactError:
        return False


def _encodable(v: Any) -> bool:
    try:
        _enc(v)
        return not isinstance(v, torch.Tensor)
    except TypeError:
        return False


def _set_attr(mod: nn.Module, key: Any, value: Any) -> None:
    """A saved attribute may not replace nn.Module's machinery, a method or a property of the class."""
    _identifier(key, f"module attribute of {type(mod).__name__}")
    static = inspect.getattr_static(type(mod), key, None)
    if key in _MODULE_MACHINERY or callable(static) or hasattr(static, "__get__"):
        raise UnsafeArtifactError(f"artifact sets {type(mod).__name__}.{key}, which is a method or part of "
                                  "nn.Module itself; refused")
    setattr(mod, key, value)


def _tensor(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise UnsafeArtifactError(f"graph reads tensor {key!r}, which is not in the weights file")
    return tensors[key]


def _module_from_json(entry: dict, prefix: str, tensors: dict[str, torch.Tensor], trusted: bool) -> nn.Module:
    if "graph_module" in entry:
        return _graph_from_json(entry["graph_module"], prefix, tensors, trusted)
    if "custom" in entry:
        cls = resolve_module_class(entry["class"])
        if not hasattr(cls, "__autoglm_load__"):
            raise UnsafeArtifactError(f"module class {entry['class']!r} has no custom loader")
        own = {_member(k, "tensor"): _tensor(tensors, f"{prefix}{k}") for k in entry["tensors"]}
        return cls.__autoglm_load__(entry["custom"], own)
    if entry.get("class"):
        cls = resolve_module_class(entry["class"])
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        for k, v in entry.get("attrs", {}).items():
            _set_attr(mod, k, _dec(v, {}))
        mod.training = bool(entry.get("training", False))
    else:
        mod = nn.Module()  # a user container: only its children and tensors matter
    for name in entry.get("params", []):
        t = _tensor(tensors, f"{prefix}{_member(name, 'parameter')}")
        mod.register_parameter(name, nn.Parameter(t, requires_grad=False))
    for name in entry.get("none_params", []):
        mod.register_parameter(_member(name, "parameter"), None)
    for name in entry.get("buffers", []):
        mod.register_buffer(_member(name, "buffer"), _tensor(tensors, f"{prefix}{name}"))
    for name in entry.get("tensor_attrs", []):
        _set_attr(mod, _member(name, "tensor attribute"), _tensor(tensors, f"{prefix}{name}"))
    for name, child in entry.get("children", {}).items():
        mod.add_module(_member(name, "submodule"), _module_from_json(child, f"{prefix}{name}.", tensors, trusted))
    return mod


# ---------------------------------------------------------------- graphs


def _graph_to_json(gm: fx.GraphModule, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    nodes = []
    required = set()
    for n in gm.graph.nodes:
        if n.op == "call_module":
            required.add(f"{prefix}{n.target}")
        if n.op in ("call_function",):
            target: Any = {"fn": function_name(n.target)}
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


def _owned(root: nn.Module, target: str) -> Any:
    """What a get_attr/call_module target names, found through the registered members only (no getattr)."""
    mod = root
    *path, last = target.split(".")
    for part in path:
        mod = mod._modules.get(part)
        if mod is None:
            break
    else:
        for table in (mod._modules, mod._parameters, mod._buffers):
            if last in table and table[last] is not None:
                return table[last]
        if isinstance(vars(mod).get(last), torch.Tensor):
            return vars(mod)[last]
    raise UnsafeArtifactError(f"graph reads {target!r}, which is not a parameter, buffer or submodule of the "
                              "saved modules; refused")


def _target(nd: dict, root: nn.Module, trusted: bool) -> Any:
    op, target = nd["op"], nd["target"]
    where = f"node {nd['name']}"
    if op == "call_function":
        fn = target.get("fn") if isinstance(target, dict) else None
        if fn == "builtins.getattr":
            return getattr  # checked against TENSOR_ATTRIBUTES once its arguments are decoded
        return resolve_function(fn, trust_remote_code=trusted, where=where)
    if op == "call_method":
        return resolve_method(target, where=where)
    if op == "placeholder":
        if not isinstance(target, str):
            raise UnsafeArtifactError(f"{where}: placeholder name is not a string")
        return "*" * (len(target) - len(target.lstrip("*"))) + _identifier(target.lstrip("*"), "placeholder")
    if op in ("get_attr", "call_module"):
        for part in target.split(".") if isinstance(target, str) else [target]:
            _member(part, f"{op} target")
        owned = _owned(root, target)
        if op == "call_module" and not isinstance(owned, nn.Module):
            raise UnsafeArtifactError(f"{where} calls {target!r}, which is not a submodule; refused")
        return target
    if target != "output":
        raise UnsafeArtifactError(f"{where}: output node with target {str(target)[:40]!r}")
    return target


def _check_getattr(node: fx.Node) -> None:
    obj, attr = (node.args + (None, None))[:2]
    if len(node.args) != 2 or node.kwargs or not isinstance(obj, fx.Node) or attr not in TENSOR_ATTRIBUTES:
        raise UnsafeArtifactError(f"node {node.name} reads attribute {str(attr)[:40]!r} with getattr; only tensor "
                                  f"attributes ({', '.join(sorted(TENSOR_ATTRIBUTES))}) may be read; refused")


def _check_module_uses(graph: fx.Graph, root: nn.Module) -> None:
    """A get_attr that yields a submodule may only feed a higher-order operator (``cond``'s branches)."""
    for node in graph.nodes:
        if node.op == "get_attr" and isinstance(_owned(root, node.target), nn.Module):
            for user in node.users:
                if not (user.op == "call_function" and isinstance(user.target, torch._ops.HigherOrderOperator)):
                    raise UnsafeArtifactError(f"node {user.name} uses submodule {node.target!r} as a value; "
                                              "refused")


def _check_shapes(graph: fx.Graph, root: nn.Module) -> None:
    """Shapes come from the file; a get_attr's must match the tensor the weights file really holds."""
    for node in graph.nodes:
        if node.op != "get_attr" or not has_annotation(node) or not annotation(node).outputs:
            continue
        value = _owned(root, node.target)
        spec = annotation(node).outputs[0]
        if isinstance(value, torch.Tensor) and (tuple(value.shape) != spec.shape or value.dtype != spec.dtype):
            raise UnsafeArtifactError(f"graph.json says {node.target} is {spec.dtype}{list(spec.shape)}, the "
                                      f"weights file holds {value.dtype}{list(value.shape)}; the artifact is "
                                      "inconsistent")


def _graph_from_json(data: dict, prefix: str, tensors: dict[str, torch.Tensor], trusted: bool = False
                     ) -> fx.GraphModule:
    root = _module_from_json(data["root"], prefix, tensors, trusted)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nd in data["nodes"]:
        if nd.get("op") not in _NODE_OPS:
            raise UnsafeArtifactError(f"unknown node op {str(nd.get('op'))[:40]!r}")
        name = _identifier(nd.get("name"), "node name", leading_underscores=True)
        if name in env:
            raise UnsafeArtifactError(f"node name {name!r} appears twice; refused")
        target = _target(nd, root, trusted)
        args, kwargs = _dec(nd["args"], env), _dec(nd["kwargs"], env)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise UnsafeArtifactError(f"node {name}: malformed arguments")
        for key in kwargs:
            _identifier(key, f"node {name}: keyword argument")
        node = graph.create_node(nd["op"], target, args, kwargs, name=name)
        if node.name != name:
            raise UnsafeArtifactError(f"node name {name!r} clashes with a name FX reserves; refused")
        if target is getattr:
            _check_getattr(node)
        trace = comment_safe(nd["stack_trace"]) if isinstance(nd.get("stack_trace"), str) else ""
        if trace:
            node.meta["stack_trace"] = trace
        if nd.get("ann"):
            _ann_from_json(node, nd["ann"])
        env[name] = node
    graph.lint()
    _check_module_uses(graph, root)
    _check_shapes(graph, root)
    return fx.GraphModule(root, graph)


def graph_to_json(gm: fx.GraphModule) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    data = _graph_to_json(gm, "", tensors)
    return data, tensors


def graph_from_json(data: dict, tensors: dict[str, torch.Tensor], *, trust_remote_code: bool = False
                    ) -> fx.GraphModule:
    """Rebuild a saved graph (see the module docstring for what is checked); never runs it."""
    return _graph_from_json(data, "", tensors, trust_remote_code)
