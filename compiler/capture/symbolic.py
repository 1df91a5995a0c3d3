"""The ``symbolic`` frontend: a ``torch.fx.Tracer`` with readable leaves.

``torch.nn`` layers stay ``call_module`` so the graph reads like the model. The
``to_bool``/``iter`` hooks are where data-dependent control flow surfaces;
plain capture refuses it with the user's source line (branch-aware capture
subclasses this tracer and records a guard instead).
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn

from autoglm.capture.errors import CaptureError, user_frame

__all__ = ["AutoglmTracer", "symbolic_capture"]


# Where the modules our passes create live; models shipped in autoglm (the demo)
# are ordinary models and are traced through.
_REWRITTEN_MODULE_PACKAGES = ("autoglm.ir.", "autoglm.passes.", "autoglm.runtime.")


class AutoglmTracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        # Buffers are read through get_attr at run time, not baked in as their
        # trace-time values: a module that updates a buffer in forward must see
        # the update on the next call.
        self.proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m).__module__.startswith(_REWRITTEN_MODULE_PACKAGES):
            return True  # our own rewritten modules (fused, quantized, sparse) stay opaque
        return super().is_leaf_module(m, module_qualified_name)

    def to_bool(self, obj: fx.Proxy) -> bool:
        raise CaptureError(
            "data-dependent control flow: the model branches on a tensor value",
            source=user_frame(),
        )

    def iter(self, obj: fx.Proxy) -> Any:
        raise CaptureError(
            "data-dependent iteration: the model iterates over a tensor whose length is traced",
            source=user_frame(),
        )


def symbolic_capture(root: nn.Module, tracer: AutoglmTracer | None = None) -> fx.GraphModule:
    tracer = tracer or AutoglmTracer()
    graph = tracer.trace(root)
    gm = fx.GraphModule(tracer.root, graph, root.__class__.__name__)
    return gm
