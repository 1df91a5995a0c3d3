"""Refusing files whose loading would run code from them.

``safe_torch_load`` reads pickles with ``torch.load(weights_only=True)``: the
restricted unpickler stops at any global outside torch's tensor allowlist
before running it, and we report which global it was.

``check_pt2_archive`` checks a ``torch.export.save`` archive before torch reads it.
What ``torch.export.load`` (torch 2.13) would otherwise execute, and how each is
closed here (``check_pt2_archive``):

* ``data/sample_inputs/*.pt`` go through ``deserialize_torch_artifact``, which
  falls back to ``torch.load(weights_only=False)`` when the safe load fails;
  weights/constants with ``use_pickle`` use ``weights_only=False`` directly.
  We require every such payload to load with ``weights_only=True`` first (the
  restricted unpickler refuses any global outside torch's tensor allowlist
  without running it), so torch's unsafe paths only ever see proven-safe bytes.
* ``opaque_obj_*`` constants are ``pickle.loads``-ed and ``custom_obj_*`` are
  TorchScript-pickled: refused.
* ``data/aotinductor/`` holds compiled shared libraries: refused.
* Node targets are resolved by ``getattr`` from ``torch``/``operator``/``math``
  (``torch.os.system`` would resolve): only ``torch.ops.*`` operators, the
  ``operator``/``math`` functions and ``torch.sym_*`` are accepted, checked in the
  JSON and again on the loaded graph.
* Symbolic-shape expressions are ``sympy.sympify``-ed (which ``eval``s): each must
  parse to calls of known sympy names with constant arguments.
* ``guards_code`` strings are ``exec``-ed by ``ep.module()``: we never build the
  guard function (``check_guards=False``) and still refuse guards that are not
  plain shape comparisons.
* Unknown archive entries and the pre-2.8 archive layout (which torch reads
  with an unpickling fallback) are refused.
"""
from __future__ import annotations

import ast
import io
import json
import logging
import math
import operator
import re
import zipfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

__all__ = ["ModelLoadError", "UnsafeFileError", "safe_torch_load", "check_pt2_archive", "allowed_callable",
           "quiet_torch_export_logs", "first_line", "GLOBAL_RE"]


class ModelLoadError(ValueError):
    """A model or input file cannot be used (missing, corrupted, wrong contents)."""


class UnsafeFileError(ModelLoadError):
    """Reading the file would execute code from it; refused."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def safe_torch_load(data: bytes, what: str) -> Any:
    """``torch.load(weights_only=True)``: refuses (does not run) any non-tensor global."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        found = GLOBAL_RE.search(str(exc))
        if found:  # the restricted unpickler stopped at a global it does not allow, before running it
            raise UnsafeFileError(
                f"{what} is a pickle that needs more than tensors to load (it references {found.group(1)}); "
                "unpickling it could run code from the file, so it is refused"
            ) from exc
        reason = "the weights-only unpickler rejected it" if "Weights only" in str(exc) else first_line(exc)
        raise ModelLoadError(f"{what} is not a readable PyTorch file (corrupted, or not written by torch.save: "
                             f"{reason})") from exc


# ---------------------------------------------------------------- .pt2 checks

_OPERATOR_NAMES = {n for n in dir(operator) if not n.startswith("_")}
_MATH_NAMES = {n for n in dir(math) if not n.startswith("_")}
_TORCH_OPS_RE = re.compile(r"^torch\.ops(\.(?!__)[A-Za-z_]\w*){2,3}$")
_TORCH_SYM_RE = re.compile(r"^torch\._?sym_\w+$")
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
_EXPECTED_ENTRIES = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_ALLOWED_DIRS = ("models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/")


def _allowed_target(target: str) -> bool:
    if _TORCH_OPS_RE.match(target) or _TORCH_SYM_RE.match(target):
        return True
    head, _, name = target.partition(".")
    return (head == "_operator" and name in _OPERATOR_NAMES) or (head == "math" and name in _MATH_NAMES)


def _safe_constant(v: Any) -> bool:
    if isinstance(v, str):  # names and dict keys only: no quotes, dots or dunders
        return re.fullmatch(r"[A-Za-z0-9_ ]*", v) is not None and "__" not in v
    return isinstance(v, (int, float, bool)) or v is None


def _check_sympy_expr(text: str) -> None:
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


def _check_guard(text: str) -> None:
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


def _walk_json(obj: Any, visit: Callable[[str, Any], None]) -> None:
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                visit(k, v)
                stack.append(v)
        elif isinstance(cur, list):
            stack.extend(cur)


def _check_model_json(doc: Any, entry: str) -> None:
    if not isinstance(doc, dict) or "graph_module" not in doc:
        raise ModelLoadError(f"{entry} is not an exported program (no graph_module)")

    def visit(key: str, value: Any) -> None:
        if key == "target" and isinstance(value, str) and not _allowed_target(value):
            raise UnsafeFileError(f"graph calls {value!r}, which is not a torch operator; refused")
        if key == "expr_str" and isinstance(value, str):
            _check_sympy_expr(value)

    _walk_json(doc, visit)
    for name in (doc.get("range_constraints") or {}):
        if not _SYMBOL_RE.match(str(name)):
            raise UnsafeFileError(f"range constraint on {str(name)[:60]!r}, which is not a shape symbol; refused")
    for guard in doc.get("guards_code") or []:
        _check_guard(str(guard))


def _check_payload_config(zf: zipfile.ZipFile, root: str, config_path: str, base_dir: str, what: str) -> None:
    try:
        config = json.loads(zf.read(root + config_path)).get("config", {})
    except (KeyError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{config_path} in the archive is missing or not valid JSON") from exc
    for fqn, meta in config.items():
        path_name = str(meta.get("path_name", ""))
        if path_name.startswith(("opaque_obj_", "custom_obj_")):
            raise UnsafeFileError(f"{what} {fqn!r} is a pickled Python/TorchScript object ({path_name}); "
                                  "unpickling it could run code from the file, so it is refused")
        if meta.get("use_pickle"):
            try:
                blob = zf.read(root + base_dir + path_name)
            except KeyError as exc:
                raise ModelLoadError(f"{what} {fqn!r}: payload {path_name} missing from the archive") from exc
            safe_torch_load(blob, f"{what} {fqn!r} in the archive")


def check_pt2_archive(data: bytes, label: str = "archive") -> None:
    """Refuse a ``torch.export`` archive whose loading would run code from it (see module doc)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"{label} is not a torch.export archive (not a readable zip file)") from exc
    if not names:
        raise ModelLoadError(f"{label} is an empty zip file, not a torch.export archive")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not all("/" in n for n in names):
        raise ModelLoadError(f"{label} is not a torch.export archive (expected one top-level folder)")
    root = roots.pop() + "/"
    rel = [n[len(root):] for n in names]
    if any(r.startswith("data/aotinductor/") for r in rel):
        raise UnsafeFileError(f"{label} contains AOTInductor compiled code (shared libraries that would be loaded "
                              "and run); refused. Save with torch.export.save instead of aoti_compile_and_package")
    if "archive_format" not in rel or "archive_version" not in rel:
        raise ModelLoadError(f"{label} is not a torch.export archive (no archive_format/archive_version); "
                             "older layouts are refused because torch reads them by unpickling")
    try:
        fmt, version = zf.read(root + "archive_format").decode(), zf.read(root + "archive_version").decode()
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise ModelLoadError(f"{label} is a damaged zip archive ({first_line(exc)})") from exc
    if fmt.strip() != "pt2":
        raise ModelLoadError(f"{label}: archive_format is {fmt[:20]!r}, expected 'pt2'")
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    if version.strip() != ARCHIVE_VERSION_VALUE:
        raise ModelLoadError(f"{label}: archive version {version[:20]!r} is not {ARCHIVE_VERSION_VALUE!r} "
                             f"(saved by another torch version; re-export with torch {torch.__version__})")
    unexpected = [r for r in rel if r not in _EXPECTED_ENTRIES and not r.startswith(_ALLOWED_DIRS)]
    if unexpected:
        raise UnsafeFileError(f"{label} has unexpected entries ({', '.join(unexpected[:3])}) that torch may "
                              "execute or unpickle; refused")
    models = [r[len("models/"):-len(".json")] for r in rel if r.startswith("models/") and r.endswith(".json")]
    if not models:
        raise ModelLoadError(f"{label} holds no exported program (no models/*.json)")
    for name in models:
        try:
            doc = json.loads(zf.read(f"{root}models/{name}.json"))
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ModelLoadError(f"{label}: graph models/{name}.json is corrupted ({first_line(exc)})") from exc
        _check_model_json(doc, f"models/{name}.json")
        for legacy in (f"data/weights/{name}.pt", f"data/constants/{name}.pt"):
            if legacy in rel:
                safe_torch_load(zf.read(root + legacy), f"{label}: {legacy}")
        sample = f"data/sample_inputs/{name}.pt"
        if sample in rel:
            safe_torch_load(zf.read(root + sample), f"{label}: {sample}")
        if f"data/weights/{name}_weights_config.json" in rel:
            _check_payload_config(zf, root, f"data/weights/{name}_weights_config.json", "data/weights/", "weight")
        if f"data/constants/{name}_constants_config.json" in rel:
            _check_payload_config(zf, root, f"data/constants/{name}_constants_config.json", "data/constants/",
                                  "constant")


@contextmanager
def quiet_torch_export_logs() -> Iterator[None]:
    """torch logs load failures with full tracebacks; we report one line instead."""
    names = ["torch.export", "torch.export.pt2_archive._package", "torch._export.serde.serialize"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def allowed_callable(target: Any) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return True
    if getattr(operator, getattr(target, "__name__", ""), None) is target:
        return True
    if getattr(math, getattr(target, "__name__", ""), None) is target:
        return True
    name = getattr(target, "__name__", "")
    return bool(name) and _TORCH_SYM_RE.match(f"torch.{name}") is not None and getattr(torch, name, None) is target
