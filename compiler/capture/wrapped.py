"""Trace through functions that libraries mark ``torch.fx.wrap``.

``torch.fx.wrap`` registers a module-level function in
``torch.fx._symbolic_trace._wrapped_fns_to_patch`` (keyed by the defining
module's globals and the name); every ``Tracer.trace`` then patches that global
with a wrapper that records one opaque ``call_function`` node instead of tracing
the body. torchvision does this for ``stochastic_depth``, swin's
``_get_relative_position_bias``, ``_patch_merging_pad``... for its own FX tools.

Such a node names library code, which the loader's op table rightly refuses
(loading never imports what a file names, docs/security.md), so the artifact
saved but did not load. Our traces take those registrations out while they run,
so the body is traced like any other Python code and the graph holds only
torch operations. If the body cannot be traced symbolically, the symbolic
frontend fails and capture moves on to ``torch.export``, which ignores wraps.

Kept as leaves (not taken out): builtins wrapped by name (``torch.fx.wrap("len")``:
no Python body; the op table lists them) and torch's own registrations.
"""
from __future__ import annotations

import builtins
import threading
import types
from contextlib import contextmanager
from typing import Any, Iterator

from torch.fx import _symbolic_trace

__all__ = ["wrapped_functions_inlined"]

# The registry is process-global, like the Module.__call__ patch every FX trace
# makes; one of our traces at a time edits it (re-entrant: a trace inside a trace).
_LOCK = threading.RLock()


def _inlinable(frame_dict: dict[str, Any], name: str) -> bool:
    """A Python function defined outside torch: its body can be traced instead."""
    fn = frame_dict.get(name, getattr(builtins, name, None))
    if not isinstance(fn, types.FunctionType):
        return False  # a builtin (len, ...) or a callable object: stays a leaf
    module = getattr(fn, "__module__", "") or ""
    return module != "torch" and not module.startswith("torch.")


@contextmanager
def wrapped_functions_inlined() -> Iterator[None]:
    """While active, ``Tracer.trace`` traces through non-torch ``torch.fx.wrap`` functions."""
    with _LOCK:
        table = _symbolic_trace._wrapped_fns_to_patch
        removed = {key: frame for key, frame in list(table.items()) if _inlinable(frame, key[1])}
        for key in removed:
            del table[key]
        try:
            yield
        finally:
            for key, frame in removed.items():
                table.setdefault(key, frame)  # a wrap registered meanwhile (an import) stays as it is
