"""Open-AutoGLM: a graph-rewriting compiler for PyTorch built on torch.fx.

    import autoglm
    cm = autoglm.compile(model, (x,), passes="default")
    y = cm(x)

The names below are re-exported lazily (PEP 562): ``import autoglm.runtime.direct``
or any other submodule loads only what that module imports, never the API and
every pass (docs/architecture.md has the layers).
"""
from __future__ import annotations

import importlib
from typing import Any

from autoglm._version import __version__

__all__ = ["compile", "compile_pretrained", "load", "CompiledModel", "Compiled", "CaptureError", "SpecError",
           "GraphPass", "PassContext", "PassResult", "finetune_sparse", "__version__"]

_EXPORTS = {
    "compile": "autoglm.api.entry",
    "load": "autoglm.api.entry",
    "compile_pretrained": "autoglm.api.pretrained",
    "CompiledModel": "autoglm.driver.compiled",
    "Compiled": "autoglm.driver.compiled",
    "CaptureError": "autoglm.capture.errors",
    "SpecError": "autoglm.passes.spec",
    "GraphPass": "autoglm.ir.pass_base",
    "PassContext": "autoglm.ir.pass_base",
    "PassResult": "autoglm.ir.pass_base",
    "finetune_sparse": "autoglm.api.finetune",
}


_SUBPACKAGES = ("ir", "capture", "cost", "loading", "artifacts", "passes", "runtime", "export", "report", "driver",
                "program", "api", "cli")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:  # ``autoglm.passes.REGISTRY`` after a bare ``import autoglm``
        return importlib.import_module(f"autoglm.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'autoglm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
