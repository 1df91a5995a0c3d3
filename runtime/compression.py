"""Compression of tensors that cross a partition boundary (the notes' communication control).

Lossy and opt-in: ``"none"`` (default), ``"fp16"`` (half the bytes of fp32) or
``"int8"`` (a quarter, symmetric per-tensor scale: ``q = round(x / s)``,
``s = max|x| / 127``). Only floating tensors are compressed; integer and bool
tensors travel as they are. ``BoundaryStats`` counts bytes before and after so
the executor can report what was saved; the error is measured by the caller
against uncompressed outputs (``sqnr_db``).

    payload = compress(x, "int8")      # CompressedTensor(q int8, scale, dtype)
    y = decompress(payload)            # ~x
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from autoglm.ir.metrics import sqnr_db

__all__ = ["MODES", "CompressedTensor", "BoundaryStats", "compress", "decompress", "payload_nbytes", "sqnr_db",
           "check_mode"]

MODES = ("none", "fp16", "int8")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"compression must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@dataclass
class CompressedTensor:
    data: torch.Tensor  # fp16 or int8
    scale: torch.Tensor | None  # int8 only: 0-d fp32
    dtype: torch.dtype  # the original dtype

    @property
    def nbytes(self) -> int:
        extra = self.scale.element_size() if self.scale is not None else 0
        return self.data.numel() * self.data.element_size() + extra

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CompressedTensor":
        scale = self.scale.to(device, non_blocking=non_blocking) if self.scale is not None else None
        return CompressedTensor(self.data.to(device, non_blocking=non_blocking), scale, self.dtype)


class BoundaryStats:
    """Bytes that crossed boundaries, before and after compression (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.raw_bytes = 0
        self.sent_bytes = 0
        self.transfers = 0

    def add(self, raw: int, sent: int) -> None:
        with self._lock:
            self.raw_bytes += raw
            self.sent_bytes += sent
            self.transfers += 1

    @property
    def saved_bytes(self) -> int:
        return self.raw_bytes - self.sent_bytes

    def to_json(self) -> dict[str, int]:
        return {"raw_bytes": self.raw_bytes, "sent_bytes": self.sent_bytes, "saved_bytes": self.saved_bytes,
                "transfers": self.transfers}


def compress(t: torch.Tensor, mode: str) -> torch.Tensor | CompressedTensor:
    if mode == "none" or not t.is_floating_point():
        return t
    if mode == "fp16":
        return CompressedTensor(t.to(torch.float16), None, t.dtype)
    if mode == "int8":
        amax = t.detach().abs().max().float() if t.numel() else torch.tensor(0.0)
        scale = torch.clamp(amax / 127.0, min=torch.finfo(torch.float32).tiny)
        q = torch.clamp(torch.round(t.float() / scale), -127, 127).to(torch.int8)
        return CompressedTensor(q, scale, t.dtype)
    raise ValueError(f"compression must be one of {', '.join(MODES)}, got {mode!r}")


def decompress(payload: Any) -> Any:
    if not isinstance(payload, CompressedTensor):
        return payload
    if payload.scale is None:
        return payload.data.to(payload.dtype)
    return (payload.data.float() * payload.scale).to(payload.dtype)


def payload_nbytes(payload: Any) -> int:
    if isinstance(payload, CompressedTensor):
        return payload.nbytes
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    return 0
