"""Capture errors that name the user's source line."""
from __future__ import annotations

import traceback

__all__ = ["CaptureError", "user_frame"]

_INTERNAL = ("/torch/", "/autoglm/", "/compiler/", "/site-packages/", "<frozen", "/transformers/")


def user_frame(skip_internal: bool = True) -> str:
    """``file:line: code`` of the innermost frame that belongs to user code."""
    for frame in reversed(traceback.extract_stack()):
        fname = frame.filename.replace("\\", "/")
        if skip_internal and any(part in fname for part in _INTERNAL):
            continue
        return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return "<unknown source>"


class CaptureError(RuntimeError):
    """No frontend could capture the model; ``reasons`` maps frontend -> reason."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None, source: str = ""):
        self.reasons = dict(reasons or {})
        self.source = source
        lines = [message]
        for name, why in self.reasons.items():
            lines.append(f"  {name}: {why}")
        if source:
            lines.append(f"  at {source}")
        super().__init__("\n".join(lines))
