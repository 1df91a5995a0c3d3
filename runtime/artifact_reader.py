"""Read a saved artifact's graph at the IR level, for processes that run it (pipeline workers).

The runtime may not import autoglm's API (``autoglm.load``), so this reads the
artifact directory directly: ``graph.json`` through ``autoglm.graph_io`` (the
IR-level, allowlisted JSON serialisation, no pickle) and the tensors through
safetensors. Only the flat graph comes back: the caller passes flat tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.fx as fx
from safetensors.torch import load_file

from autoglm.graph_io import graph_from_json

__all__ = ["ArtifactReadError", "read_graph_module", "read_example_inputs"]


class ArtifactReadError(ValueError):
    """The directory is not a readable autoglm artifact."""


def read_graph_module(artifact_dir: str | os.PathLike) -> fx.GraphModule:
    root = Path(artifact_dir)
    if not (root / "graph.json").is_file():
        raise ArtifactReadError(f"{root} is not an autoglm artifact (no graph.json); create one with cm.save(dir)")
    doc = json.loads((root / "graph.json").read_text())
    tensors = load_file(str(root / "weights.safetensors"))
    for alias, name in doc.get("aliases", {}).items():
        tensors[alias] = tensors[name]
    return graph_from_json(doc["graph"], tensors)


def read_example_inputs(artifact_dir: str | os.PathLike) -> list[torch.Tensor]:
    root = Path(artifact_dir)
    doc = json.loads((root / "graph.json").read_text())
    stored = load_file(str(root / "example_inputs.safetensors"))
    return [stored[f"input_{i}"] for i in range(int(doc["num_inputs"]))]
