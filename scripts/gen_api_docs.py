"""Write docs/api.md, the API reference, from the public objects' signatures and docstrings.

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 when docs/api.md is out of date

tests/test_api_docs.py runs the check and fails on a public function or method
without a docstring, so the reference cannot drift from the code.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

# (section title, [(import path, object name)]): what a user calls, in the order they meet it.
SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Compile and load", [("autoglm.api.entry", "compile"), ("autoglm.api.pretrained", "compile_pretrained"),
                          ("autoglm.api.entry", "load")]),
    ("The compiled model", [("autoglm.driver.compiled", "CompiledModel")]),
    ("torch.compile backend", [("autoglm.api.backend", "autoglm_backend"), ("autoglm.api.backend", "make_backend")]),
    ("Branching models", [("autoglm.program.program", "Program")]),
    ("ONNX export", [("autoglm.export.onnx.export", "export_onnx"), ("autoglm.export.onnx.export", "ExportOptions")]),
    ("Report", [("autoglm.report", "write_report"), ("autoglm.report", "measure_against_eager")]),
    ("Writing a pass", [("autoglm.ir.pass_base", "GraphPass"), ("autoglm.ir.pass_base", "PassContext"),
                        ("autoglm.ir.pass_base", "PassResult")]),
    ("Sparse fine-tuning", [("autoglm.api.finetune", "finetune_sparse")]),
    ("Errors", [("autoglm.capture.errors", "CaptureError"), ("autoglm.passes.spec", "SpecError"),
                ("autoglm.ir.pass_base", "PassError"), ("autoglm.driver.devices", "DeviceError"),
                ("autoglm.export.onnx.check", "OnnxExportError"), ("autoglm.export.onnx.check", "OnnxParityError")]),
]


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def _signature(name: str, obj: Any) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return name
    # Annotations are strings under `from __future__ import annotations`: print them as written.
    text = re.sub(r": '([^']*)'", r": \1", text)
    text = re.sub(r" -> '([^']*)'$", r" -> \1", text)
    return f"{name}{text}"


def _public_members(cls: type) -> list[tuple[str, Any]]:
    """Methods and properties a user calls: defined in the package, not private, not inherited from object."""
    out = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name != "__call__":
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property) or inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod)):
            owner = next((k for k in cls.__mro__ if name in vars(k)), None)
            if owner is not None and owner.__module__.startswith("autoglm"):
                out.append((name, raw))
    return out


def missing_docstrings() -> list[str]:
    """Public objects and members in the reference that have no docstring."""
    missing = []
    for _, items in SECTIONS:
        for module, name in items:
            obj = getattr(importlib.import_module(module), name)
            if not _doc(obj):
                missing.append(f"{module}.{name}")
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for member, raw in _public_members(obj):
                    fn = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
                    if not _doc(fn):
                        missing.append(f"{module}.{name}.{member}")
    return missing


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python scripts/gen_api_docs.py` (a test checks it is current).",
             "Everything here is importable as shown; `import autoglm` re-exports `compile`, `compile_pretrained`,",
             "`load`, `CompiledModel`, the pass base classes and the errors.", ""]
    for title, items in SECTIONS:
        lines += [f"## {title}", ""]
        for module, name in items:
            obj = getattr(importlib.import_module(module), name)
            kind = "class" if inspect.isclass(obj) else "function"
            lines += [f"### `{module}.{name}`", "", "```python", f"{kind} {_signature(name, obj)}", "```", "",
                      _doc(obj) or "(no docstring)", ""]
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for member, raw in _public_members(obj):
                    if isinstance(raw, property):
                        head, fn = f"{name}.{member}  (property)", raw.fget
                    else:
                        fn = getattr(raw, "__func__", raw)
                        head = _signature(f"{name}.{member}", fn).replace("(self, ", "(").replace("(self)", "()")
                    lines += [f"#### `{head}`", "", _doc(fn) or "(no docstring)", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
