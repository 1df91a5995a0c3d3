"""Hostile artifact directories: a real saved artifact, then ``graph.json`` edited.

Every case is ``(class, name, edit)``; ``edit(doc, canary)`` changes the parsed
``graph.json`` in place. The classes follow the trust-boundary findings: call
targets reaching live callables, call_method/getattr escapes, module classes,
names pasted into generated code, module attributes, and inconsistent files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from tests.hostile.payload import python, shell

Edit = Callable[[dict, str], None]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x).relu()
        return y.view(x.shape[0], -1) + 1


def base_artifact(path: Path) -> Path:
    """A legitimate artifact (symbolic capture: call_module, call_method and getattr nodes)."""
    import autoglm

    torch.manual_seed(0)
    cm = autoglm.compile(Tiny().eval(), (torch.randn(2, 4),), passes="none", frontend="symbolic")
    cm.save(path)
    return path


def _nodes(doc: dict) -> list[dict]:
    return doc["graph"]["nodes"]


def _node(doc: dict, op: str) -> dict:
    return next(n for n in _nodes(doc) if n["op"] == op)


def _call(doc: dict, target: Any, args: list, kwargs: list | None = None, op: str = "call_function") -> None:
    """Insert a node calling ``target`` just before the output, so running the graph would call it."""
    node = {"name": "evil", "op": op, "target": {"fn": target} if op == "call_function" else target,
            "args": {"__tuple__": args}, "kwargs": {"__dict__": kwargs or []}, "ann": None, "stack_trace": None,
            "type": None}
    _nodes(doc).insert(len(_nodes(doc)) - 1, node)


def _lin(doc: dict) -> dict:
    return doc["graph"]["root"]["children"]["model"]["children"]["lin"]


def _first_input(doc: dict) -> dict:
    return {"__node__": _node(doc, "placeholder")["name"]}


def _call_target(target: str, payload: Callable[[str], str] = shell) -> Edit:
    return lambda doc, canary: _call(doc, target, [payload(canary)])


def _getattr_chain(doc: dict, canary: str) -> None:
    # getattr(getattr(x, "__class__"), "__init__") ... towards globals: getattr is no general callable
    _call(doc, "builtins.getattr", [_first_input(doc), "__class__"])


def _operator_call(doc: dict, canary: str) -> None:
    _call(doc, "operator.call", [{"__node__": "placeholder_missing"}, shell(canary)])


def _method(name: str) -> Edit:
    return lambda doc, canary: _call(doc, name, [_first_input(doc), shell(canary)], op="call_method")


def _module_class(name: str) -> Edit:
    def edit(doc: dict, canary: str) -> None:
        _lin(doc)["class"] = name
    return edit


def _placeholder_target(doc: dict, canary: str) -> None:
    _node(doc, "placeholder")["target"] = f"x={python(canary)}"


def _node_name(doc: dict, canary: str) -> None:
    first = _node(doc, "placeholder")
    old = first["name"]
    first["name"] = f"x=({python(canary)})"
    text = json.dumps(doc).replace(json.dumps({"__node__": old}), json.dumps({"__node__": first["name"]}))
    doc.clear()
    doc.update(json.loads(text))


def _get_attr_target(doc: dict, canary: str) -> None:
    _nodes(doc).insert(1, {"name": "w", "op": "get_attr", "target": f'model.lin.weight"),{python(canary)},("',
                           "args": {"__tuple__": []}, "kwargs": {"__dict__": []}, "ann": None, "stack_trace": None,
                           "type": None})


def _kwarg_name(doc: dict, canary: str) -> None:
    _call(doc, "torch.add", [_first_input(doc), 1], kwargs=[[f"alpha={python(canary)},beta", 1]])


def _stack_trace(doc: dict, canary: str) -> None:
    # "\r" ends a line for Python's tokenizer: a comment made of this trace would end early.
    _node(doc, "call_module")["stack_trace"] = f'File "a.py", line 1, in f\n  x\r{python(canary)}\n'


def _module_attr(name: str) -> Edit:
    def edit(doc: dict, canary: str) -> None:
        _lin(doc)["attrs"][name] = shell(canary)
    return edit


def _shape_mismatch(doc: dict, canary: str) -> None:
    _nodes(doc).insert(1, {"name": "w", "op": "get_attr", "target": "model.lin.weight", "args": {"__tuple__": []},
                           "kwargs": {"__dict__": []}, "ann": {"created_by": "capture", "partition": None,
                                                              "tags": {}, "outputs": [[[9, 9], "float32"]]},
                           "stack_trace": None, "type": None})


def _duplicate_name(doc: dict, canary: str) -> None:
    _nodes(doc).insert(1, dict(_node(doc, "placeholder")))


def _dtype_name(doc: dict, canary: str) -> None:
    _call(doc, "torch.ones", [2], kwargs=[["dtype", {"__dtype__": "load"}]])


def _unknown_tensor(doc: dict, canary: str) -> None:
    _lin(doc)["buffers"].append("not_in_weights")


CASES: list[tuple[str, str, Edit]] = [
    *[("call-target", t, _call_target(t)) for t in (
        "torch.os.system", "os.system", "posix.system", "subprocess.getoutput", "torch.load", "torch.hub.load",
        "torch.ops.load_library", "autoglm.api.entry.os.system", "torch.ops.aten.save.default",
        "torch.ops.aten.from_file.default", "torch.ops.aten.__class__.default", "functools.partial",
        "operator.attrgetter", "operator.methodcaller", "builtins.__import__")],
    *[("call-target", t, _call_target(t, python)) for t in (
        "builtins.eval", "builtins.exec", "autoglm.artifacts.graph_json.builtins.eval", "torch.nn.functional.builtins.eval")],
    ("call-target", "getattr-dunder", _getattr_chain),
    ("call-target", "operator.call", _operator_call),
    *[("call-method", m, _method(m)) for m in ("__reduce_ex__", "register_hook", "apply_", "map_", "__class__",
                                              "__init_subclass__")],
    *[("module-class", c, _module_class(c)) for c in (
        "subprocess.Popen", "builtins.eval", "torch.nn.modules.module.os.system", "autoglm.capture.flat.FlatCall",
        "torch.nn.modules.linear.Linear.__init__", "autoglm.cli.main._Parser")],
    ("generated-code", "placeholder-target", _placeholder_target),
    ("generated-code", "node-name", _node_name),
    ("generated-code", "get_attr-target", _get_attr_target),
    ("generated-code", "kwarg-name", _kwarg_name),
    *[("module-attr", a, _module_attr(a)) for a in ("forward", "_forward_hooks", "__class__", "__dict__",
                                                     "_parameters", "register_forward_hook")],
    ("inconsistent", "shape-vs-weights", _shape_mismatch),
    ("inconsistent", "duplicate-node-name", _duplicate_name),
    ("inconsistent", "dtype-name", _dtype_name),
    ("inconsistent", "tensor-missing", _unknown_tensor),
]

# Cleaned, not refused: the artifact loads, and the trace it keeps has no line break but "\n".
SANITISED: list[tuple[str, str, Edit]] = [("generated-code", "stack-trace-cr", _stack_trace)]


def build(case: Edit, base: Path, dest: Path, canary: str) -> Path:
    shutil.copytree(base, dest)
    doc = json.loads((dest / "graph.json").read_text())
    case(doc, canary)
    (dest / "graph.json").write_text(json.dumps(doc))
    return dest
