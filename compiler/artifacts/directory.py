"""Artifact directories: ``cm.save(dir)`` / ``autoglm.load(dir)``.

Layout::

    dir/
      graph.json               the graph, modules and signature (no code, no pickle)
      weights.safetensors      every tensor the graph reads
      example_inputs.safetensors
      config.json              the effective passes/options/devices and versions
      code.py                  the generated forward, for people to read (never executed)

Written into a staging folder and swapped into place (``atomic.py``), so a failure
never leaves a half-written artifact.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from autoglm.artifacts.atomic import replace_dir, staging_dir
from autoglm.artifacts.graph_json import UnsafeArtifactError, graph_from_json, graph_to_json
from autoglm.capture.flat import FlatSignature
from autoglm.ir.treespec import UnsafeTreeSpecError
from autoglm.loading.bounded_read import loads_json, read_user_file, require_regular_file

__all__ = ["ARTIFACT_VERSION", "save_artifact", "load_artifact", "versions", "ArtifactError",
           "read_artifact_json", "read_artifact_tensors"]

ARTIFACT_VERSION = 1
# Our own files nest by module depth (two levels per submodule) and argument structure; far below this.
ARTIFACT_JSON_DEPTH = 256


class ArtifactError(ValueError):
    """The directory is not a readable autoglm artifact."""


def versions() -> dict[str, str]:
    from autoglm._version import __version__

    out = {"autoglm": __version__, "torch": torch.__version__,
           "python": platform.python_version()}
    for mod in ("onnx", "onnxruntime", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one copy, record aliases."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in tensors.items():
        t = t.detach()
        if t.layout != torch.strided or t.is_quantized:
            raise TypeError(f"tensor {name!r} has layout {t.layout}; its module must implement __autoglm_save__")
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        out[name] = t.contiguous().cpu().clone() if not t.is_contiguous() or _shares(t, out) else t.cpu()
    return out, aliases


def _shares(t: torch.Tensor, existing: dict[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(e.untyped_storage().data_ptr() == ptr for e in existing.values() if e.numel())


def _split_example_inputs(inputs: list[Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors for safetensors; Python numbers (a segment of a branching program can take a
    size computed before the branch, e.g. ``h = x.shape[-1]``) for the JSON document."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for i, v in enumerate(inputs):
        if isinstance(v, torch.Tensor):
            tensors[f"input_{i}"] = v.detach().cpu().contiguous()
        elif type(v) in (bool, int, float):
            scalars[str(i)] = v
        else:
            raise TypeError(f"example input {i} is a {type(v).__name__}; only tensors and Python numbers "
                            "can be saved as a graph's inputs")
    return tensors, scalars


def _example_inputs(doc: dict, tensors: dict[str, torch.Tensor]) -> list[Any]:
    scalars = doc.get("scalar_inputs", {})
    if not (isinstance(scalars, dict) and all(type(v) in (bool, int, float) for v in scalars.values())):
        raise ArtifactError("scalar_inputs must map input positions to numbers")
    return [scalars[str(i)] if str(i) in scalars else tensors[f"input_{i}"] for i in range(int(doc["num_inputs"]))]


def save_artifact(path: str | os.PathLike, gm: torch.fx.GraphModule, signature: FlatSignature,
                  example_inputs: list[torch.Tensor], config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    target = Path(path)
    graph, tensors = graph_to_json(gm)
    tensors, aliases = _dedupe(tensors)
    with staging_dir(target.parent, target.name) as tmp:
        out = tmp / target.name
        out.mkdir()
        save_file(tensors, str(out / "weights.safetensors"))
        example, scalars = _split_example_inputs(example_inputs)
        save_file(example, str(out / "example_inputs.safetensors"))
        doc = {"artifact_version": ARTIFACT_VERSION, "graph": graph, "aliases": aliases,
               "signature": signature.to_json(), "num_inputs": len(example_inputs), "scalar_inputs": scalars}
        (out / "graph.json").write_text(json.dumps(doc))
        (out / "config.json").write_text(json.dumps({**config, "versions": versions(), **(extra or {})},
                                                    indent=2, default=str))
        (out / "code.py").write_text("# generated by autoglm for reading only; loading never executes it\n" + gm.code)
        replace_dir(out, target)
    return target


def read_artifact_json(path: Path, what: str) -> Any:
    """A JSON file of an artifact, read as untrusted input: a regular file, size- and nesting-capped."""
    return loads_json(read_user_file(path, what, "model", error=ArtifactError), f"{what} {path}",
                      error=ArtifactError, max_depth=ARTIFACT_JSON_DEPTH)


def read_artifact_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file of an artifact (only a regular file: ``load_file`` maps it, a FIFO would block)."""
    require_regular_file(path, what, "model", error=ArtifactError)
    return load_file(str(path))


def load_artifact(path: str | os.PathLike, *, trust_remote_code: bool = False
                  ) -> tuple[torch.fx.GraphModule, FlatSignature, list[torch.Tensor], dict]:
    """Read an artifact directory; the graph is rebuilt from the exact op table and never run."""
    root = Path(path)
    if not (root / "graph.json").is_file():
        raise ArtifactError(f"{root} is not an autoglm artifact (no graph.json); create one with autoglm compile --out")
    doc = read_artifact_json(root / "graph.json", "artifact graph")
    if not isinstance(doc, dict) or doc.get("artifact_version") != ARTIFACT_VERSION:
        version = doc.get("artifact_version") if isinstance(doc, dict) else None
        raise ArtifactError(f"artifact version {version!r} not supported (expected {ARTIFACT_VERSION})")
    try:
        tensors = read_artifact_tensors(root / "weights.safetensors", "artifact weights")
        for alias, name in doc.get("aliases", {}).items():
            tensors[alias] = tensors[name]
        gm = graph_from_json(doc["graph"], tensors, trust_remote_code=trust_remote_code)
        sig = FlatSignature.from_json(doc["signature"], trusted=trust_remote_code)
        inputs_file = read_artifact_tensors(root / "example_inputs.safetensors", "artifact example inputs")
        inputs = _example_inputs(doc, inputs_file)
    except (UnsafeArtifactError, ArtifactError):
        raise
    except UnsafeTreeSpecError as exc:
        raise UnsafeArtifactError(f"artifact {root}: {exc}; refused") from exc
    except Exception as exc:
        raise ArtifactError(f"cannot load artifact {root}: {type(exc).__name__}: {exc}") from exc
    config = read_artifact_json(root / "config.json", "artifact config") if (root / "config.json").exists() else {}
    if not isinstance(config, dict):
        raise ArtifactError(f"{root / 'config.json'} is not a JSON object")
    return gm, sig, inputs, config
