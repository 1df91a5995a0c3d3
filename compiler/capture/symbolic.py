"""The ``symbolic`` frontend: a ``torch.fx.Tracer`` with readable leaves.

``torch.nn`` layers stay ``call_module`` so the graph reads like the model. The
``to_bool``/``iter``/``length`` hooks are where data-dependent control flow
surfaces; plain capture refuses it with the user's source line (branch-aware
capture subclasses this tracer and records a guard instead). Functions that
libraries mark ``torch.fx.wrap`` are traced through (``capture/wrapped.py``).
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch.fx.proxy import Attribute, Proxy

from autoglm.capture.errors import CaptureError, user_frame
from autoglm.capture.wrapped import wrapped_functions_inlined

__all__ = ["AutoglmTracer", "LengthHook", "TracedAttribute", "TracedProxy", "symbolic_capture"]


# Where the modules our passes create live; models shipped in autoglm (the demo)
# are ordinary models and are traced through.
_REWRITTEN_MODULE_PACKAGES = ("autoglm.ir.", "autoglm.passes.", "autoglm.runtime.")


class LengthHook:
    """``len(proxy)`` goes to the tracer's ``length`` hook, as ``bool(proxy)`` goes to ``to_bool``.

    Plain FX raises a RuntimeError in ``Proxy.__len__``, which is not a branch
    failure, so ``if len(x.shape) == 4:`` sent detection models to the export
    frontend (and any data-dependent branch there made capture fail). ``x.shape``
    is an ``Attribute`` proxy, so attributes need the hook too.
    """

    tracer: Any

    def __len__(self) -> int:
        return self.tracer.length(self)

    def __getattr__(self, k: str) -> Any:
        return TracedAttribute(self, k)  # type: ignore[arg-type]


class TracedProxy(LengthHook, Proxy):
    pass


class TracedAttribute(LengthHook, Attribute):
    pass


class AutoglmTracer(fx.Tracer):
    # True: trace through non-torch functions marked torch.fx.wrap (their call would
    # name library code in the graph, which loading refuses; capture/wrapped.py).
    inline_wrapped_functions = True

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        # Buffers are read through get_attr at run time, not baked in as their
        # trace-time values: a module that updates a buffer in forward must see
        # the update on the next call.
        self.proxy_buffer_attributes = True

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if not self.inline_wrapped_functions:
            return super().trace(root, concrete_args)
        with wrapped_functions_inlined():
            return super().trace(root, concrete_args)

    def proxy(self, node: fx.Node) -> Proxy:
        return TracedProxy(node, self)

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

    def length(self, obj: fx.Proxy) -> int:
        # A rank (len(x.shape)) or a size (len(x) is x.size(0)) can change between calls:
        # answering it here would freeze it, so it is a branch point (a guard) instead.
        raise CaptureError(
            "data-dependent length: the model takes len() of a traced value (a shape's rank or a tensor's size)",
            source=user_frame(),
        )


def symbolic_capture(root: nn.Module, tracer: AutoglmTracer | None = None) -> fx.GraphModule:
    tracer = tracer or AutoglmTracer()
    graph = tracer.trace(root)
    gm = fx.GraphModule(tracer.root, graph, root.__class__.__name__)
    return gm
