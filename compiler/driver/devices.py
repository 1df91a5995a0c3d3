"""The ``devices=`` list checked once, before any work, for every entry point.

A device list that cannot be honoured used to be accepted and then quietly
ignored: ``cuda:0`` on a machine without CUDA compiled (and failed, or ran on
CPU, later), ``partition(k=3)`` on two devices put two parts on one device, and
two devices with no partitioning pass ran everything on the first. Each of
those is now an error or a warning that says what to change.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

__all__ = ["DeviceError", "check_devices"]


class DeviceError(ValueError):
    """A device that does not exist here, or a pipeline that does not fit the devices."""


def _check_available(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"devices: {device!r} is not a torch device (e.g. 'cpu', 'cuda:0')") from exc
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"devices: {device!r} asked, but this machine has no usable CUDA device "
                              f"(torch {torch.__version__}, torch.cuda.is_available() is False); use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"devices: {device!r} asked, but this machine has {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1})")
        return
    backend = getattr(torch, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise DeviceError(f"devices: {device!r} is not available on this machine; use 'cpu'")


def _partition_parts(pipeline: Sequence[Any]) -> list[tuple[Any, int]]:
    return [(p, int(p.options.k)) for p in pipeline if getattr(p, "name", "") == "partition"]


def check_devices(devices: Sequence[str], pipeline: Sequence[Any]) -> list[str]:
    """``devices`` as a list, each available here and used by ``pipeline``; raises ``DeviceError``.

    Parts are placed ``devices[p % len(devices)]``; with a single device listed, any ``k``
    is allowed (the parts are pipeline stages for ``autoglm run --nproc K``). With several
    devices listed, a ``k`` above their number would share a device between parts
    without saying so, and is refused."""
    devices = list(devices)
    if not devices or not all(isinstance(d, str) and d.strip() for d in devices):
        raise DeviceError(f"devices must be a non-empty list of device names such as ['cpu', 'cpu'], got {devices!r}")
    for d in dict.fromkeys(devices):
        _check_available(d)
    if len(devices) < 2:
        return devices
    parts = _partition_parts(pipeline)
    for p, k in parts:
        if k > len(devices):
            raise DeviceError(f"{p.spec()} makes {k} parts but devices lists {len(devices)} "
                              f"({', '.join(devices)}): list {k} devices, or use partition(k={len(devices)})")
    if not parts:
        warnings.warn(f"devices lists {len(devices)} devices but no pass partitions the graph, so it runs on "
                      f"{devices[0]} only: add partition(k={len(devices)}) to the passes, or use passes='default'",
                      UserWarning, stacklevel=3)
    return devices
