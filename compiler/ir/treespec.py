"""Reading saved pytree specs (the structure of a model's inputs and outputs) as data.

A treespec is JSON naming a Python type per node. ``torch.utils._pytree.treespec_loads``
resolves those names in its registry, which is safe, but two of its readers
import modules named by the file: an ``Enum`` in a node's context
(``{"__enum__": ..., "fqn": "module:Class"}``) and a ``defaultdict``'s
``default_factory``. And a type that nobody registered in this process, such as a
Hugging Face ``ModelOutput`` whose module the user has not imported, fails with
``NotImplementedError`` (issue: a saved BERT could not be reopened in a fresh
process).

``load_treespec`` checks every node against an exact rule before torch reads it:

- torch's own container types (tuple, list, dict, OrderedDict, deque, torch.Size,
  fx's immutable containers, registered namedtuples) are read by torch;
- a ``defaultdict`` only with a builtin factory (``list``, ``dict``, ``int``...);
- a Hugging Face output class (``transformers.modeling_outputs.X`` or
  ``transformers.models.<name>.modeling_<name>.X``) is imported from the installed
  transformers package, and used only if it is a ``ModelOutput`` subclass; the
  module name must match that pattern exactly, so a file can name only the
  modules that define transformers' models;
- any other dict-like type (context a list of string keys), or an output class
  whose module is missing, comes back as ``OutputRecord``: a dict that also reads
  as attributes and by position, as ``ModelOutput`` does;
- anything else (contexts holding enums, unknown non-dict types) is refused.

``trusted=True`` (the user's ``--trust-remote-code``) hands the text to torch unchanged.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections import OrderedDict
from typing import Any

from torch.utils import _pytree as pytree

__all__ = ["OutputRecord", "UnsafeTreeSpecError", "checked_treespec_text", "load_treespec"]

_TORCH_TYPES = frozenset({
    "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict", "collections.deque",
    "collections.namedtuple", "torch.Size", "torch.fx.immutable_collections.immutable_dict",
    "torch.fx.immutable_collections.immutable_list",
})
_DEFAULTDICT_FACTORIES = frozenset({"list", "dict", "int", "float", "str", "set", "tuple"})
_HF_OUTPUT_MODULE = re.compile(r"transformers\.(modeling_outputs|models\.[a-z0-9_]+\.modeling_[a-z0-9_]+)\Z")
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RECORD_TYPE = "autoglm.OutputRecord"
MAX_DEPTH = 100


class UnsafeTreeSpecError(ValueError):
    """A saved input/output structure names a type or value that reading would import."""


class OutputRecord(OrderedDict):
    """A model output whose class is not available here: keys, attributes and positions.

    ``out["last_hidden_state"]``, ``out.last_hidden_state`` and ``out[0]`` all work,
    like the ``ModelOutput`` it stands for.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


def _record_flatten(record: OutputRecord) -> tuple[list[Any], list[str]]:
    return list(record.values()), list(record.keys())


def _record_unflatten(values: list[Any], keys: list[str]) -> OutputRecord:
    return OutputRecord(zip(keys, values))


pytree.register_pytree_node(
    OutputRecord, _record_flatten, _record_unflatten, serialized_type_name=_RECORD_TYPE,
    flatten_with_keys_fn=lambda r: ([(pytree.MappingKey(k), v) for k, v in r.items()], list(r.keys())),
)


def _hf_output_class(type_name: str) -> bool:
    """Import a Hugging Face output class named by ``type_name`` if the rule allows; True if now registered."""
    module, _, cls_name = type_name.rpartition(".")
    if not (_HF_OUTPUT_MODULE.match(module) and _CLASS_NAME.match(cls_name)):
        return False
    try:
        if importlib.util.find_spec(module) is None:
            return False
        mod = importlib.import_module(module)
        from transformers.utils import ModelOutput
    except Exception:  # transformers missing or broken here: the record stands in
        return False
    cls = getattr(mod, cls_name, None)
    return (isinstance(cls, type) and issubclass(cls, ModelOutput)
            and type_name in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE)


def _context(node: dict, where: str) -> Any:
    text = node.get("context")
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except (ValueError, RecursionError) as exc:
        raise UnsafeTreeSpecError(f"{where}: context is not JSON") from exc
    _refuse_enums(value, where)
    return value


def _refuse_enums(value: Any, where: str) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "__enum__" in v:
                raise UnsafeTreeSpecError(f"{where}: an enum in the structure would import {v.get('fqn')!r}")
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _checked(node: Any, where: str, depth: int = 0) -> dict:
    """``node`` with every type name either safe for torch or replaced by ``OutputRecord``."""
    if depth > MAX_DEPTH:
        raise UnsafeTreeSpecError(f"{where}: nested deeper than {MAX_DEPTH}")
    if not (isinstance(node, dict) and set(node) == {"type", "context", "children_spec"}
            and isinstance(node["children_spec"], list)):
        raise UnsafeTreeSpecError(f"{where}: not a treespec node")
    kind = node["type"]
    children = [_checked(c, where, depth + 1) for c in node["children_spec"]]
    if kind is None:
        return {"type": None, "context": None, "children_spec": children}
    if not isinstance(kind, str):
        raise UnsafeTreeSpecError(f"{where}: node type {kind!r} is not a name")
    context = _context(node, where)
    if kind == "collections.defaultdict":
        factory = context.get("default_factory_name") if isinstance(context, dict) else None
        if not (context.get("default_factory_module") == "builtins" and factory in _DEFAULTDICT_FACTORIES):
            raise UnsafeTreeSpecError(f"{where}: a defaultdict whose factory is not a builtin container")
    elif kind not in _TORCH_TYPES and kind != _RECORD_TYPE and not _hf_output_class(kind):
        if not (isinstance(context, list) and all(isinstance(k, str) for k in context)):
            raise UnsafeTreeSpecError(f"{where}: output type {kind!r} is not one autoglm can rebuild")
        kind = _RECORD_TYPE  # a dict-like output whose class is not here
    return {"type": kind, "context": node["context"], "children_spec": children}


def checked_treespec_text(text: str, where: str = "structure") -> str:
    """``text`` rewritten so that torch's reader only looks types up (see the module doc)."""
    try:
        protocol, schema = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise UnsafeTreeSpecError(f"{where}: not a saved treespec") from exc
    if protocol != 1:
        raise UnsafeTreeSpecError(f"{where}: treespec protocol {protocol!r} is not 1")
    return json.dumps([protocol, _checked(schema, where)])


def load_treespec(text: str, where: str = "structure", *, trusted: bool = False) -> pytree.TreeSpec:
    """The ``TreeSpec`` saved as ``text`` (``treespec_dumps``); see the module doc for the rule."""
    return pytree.treespec_loads(text if trusted else checked_treespec_text(text, where))
