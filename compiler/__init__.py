"""Open-AutoGLM: a graph-rewriting compiler for PyTorch built on torch.fx.

    import autoglm
    cm = autoglm.compile(model, (x,), passes="default")
    y = cm(x)
"""
from __future__ import annotations

__version__ = "0.1.0"

# Order matters: the IR helpers have no dependency on the rest of the package and
# the passes import them while this package is still initialising.
from autoglm.ir.pass_base import GraphPass, PassContext, PassResult  # noqa: E402
from autoglm.capture import CaptureError  # noqa: E402
from autoglm.spec import SpecError  # noqa: E402
from autoglm.compiled import CompiledModel  # noqa: E402
from autoglm.api import compile, load  # noqa: E402
from autoglm.finetune import finetune_sparse  # noqa: E402

__all__ = ["compile", "load", "CompiledModel", "CaptureError", "SpecError", "GraphPass", "PassContext",
           "PassResult", "finetune_sparse", "__version__"]
