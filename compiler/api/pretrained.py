"""``autoglm.compile_pretrained``: a local Hugging Face folder in, a validated compiled model out.

    cm = autoglm.compile_pretrained("all-MiniLM-L6-v2/", passes="quantize(mode=dynamic)")
    cm.notes["eager_check"].line()   # 'outputs vs eager: last_hidden_state cosine 0.9991, max abs diff 0.21; ...'
    save_with_tokenizer(cm, "build/minilm")   # the artifact + hf/ (config.json, tokenizer files)

The folder is checked and read by ``autoglm.loading.hf_folder`` (safetensors only, no
custom code, nothing downloaded). Example inputs are two sentences from the folder's
own tokenizer, padded to ``EXAMPLE_LENGTH`` tokens; batch and sequence stay dynamic
(``dynamic=None``, docs/dynamic_shapes.md), so the check against eager runs on three
other sentences padded to their own length: a different batch and length than the
ones compiled for, as optimum-cli validates an export.
"""
from __future__ import annotations

import inspect
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from autoglm.api.eager_check import EagerCheck, check_against_eager
from autoglm.loading.file_safety import ModelLoadError
from autoglm.loading.hf_folder import (HfFolder, inspect_hf_folder, load_hf_config, load_hf_model,
                                       load_hf_tokenizer, weights_fingerprint)
from autoglm.loading.hf_tasks import config_for_task, resolve_task

__all__ = ["compile_pretrained", "load_pretrained", "save_with_tokenizer", "copy_hf_files", "tokenize",
           "prepare_tokenizer", "Pretrained", "HF_SUBDIR", "EXAMPLE_SENTENCES", "CHECK_SENTENCES", "EXAMPLE_LENGTH"]

HF_SUBDIR = "hf"  # inside an artifact: the folder's config.json and tokenizer files (graph.json has its own config)
EXAMPLE_SENTENCES = ("A man is playing a guitar.", "The new movie is awesome.")
CHECK_SENTENCES = ("How do I reset my password?", "Scientists discovered a new species of frog in the rainforest.",
                   "Hello.")
EXAMPLE_LENGTH = 16  # tokens: small keeps capture and calibration fast; the sequence dim stays dynamic


@dataclass
class Pretrained:
    folder: HfFolder
    task: str
    model: nn.Module
    tokenizer: Any
    input_names: list[str]  # the tokenizer outputs the model's forward takes, in the tokenizer's order
    example_inputs: dict[str, torch.Tensor]
    check_inputs: dict[str, torch.Tensor]
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What an artifact keeps (``config.json["huggingface"]``) to tokenize and to rebuild the eager model."""
        return {"task": self.task, "source": str(self.folder.path.absolute()), "dir": HF_SUBDIR,
                "files": [p.name for p in self.folder.files_to_copy], "input_names": list(self.input_names),
                "weights_sha256": weights_fingerprint(self.folder.weights or self.folder.pickled),
                "pad_token": getattr(self.tokenizer, "pad_token", None)}


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Decoder tokenizers (GPT-2, Llama) have no pad token; batching needs one: use EOS, as generate() does."""
    if getattr(tokenizer, "pad_token", None) is None:
        fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
        if fallback is None:
            raise ModelLoadError("the tokenizer has no pad, eos or unk token to pad a batch with")
        tokenizer.pad_token = fallback
    return tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], input_names: Sequence[str],
             length: int | None = None) -> dict[str, torch.Tensor]:
    """``texts`` as the model's keyword inputs: padded to ``length`` (else to the longest), truncated to it."""
    padding: Any = "max_length" if length else True
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=length, return_tensors="pt")
    missing = [k for k in input_names if k not in enc]
    if missing:
        raise ModelLoadError(f"the tokenizer does not produce {', '.join(missing)}, which the model takes")
    return {k: enc[k] for k in input_names}


def _forward_inputs(model: nn.Module, tokenizer: Any) -> list[str]:
    params = inspect.signature(model.forward).parameters
    produced = list(tokenizer(["x"], return_tensors="pt").keys())
    names = [k for k in produced if k in params]
    if "input_ids" not in names:
        raise ModelLoadError(f"the model's forward takes none of the tokenizer's outputs ({', '.join(produced)})")
    return names


def _nonfinite(model: nn.Module) -> list[str]:
    return [n for n, t in model.state_dict().items()
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())]


def load_pretrained(model_dir: str | os.PathLike, task: str | None = None, *, trust_remote_code: bool = False,
                    allow_nonfinite: bool = False) -> Pretrained:
    """Check and load the folder: model for ``task`` (or the config's), tokenizer, example and check inputs."""
    folder = inspect_hf_folder(model_dir, trust_remote_code)
    task = resolve_task(task, folder.config.get("architectures"))  # a bad task fails before any loading
    config = config_for_task(load_hf_config(folder.path, trust_remote_code), task)
    tokenizer = prepare_tokenizer(load_hf_tokenizer(folder.path, trust_remote_code))
    model, missing = load_hf_model(folder, task, config, trust_remote_code=trust_remote_code)
    notes = []
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        notes.append(f"{folder.path} lacks {len(missing)} weight(s) the {task} model needs ({shown}); "
                     "transformers initialised them at random (is --task right for this checkpoint?)")
    bad = _nonfinite(model)
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        if not allow_nonfinite:
            raise ModelLoadError(f"{folder.path}: weights contain NaN/Inf ({shown}); outputs would be meaningless. "
                                 "Pass --allow-nonfinite to compile anyway")
        notes.append(f"weights contain NaN/Inf ({shown})")
    names = _forward_inputs(model, tokenizer)
    return Pretrained(folder, task, model, tokenizer, names,
                      tokenize(tokenizer, EXAMPLE_SENTENCES, names, EXAMPLE_LENGTH),
                      tokenize(tokenizer, CHECK_SENTENCES, names), notes)


def _describe(inputs: dict[str, torch.Tensor]) -> str:
    t = next(iter(inputs.values()))
    return f"{t.shape[0]} sentences x {t.shape[1]} tokens"


def inputs_for_check(cm: Any, pre: Pretrained) -> tuple[dict[str, torch.Tensor], str]:
    """The held-out sentences when the compiled graph takes their shapes; else the example inputs."""
    dims = getattr(cm, "dynamic_dims", None)
    if dims is not None:
        from autoglm.capture.dynamic import check_call

        flat = cm.signature.flatten_inputs((), pre.check_inputs)
        try:
            check_call(flat, cm.example_inputs, dims, cm.signature.input_names)
        except ValueError:  # compiled static (dynamic=False, or torch fixed a dim)
            return pre.example_inputs, f"the example inputs, {_describe(pre.example_inputs)}"
    return pre.check_inputs, f"held-out inputs, {_describe(pre.check_inputs)}"


def validate(cm: Any, pre: Pretrained, pipeline: Sequence[Any]) -> EagerCheck:
    inputs, label = inputs_for_check(cm, pre)
    return check_against_eager(cm, pre.model, inputs, pipeline, label)


def compile_pretrained(model_dir: str | os.PathLike, task: str | None = None, passes: Any = "default",
                       devices: Sequence[str] | None = None, backend: str = "fx", *,
                       trust_remote_code: bool = False, allow_nonfinite: bool = False, dynamic: Any = None,
                       frontend: str = "auto", verify: bool = False, cost: str = "analytic",
                       backend_options: dict[str, Any] | None = None, validate_outputs: bool = True) -> Any:
    """Compile the Hugging Face model in the local folder ``model_dir`` and check it against eager.

    ``task``: ``"feature-extraction"``, ``"text-classification"``, ``"fill-mask"``,
    ``"text-generation"`` (``"causal-lm"``), ... (``autoglm.loading.hf_tasks.TASKS``); default:
    from the config's ``architectures``. Weights are read from ``*.safetensors`` only, unless
    ``trust_remote_code=True`` (which is then also passed to transformers). The other
    arguments are ``autoglm.compile``'s. The result's ``notes["eager_check"]`` holds the
    per-output max abs diff and cosine; exact passes that change outputs raise
    ``EagerMismatchError``, a lossy pass below its budget warns. ``save_with_tokenizer``
    writes it with the folder's config and tokenizer.
    """
    from autoglm.api.entry import compile as autoglm_compile
    from autoglm.passes.pipeline import resolve_passes

    pipeline = resolve_passes(passes, list(devices or ["cpu"]))  # bad specs fail before the model is loaded
    pre = load_pretrained(model_dir, task, trust_remote_code=trust_remote_code, allow_nonfinite=allow_nonfinite)
    for note in pre.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    cm = autoglm_compile(pre.model, pre.example_inputs, passes=pipeline, devices=devices, frontend=frontend,
                         verify=verify, cost=cost, backend=backend, backend_options=backend_options, dynamic=dynamic)
    cm.config["huggingface"] = pre.record()
    if validate_outputs:
        check = validate(cm, pre, pipeline)
        cm.notes["eager_check"] = check
        if check.warning():
            warnings.warn(check.warning(), UserWarning, stacklevel=2)
    return cm


def copy_hf_files(source: str | os.PathLike, names: Sequence[str], artifact_dir: str | os.PathLike) -> Path:
    """Copy the folder's config and tokenizer files into ``artifact_dir/hf`` (weights stay in the graph)."""
    dest = Path(artifact_dir) / HF_SUBDIR
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(Path(source) / name, dest / name)
    return dest


def save_with_tokenizer(cm: Any, path: str | os.PathLike) -> Path:
    """``cm.save(path)`` plus ``path/hf/`` (config.json, tokenizer files), written together atomically."""
    from autoglm.artifacts.atomic import replace_dir, staging_dir

    record = cm.config.get("huggingface")
    if not isinstance(record, dict):
        raise ValueError("save_with_tokenizer takes what compile_pretrained returned (no Hugging Face record)")
    target = Path(path)
    with staging_dir(target.parent, target.name) as tmp:
        staged = tmp / target.name
        cm.save(staged)
        copy_hf_files(record["source"], record["files"], staged)
        replace_dir(staged, target)
    return target
