"""Artifact directories: ``cm.save(dir)`` / ``autoglm.load(dir)``.

Layout::

    dir/
      graph.json               the graph, modules and signature (no code, no pickle)
      weights.safetensors      every tensor the graph reads
      example_inputs.safetensors
      config.json              the effective passes/options/devices and versions
      code.py                  the generated forward, for people to read (never executed)

Written into a temporary sibling directory and renamed into place, so a failure
never leaves a half-written artifact.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from autoglm.bounded_read import check_nesting, format_size, limit, read_user_file
from autoglm.capture.flat import FlatSignature
from autoglm.graph_io import UnsafeArtifactError, graph_from_json, graph_to_json

__all__ = ["ARTIFACT_VERSION", "replace_dir", "save_artifact", "load_artifact", "versions", "ArtifactError",
           "read_artifact_json", "read_artifact_tensors"]

ARTIFACT_VERSION = 1
# Our own files nest by module depth (two levels per submodule) and argument structure; far below this.
ARTIFACT_JSON_DEPTH = 256


class ArtifactError(ValueError):
    """The directory is not a readable autoglm artifact."""


def versions() -> dict[str, str]:
    import autoglm

    out = {"autoglm": getattr(autoglm, "__version__", "0"), "torch": torch.__version__,
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


INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them as they would have been.

    Python runs signal handlers between bytecodes, so a Ctrl-C could otherwise land
    between two renames or halfway through removing a staging folder and leave it
    behind. Only the main thread runs Python handlers (and can install them); in any
    other thread the block cannot be interrupted by them and runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in INTERRUPT_SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: a C-level handler, left alone
    for s in previous:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            _deliver(s, previous[s])


def _deliver(signum: int, handler: Callable[..., Any] | int) -> None:
    if callable(handler):
        handler(signum, None)  # e.g. raises KeyboardInterrupt, now that the block is done
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action: the process ends here
    # SIG_IGN: the signal was to be ignored anyway


def replace_dir(staged: Path, final: Path) -> None:
    """Move a fully written ``staged`` directory to ``final``, replacing what was there.

    The old directory is renamed aside first and removed only after the new one is
    in place, so ``final`` is at every moment either the old or the new whole tree.
    Signals wait until the swap is complete: one between the two renames would leave
    neither tree at ``final`` and the old one as a hidden ``.NAME.autoglm-old``.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        if not final.exists():
            staged.rename(final)
            return
        backup = final.with_name(f".{final.name}.autoglm-old")
        shutil.rmtree(backup, ignore_errors=True)
        final.rename(backup)
        try:
            staged.rename(final)
        except BaseException:
            backup.rename(final)  # put the old tree back rather than leave nothing
            raise
        shutil.rmtree(backup, ignore_errors=True)


def save_artifact(path: str | os.PathLike, gm: torch.fx.GraphModule, signature: FlatSignature,
                  example_inputs: list[torch.Tensor], config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    target = Path(path)
    graph, tensors = graph_to_json(gm)
    tensors, aliases = _dedupe(tensors)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with signals_deferred():  # created and recorded together, so the clean-up below always knows it
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        save_file(tensors, str(tmp / "weights.safetensors"))
        save_file({f"input_{i}": t.detach().cpu().contiguous() for i, t in enumerate(example_inputs)},
                  str(tmp / "example_inputs.safetensors"))
        doc = {"artifact_version": ARTIFACT_VERSION, "graph": graph, "aliases": aliases,
               "signature": signature.to_json(), "num_inputs": len(example_inputs)}
        (tmp / "graph.json").write_text(json.dumps(doc))
        (tmp / "config.json").write_text(json.dumps({**config, "versions": versions(), **(extra or {})},
                                                    indent=2, default=str))
        (tmp / "code.py").write_text("# generated by autoglm for reading only; loading never executes it\n" + gm.code)
        replace_dir(tmp, target)
    except BaseException:
        if tmp is not None:
            with signals_deferred():  # a second Ctrl-C must not stop the removal halfway
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_artifact_json(path: Path, what: str) -> Any:
    """A JSON file of an artifact, read as untrusted input: a regular file, size- and nesting-capped."""
    data = read_user_file(path, what, "model", error=ArtifactError)
    try:
        doc = json.loads(data)
    except RecursionError as exc:
        raise ArtifactError(f"{what} {path} nests too deeply; refused") from exc
    except ValueError as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON: {exc}") from exc
    check_nesting(doc, f"{what} {path}", error=ArtifactError, max_depth=ARTIFACT_JSON_DEPTH)
    return doc


def read_artifact_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file of an artifact (only a regular file: ``load_file`` mmaps it, a FIFO would block)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ArtifactError(f"{what} {path} is missing ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{what} {path} is not a regular file; refused")
    if st.st_size > limit("model", ArtifactError):
        raise ArtifactError(f"{what} {path} is {format_size(st.st_size)}, over the model-file limit "
                            "(AUTOGLM_MAX_MODEL_BYTES)")
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
        sig = FlatSignature.from_json(doc["signature"])
        inputs_file = read_artifact_tensors(root / "example_inputs.safetensors", "artifact example inputs")
        inputs = [inputs_file[f"input_{i}"] for i in range(int(doc["num_inputs"]))]
    except (UnsafeArtifactError, ArtifactError):
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot load artifact {root}: {type(exc).__name__}: {exc}") from exc
    config = read_artifact_json(root / "config.json", "artifact config") if (root / "config.json").exists() else {}
    if not isinstance(config, dict):
        raise ArtifactError(f"{root / 'config.json'} is not a JSON object")
    return gm, sig, inputs, config
