"""Refusing files whose loading would run code from them: the shared pieces.

``safe_torch_load`` reads pickles with ``torch.load(weights_only=True)``: the
restricted unpickler is an exact allowlist of tensor-rebuilding globals and
stops at any other global before running it; we report which global it was.

``.pt2`` archives are read by ``autoglm.loading.pt2_reader``; the callables a loaded
graph may call are in ``autoglm.loading.op_table``.
"""
from __future__ import annotations

import io
import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator

import torch

__all__ = ["ModelLoadError", "UnsafeFileError", "safe_torch_load", "quiet_torch_export_logs", "first_line",
           "comment_safe", "GLOBAL_RE"]


class ModelLoadError(ValueError):
    """A model or input file cannot be used (missing, corrupted, wrong contents)."""


class UnsafeFileError(ModelLoadError):
    """Reading the file would execute code from it; refused."""


def comment_safe(text: str) -> str:
    """``text`` without any character that could end a generated comment line early (``\r``, form feeds,
    Unicode line separators...): stack traces from files become comments in the code FX generates."""
    return "".join(c for c in text if c == "\n" or c.isprintable())


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
