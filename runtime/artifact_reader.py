"""Read a saved artifact's graph at the IR level, for processes that run it (pipeline workers).

One reader for every process: this goes through ``autoglm.artifacts.directory.load_artifact``
(version check, bounded readers, the exact op table), not a copy of it. Only the
flat graph comes back: the caller passes flat tensors.
"""
from __future__ import annotations

import os

import torch
import torch.fx as fx

from autoglm.artifacts.directory import ArtifactError, load_artifact

__all__ = ["ArtifactReadError", "read_graph_module", "read_example_inputs"]

ArtifactReadError = ArtifactError  # the name pipeline workers used before the readers were unified


def read_graph_module(artifact_dir: str | os.PathLike) -> fx.GraphModule:
    return load_artifact(artifact_dir)[0]


def read_example_inputs(artifact_dir: str | os.PathLike) -> list[torch.Tensor]:
    return load_artifact(artifact_dir)[2]
