"""The eager model a Hugging Face artifact was compiled from, rebuilt for comparison (``autoglm run --benchmark``).

An artifact's weights are the rewritten graph's (int8 codes after ``quantize``), so they
cannot be loaded back into the transformers class. The eager model is rebuilt from the
artifact's own copy of ``config.json`` (``hf/``) and the weights of the folder it was
compiled from, read with the same checks as at compile time, and only if that folder
still holds the very same weight files (sha256 recorded at compile time). Otherwise
the caller gets the reason, and measures the artifact alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from autoglm.loading.file_safety import ModelLoadError
from autoglm.loading.hf_folder import inspect_hf_folder, load_hf_config, load_hf_model, weights_fingerprint
from autoglm.loading.hf_tasks import config_for_task

__all__ = ["rebuild_eager"]


def rebuild_eager(artifact_dir: str | os.PathLike, record: dict[str, Any], *,
                  trust_remote_code: bool = False) -> tuple[nn.Module | None, str]:
    """``(model, what it is)``, or ``(None, why not)``."""
    source = record.get("source")
    task = record.get("task")
    if not isinstance(source, str) or not isinstance(task, str):
        return None, "the artifact does not record the folder it was compiled from"
    if not Path(source).is_dir():
        return None, f"the folder it was compiled from, {source}, is gone"
    try:
        folder = inspect_hf_folder(source, trust_remote_code)
        if weights_fingerprint(folder.weights or folder.pickled) != record.get("weights_sha256"):
            return None, f"the weights in {source} changed since the artifact was compiled"
        copied = Path(artifact_dir) / record.get("dir", "hf")
        config = config_for_task(load_hf_config(copied, trust_remote_code), task)
        model, missing = load_hf_model(folder, task, config, trust_remote_code=trust_remote_code)
    except ModelLoadError as exc:
        return None, f"cannot rebuild it: {exc}"
    what = f"{type(model).__name__} from {record.get('dir', 'hf')}/config.json and the weights in {source}"
    if missing:  # same shapes and kernels, so the timing holds; the values are another random draw
        what += f"; {len(missing)} weight(s) the folder lacks initialised at random, as at compile time"
    return model, what
