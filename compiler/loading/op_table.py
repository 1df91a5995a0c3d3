"""The one exact table of what a graph loaded from a file may call.

Both loaders (our artifact directories, ``autoglm.artifacts.graph_json``, and
``torch.export`` archives, ``autoglm.loading.pt2_reader``) resolve every call target
through this table and nothing else. A name either is a key of the table or is
refused; there is no prefix matching and no attribute walk driven by text from
the file, so ``torch.os.system``, ``torch.load``, ``torch.ops.load_library`` or
``autoglm.<anything>.builtins.eval`` are simply not keys.

What is in it, and why each part is safe to call with file-chosen arguments:

* **Operators** (``torch.ops.<ns>.<op>.<overload>``): every overload registered
  with the dispatcher in the namespaces ``aten``, ``prims``, ``quantized``,
  ``_quantized`` and ``quantized_decomposed``, read
  from the operator registry (``torch._C._jit_get_all_schemas``). Operators
  compute on tensors; the few that touch the file system (``aten::save``,
  ``aten::from_file``: an argument named ``filename``) are left out.
* **Higher-order operators**: ``torch.ops.higher_order.cond`` only.
* **Tensor functions** from ``torch``, ``torch.nn.functional``, ``torch.linalg``,
  ``torch.fft`` and ``torch.special``: the ones ``torch.overrides`` lists as
  overridable (functions of tensors that dispatch ``__torch_function__``),
  plus the tensor factories and ``torch.sym_*`` helpers listed below by name.
  ``torch.load``, ``torch.compile``, ``torch.hub.load`` are not overridable
  tensor functions and are not here.
* **Python functions** enumerated by name: ``operator`` arithmetic and
  comparisons, ``math`` rounding and roots, a few pure builtins.
* **Our own functions** (the run-time guard of branching programs), also under
  the names older artifacts used (``RENAMED_FUNCTIONS``).
* **Tensor methods** (``call_method`` targets): public ``torch.Tensor`` methods
  that are overridable *and* are an ``aten`` operator of the same name, plus
  the dtype/device conversions listed below. Methods that take callables or
  hooks (``apply_``, ``map_``, ``register_hook``, ``backward``) are not aten
  operators and are not here.
* ``builtins.getattr`` is never a general callable: a graph may read only the
  tensor attributes in ``TENSOR_ATTRIBUTES`` (``x.shape``, ``x.dtype``...),
  checked where the node is built.
* **Module classes**: every public ``nn.Module`` class defined in
  ``torch.nn.modules``, and autoglm's own modules, by exact qualified name.

``trust_remote_code=True`` (the CLI's ``--trust-remote-code``) additionally
resolves names outside the table by importing them: functions a user marked
``torch.fx.wrap`` live in the user's code, which the user then vouches for.
"""
from __future__ import annotations

import builtins
import functools
import importlib
import inspect
import math
import operator
from typing import Any, Callable

import torch
import torch.nn as nn

from autoglm.ir.guards import check_guard
from autoglm.ir.int8 import Int8Conv2d, Int8Embedding, Int8Linear
from autoglm.ir.sparse_modules import BsrLinear, CsrLinear, SemiStructuredLinear

__all__ = ["UnsafeArtifactError", "resolve_function", "function_name", "resolve_method", "resolve_module_class",
           "is_loadable_function", "TENSOR_ATTRIBUTES", "TRUST_HINT", "TRUST_FLAG"]

TRUST_FLAG = "pass --trust-remote-code (trust_remote_code=True in Python)"
TRUST_HINT = f"if it is a function you marked torch.fx.wrap and you trust this file, {TRUST_FLAG}"

OPERATOR_NAMESPACES = ("aten", "prims", "quantized", "_quantized", "quantized_decomposed")
# Modules that register operators in OPERATOR_NAMESPACES when imported (fixed here, never from a file).
# (autoglm_onnx's ops and QDQ twin modules exist only inside an ONNX export, never in a saved graph.)
_OPERATOR_MODULES = ("torch.ao.quantization.fx._decomposed",)
_OPERATOR_FUNCTIONS = (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "invert", "and_", "or_", "xor",
    "not_", "lshift", "rshift", "eq", "ne", "lt", "le", "gt", "ge", "getitem", "matmul", "is_", "is_not",
    "contains", "truth", "index",
)
_MATH_FUNCTIONS = ("ceil", "floor", "trunc", "sqrt", "exp", "log", "log2", "log10", "fabs", "isnan", "isinf",
                   "isfinite", "prod", "gcd")
_BUILTIN_FUNCTIONS = ("len", "slice", "range", "int", "float", "bool", "max", "min", "abs", "round", "sum")
# Not overridable (they take no tensor), yet plain tensor factories and shape helpers graphs call.
_TORCH_EXTRA = (
    "tensor", "as_tensor", "scalar_tensor", "arange", "zeros", "ones", "full", "empty", "eye", "linspace",
    "logspace", "rand", "randn", "randint", "finfo", "iinfo", "Size", "sym_int", "sym_float", "sym_max", "sym_min",
    "sym_not", "sym_ite", "sym_sum", "sym_sqrt", "_sym_sqrt", "sym_fresh_size", "_assert", "is_tensor",
    "is_floating_point", "is_complex", "get_default_dtype", "promote_types", "result_type", "can_cast",
)
_TENSOR_FUNCTION_MODULES = ("torch", "torch.nn.functional", "torch.linalg", "torch.fft", "torch.special")
_METHOD_EXTRA = ("float", "double", "half", "bfloat16", "int", "long", "short", "bool", "byte", "char", "cpu",
                 "type", "type_as", "size", "dim", "numel", "element_size", "is_contiguous", "is_floating_point",
                 "contiguous", "to", "item", "tolist", "new_zeros", "new_ones", "new_full", "new_empty",
                 "new_tensor", "clone", "detach", "expand_as", "view_as", "reshape_as", "masked_fill_")
TENSOR_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "T", "mT", "H", "mH", "real", "imag", "layout",
                               "is_cuda", "is_cpu", "is_quantized", "is_sparse", "requires_grad", "itemsize",
                               "nbytes"})


# Artifacts saved before a function moved name it by its old path: old name -> table name.
# (Module classes have not moved: autoglm.ir keeps them, so they need no alias.)
RENAMED_FUNCTIONS = {"autoglm.runtime.replan.check_guard": "autoglm.ir.guards.check_guard"}


class UnsafeArtifactError(ValueError):
    """A loaded graph names something outside the table (refused, nothing was called)."""


# ---------------------------------------------------------------- the tables (built once)


def _import_operator_modules() -> None:
    for name in _OPERATOR_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # optional: an op of a missing module is then simply not in the table
            pass


def _touches_files(schema: Any) -> bool:
    return any(a.name in ("filename", "path", "file") for a in schema.arguments)


@functools.lru_cache(maxsize=1)
def _operator_overloads() -> frozenset[tuple[str, str, str]]:
    """(namespace, op, overload) of every registered operator we allow; ``default`` for the unnamed overload."""
    _import_operator_modules()
    out = set()
    for schema in torch._C._jit_get_all_schemas():
        ns, _, op = schema.name.partition("::")
        if ns in OPERATOR_NAMESPACES and not _touches_files(schema):
            out.add((ns, op, schema.overload_name or "default"))
    # quantized_decomposed is defined from Python (torch.library), not as JIT schemas: its packets
    # know their overloads.
    namespace = torch.ops.quantized_decomposed
    for op in list(getattr(namespace, "_dir", [])):
        for overload in getattr(namespace, op).overloads():
            out.add(("quantized_decomposed", op, overload))
    return frozenset(out)


@functools.lru_cache(maxsize=1)
def _python_functions() -> dict[str, Callable]:
    """Exact name -> callable for every plain function a loaded graph may call."""
    table: dict[str, Callable] = {}
    for name in _OPERATOR_FUNCTIONS:
        table[f"operator.{name}"] = getattr(operator, name)
    for name in _MATH_FUNCTIONS:
        table[f"math.{name}"] = getattr(math, name)
    for name in _BUILTIN_FUNCTIONS:
        table[f"builtins.{name}"] = getattr(builtins, name)
    overridable = {f for fs in torch.overrides.get_overridable_functions().values() for f in fs}
    for mod_name in _TENSOR_FUNCTION_MODULES:
        mod = importlib.import_module(mod_name)
        for name, fn in vars(mod).items():
            if not name.startswith("__") and callable(fn) and _in(fn, overridable):
                table[f"{mod_name}.{name}"] = fn
    for name in _TORCH_EXTRA:
        if hasattr(torch, name):
            table[f"torch.{name}"] = getattr(torch, name)
    table["torch.ops.higher_order.cond"] = torch.ops.higher_order.cond
    table["autoglm.ir.guards.check_guard"] = check_guard
    table.update({old: table[new] for old, new in RENAMED_FUNCTIONS.items()})
    return table


def _in(fn: Any, pool: set) -> bool:
    try:
        return fn in pool
    except TypeError:  # unhashable objects in a namespace
        return False


@functools.lru_cache(maxsize=1)
def _function_names() -> dict[int, str]:
    """id(callable) -> its table name, for saving (the first, shortest spelling wins)."""
    out: dict[int, str] = {}
    for name, fn in sorted(_python_functions().items(), key=lambda kv: (len(kv[0]), kv[0])):
        out.setdefault(id(fn), name)
    return out


@functools.lru_cache(maxsize=1)
def _tensor_methods() -> frozenset[str]:
    overridable = torch.overrides.get_overridable_functions().get(torch.Tensor, [])
    names = {getattr(f, "__name__", "") for f in overridable}
    aten_ops = {op for ns, op, _ in _operator_overloads() if ns == "aten"}
    return frozenset({n for n in names if n and not n.startswith("_") and n in aten_ops} | set(_METHOD_EXTRA))


@functools.lru_cache(maxsize=1)
def _module_classes() -> dict[str, type]:
    """Exact qualified name -> class for every module class a loaded artifact may rebuild."""
    table: dict[str, type] = {}
    for value in vars(torch.nn.modules).values():
        if inspect.ismodule(value) and value.__name__.startswith("torch.nn.modules."):
            for cls in vars(value).values():
                if (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == value.__name__
                        and not cls.__name__.startswith("_")):
                    table[f"{cls.__module__}.{cls.__qualname__}"] = cls
    for cls in _own_module_classes():
        table[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return table


def _own_module_classes() -> list[type]:
    return [Int8Linear, Int8Conv2d, Int8Embedding, CsrLinear, BsrLinear, SemiStructuredLinear]


# ---------------------------------------------------------------- lookups


def _operator(name: str) -> Any | None:
    """``torch.ops.ns.op.overload`` (an overload) or ``torch.ops.ns.op`` (its packet), if registered."""
    parts = name.split(".")
    if len(parts) not in (4, 5) or parts[:2] != ["torch", "ops"]:
        return None
    registered = _operator_overloads()
    if len(parts) == 4:
        ns, op = parts[2:]
        if not any(r[0] == ns and r[1] == op for r in registered):
            return None
        return getattr(getattr(torch.ops, ns), op)
    ns, op, overload = parts[2:]
    if (ns, op, overload) not in registered:
        return None
    # Only now, with the names proven to be a registered operator, ask torch for its object.
    return getattr(getattr(getattr(torch.ops, ns), op), overload)


def _trusted_import(name: str) -> Any:
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            break
        return obj
    raise UnsafeArtifactError(f"cannot resolve call target {name!r}")


def resolve_function(name: str, *, trust_remote_code: bool = False, where: str = "graph") -> Callable:
    """The callable for a saved call target; anything not in the table is refused (see module doc)."""
    if not isinstance(name, str):
        raise UnsafeArtifactError(f"{where}: call target {name!r} is not a name")
    if name.startswith("_operator."):  # torch.export's spelling of the operator module
        name = "operator." + name[len("_operator."):]
    found = _operator(name) if name.startswith("torch.ops.") else None  # higher_order.cond: not an overload
    if found is None:
        found = _python_functions().get(name)
    if found is not None:
        return found
    if trust_remote_code:
        return _trusted_import(name)
    raise UnsafeArtifactError(f"{where} calls {name!r}, which is not in autoglm's table of loadable operators "
                              f"(torch operators and tensor functions, operator/math functions, autoglm's own); "
                              f"refused without running it; {TRUST_HINT}")


def is_loadable_function(fn: Any) -> bool:
    """Is ``fn`` (a live callable on a graph torch built) one the table would resolve?"""
    if isinstance(fn, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return _operator(function_name(fn)) is fn
    return id(fn) in _function_names() and _python_functions()[_function_names()[id(fn)]] is fn


def function_name(fn: Any) -> str:
    """The table name of a callable, for saving; functions outside the table get their import path."""
    if isinstance(fn, torch._ops.OpOverload):
        return f"torch.ops.{fn.namespace}.{fn._opname}.{fn._overloadname}"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return f"torch.ops.{fn._qualified_op_name.replace('::', '.')}"
    known = _function_names().get(id(fn))
    if known is not None:
        return known
    mod = getattr(fn, "__module__", None) or ""
    return f"{mod}.{getattr(fn, '__qualname__', None) or getattr(fn, '__name__', '?')}"


def resolve_method(name: str, *, where: str = "graph") -> str:
    """A ``call_method`` target must be a tensor method of the table."""
    if not isinstance(name, str) or name not in _tensor_methods():
        raise UnsafeArtifactError(f"{where} calls method {str(name)[:80]!r}, which is not a tensor operator "
                                  "in autoglm's table; refused")
    return name


def resolve_module_class(name: str, *, where: str = "artifact") -> type:
    cls = _module_classes().get(name) if isinstance(name, str) else None
    if cls is None:
        raise UnsafeArtifactError(f"{where}: refusing to rebuild module class {str(name)[:120]!r}: not a torch.nn "
                                  "module or one of autoglm's own")
    return cls
