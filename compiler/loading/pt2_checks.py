"""Checks on the JSON inside a ``torch.export`` archive, before torch reads it.

What ``torch.export.load`` (torch 2.13) would otherwise turn into code, and the
rule here that closes it:

* node targets (and ``as_operator`` arguments) are resolved by attribute walks
  from ``torch``/``operator``/``math`` (``torch.os.system`` would resolve):
  each must be a key of the exact table in ``autoglm.loading.op_table``;
* names (graph values, argument names, parameter/buffer FQNs, forward argument
  names, namedtuple fields) are pasted into the Python source FX generates: each
  must be a plain identifier (FQNs: dotted identifiers or digits);
* every other string must hold no control character, double quote or
  backslash (nothing can close a string literal or end a comment line); stack
  traces keep their newlines but lose every other control character;
* symbolic-shape expressions are ``sympy.sympify``-ed (an ``eval``): each must
  parse to calls of known sympy names with constant arguments;
* ``guards_code`` strings are ``exec``-ed by ``ep.module()``: we never build the
  guard function (``check_guards=False``) and still refuse guards that are not
  plain shape comparisons;
* payload configs may not ask for pickles (``use_pickle``, ``opaque_obj_*``,
  ``custom_obj_*``) unless the user trusts the file.

The checked document is what ``autoglm.loading.pt2_reader`` writes into the archive
torch finally reads, so torch never sees a byte these checks did not pass.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any

from autoglm.loading.file_safety import ModelLoadError, UnsafeFileError
from autoglm.loading.file_safety import comment_safe
from autoglm.ir.treespec import UnsafeTreeSpecError, checked_treespec_text
from autoglm.loading.op_table import TRUST_FLAG, UnsafeArtifactError, resolve_function

__all__ = ["check_model_doc", "check_payload_config", "check_sympy_expr", "check_guard", "MAX_JSON_DEPTH"]

MAX_JSON_DEPTH = 200  # torch.export graphs nest cond subgraphs; real ones stay far below this

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FQN = re.compile(r"([A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*)?\Z")  # "" is the root module
_PLAIN = re.compile(r'[^"\\\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z')
_NAME_KEYS = ("name", "as_name", "user_input_name")
_FQN_KEYS = ("parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn")
_NAME_LIST_KEYS = ("forward_arg_names", "field_names")
_NAMED_DICT_KEYS = ("tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values")
_JSON_TEXT_KEYS = ("in_spec", "out_spec")  # treespecs: JSON text checked by autoglm.ir.treespec

_SYMBOL_RE = re.compile(r"^[a-z]{1,3}\d+$")
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not", "floor", "ceiling", "Piecewise", "ITE", "true", "false", "oo", "zoo", "nan", "Infinity",
    "NegativeInfinity", "BooleanTrue", "BooleanFalse", "Half", "One", "Zero", "NegativeOne", "int_oo", "IntInfinity",
    "NegativeIntInfinity", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "ToFloat", "Identity",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "True", "False",
}
_GUARD_ATTRS = {"size", "stride", "storage_offset", "isnan", "inf", "numel", "dim"}


def _safe_constant(v: Any) -> bool:
    if isinstance(v, str):  # names and dict keys only: no quotes, dots or dunders
        return re.fullmatch(r"[A-Za-z0-9_ ]*", v) is not None and "__" not in v
    return isinstance(v, (int, float, bool)) or v is None


def check_sympy_expr(text: str) -> None:
    """Symbolic shapes arrive as ``sympy.srepr`` text that torch ``sympify``s (an ``eval``)."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ModelLoadError(f"symbolic shape expression {text[:60]!r} does not parse") from exc
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.Load, ast.keyword, ast.BinOp, ast.UnaryOp, ast.Compare,
                               ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop, ast.boolop))
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES
        elif isinstance(node, ast.Name):
            ok = node.id in _SYMPY_NAMES or bool(_SYMBOL_RE.match(node.id))
        elif isinstance(node, ast.Constant):
            ok = _safe_constant(node.value)
        if not ok:
            raise UnsafeFileError(f"symbolic shape expression {text[:80]!r} contains "
                                  f"{type(node).__name__} code, not a shape formula; refused")


def check_guard(text: str) -> None:
    """Guards are Python source torch would ``exec``; accept only shape comparisons."""
    if any(c in text for c in '"\\\n'):
        raise UnsafeFileError(f"guard {text[:80]!r} contains quote/escape characters; refused")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise UnsafeFileError(f"guard {text[:80]!r} is not a Python expression; refused") from exc
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp,
                               ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.Subscript, ast.Call))
        if isinstance(node, ast.Name):
            ok = node.id in ("L", "math") or node.id in _SYMPY_NAMES
        elif isinstance(node, ast.Attribute):
            ok = node.attr in _GUARD_ATTRS
        elif isinstance(node, ast.Constant):
            ok = _safe_constant(node.value)
        if not ok:
            raise UnsafeFileError(f"guard {text[:80]!r} contains {type(node).__name__} code, "
                                  "not a shape check; refused")


def _refuse(entry: str, what: str, value: Any) -> UnsafeFileError:
    return UnsafeFileError(f"{entry}: {what} {str(value)[:80]!r} is not allowed in a graph file; refused")


def _check_string(entry: str, key: str, value: str, trusted: bool) -> str:
    """The rule for one string under ``key`` (see module doc); returns the value torch will read."""
    if key == "stack_trace":
        return comment_safe(value)
    if key in _JSON_TEXT_KEYS:
        try:  # torch reads what this returns: only type look-ups, no imports (autoglm.ir.treespec)
            return checked_treespec_text(value, f"{entry}: {key}")
        except UnsafeTreeSpecError as exc:
            raise UnsafeFileError(f"{exc}; refused; if you trust this file, {TRUST_FLAG}") from exc
    if not _PLAIN.match(value):
        raise _refuse(entry, f"string under {key!r}", value)
    if key in ("target", "as_operator"):
        try:
            resolve_function(value, trust_remote_code=trusted, where=entry)
        except UnsafeArtifactError as exc:
            raise UnsafeFileError(str(exc)) from exc
    elif key in _NAME_KEYS and not _IDENT.match(value):
        raise _refuse(entry, key, value)
    elif key in _FQN_KEYS and not _FQN.match(value):
        raise _refuse(entry, key, value)
    elif key == "expr_str":
        check_sympy_expr(value)
    return value


def _check_key(entry: str, parent: str, key: Any) -> None:
    if not isinstance(key, str) or not _PLAIN.match(key):
        raise _refuse(entry, "key", key)
    if parent in _NAMED_DICT_KEYS and not _IDENT.match(key):
        raise _refuse(entry, f"name in {parent}", key)


def _walk(doc: Any, entry: str, trusted: bool) -> None:
    """Check every string of ``doc`` in place (stack traces are cleaned), iteratively with a depth cap."""
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        cur, parent, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ModelLoadError(f"{entry} nests deeper than {MAX_JSON_DEPTH} levels; refused")
        items = cur.items() if isinstance(cur, dict) else enumerate(cur) if isinstance(cur, list) else ()
        for key, value in list(items):
            key_name = key if isinstance(cur, dict) else parent
            if isinstance(cur, dict):
                _check_key(entry, parent, key)
            if isinstance(value, str):
                if key_name in _NAME_LIST_KEYS and not _IDENT.match(value):
                    raise _refuse(entry, key_name, value)
                cur[key] = _check_string(entry, key_name, value, trusted)
            elif isinstance(value, (dict, list)):
                stack.append((value, key_name, depth + 1))


def check_model_doc(doc: Any, entry: str, *, trusted: bool = False) -> None:
    """Check (and clean, in place) one ``models/<name>.json`` document; see the module doc."""
    if not isinstance(doc, dict) or "graph_module" not in doc:
        raise ModelLoadError(f"{entry} is not an exported program (no graph_module)")
    guards = doc.get("guards_code") or []
    doc["guards_code"] = []  # walked separately: guards are checked as expressions, not as plain strings
    _walk(doc, entry, trusted)
    for name in (doc.get("range_constraints") or {}):
        if not _SYMBOL_RE.match(str(name)):
            raise UnsafeFileError(f"range constraint on {str(name)[:60]!r}, which is not a shape symbol; refused")
    for guard in guards:
        check_guard(str(guard))
    doc["guards_code"] = guards


def check_payload_config(doc: Any, entry: str, payloads: set[str], *, trusted: bool = False) -> None:
    """A weights/constants config: FQN -> payload file of this folder; pickled payloads need trust."""
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{entry} is not a payload config")
    _walk(doc, entry, trusted)
    for fqn, meta in config.items():
        if not _FQN.match(fqn) or not isinstance(meta, dict):
            raise _refuse(entry, "tensor name", fqn)
        path_name = str(meta.get("path_name", ""))
        pickled = meta.get("use_pickle") or path_name.startswith(("opaque_obj_", "custom_obj_"))
        if pickled and not trusted:
            raise UnsafeFileError(f"{entry}: {fqn!r} is stored as a pickled Python/TorchScript object "
                                  f"({path_name}); unpickling it could run code from the file, so it is refused; "
                                  f"if you trust this file, {TRUST_FLAG}")
        if path_name not in payloads:
            raise ModelLoadError(f"{entry}: payload {path_name[:60]!r} of {fqn!r} is missing from the archive")
