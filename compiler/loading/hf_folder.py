"""A local Hugging Face model folder, checked before ``transformers`` reads it, then loaded safely.

What "safely" means here, and why:

* weights come from ``*.safetensors`` only. ``pytorch_model.bin`` and other pickles can run
  code when unpickled, so a folder holding only those is refused unless the caller passes
  ``trust_remote_code=True`` (then transformers reads them as it would);
* ``config.json`` and ``tokenizer_config.json`` are read by us first (bounded size and
  nesting): an ``auto_map`` entry means the folder ships its own Python classes, which
  transformers would import; that too needs ``trust_remote_code=True``. We pass
  ``trust_remote_code`` to transformers only when the caller asked for it;
* every ``from_pretrained`` call is ``local_files_only=True``: nothing is downloaded.

Every refusal is one ``ModelLoadError`` line naming the folder and what to do.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from autoglm.loading.bounded_read import loads_json, read_user_file, require_regular_file
from autoglm.loading.file_safety import ModelLoadError, UnsafeFileError, first_line
from autoglm.loading.hf_tasks import auto_class_name

__all__ = ["HfFolder", "inspect_hf_folder", "check_tokenizer_files", "load_hf_config", "load_hf_model",
           "load_hf_tokenizer", "weights_fingerprint", "TOKENIZER_FILES", "CONFIG_FILES"]

# What a tokenizer is saved as (tokenizer.save_pretrained): copied into artifacts with the config.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")
# The ones that hold a vocabulary: a folder needs at least one to tokenize anything.
_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                     "tokenizer.model")
CONFIG_FILES = ("config.json", "generation_config.json")
# Weights transformers would unpickle (torch.load) or that we cannot read at all.
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass
class HfFolder:
    path: Path
    config: dict[str, Any]  # config.json as plain JSON (read by us, bounded)
    weights: list[Path]  # *.safetensors
    pickled: list[Path]  # pytorch_model.bin & co. (used only with trust_remote_code)
    tokenizer_files: list[Path]
    config_files: list[Path] = field(default_factory=list)

    @property
    def files_to_copy(self) -> list[Path]:
        """What an artifact needs to tokenize and to rebuild the eager model: config + tokenizer, no weights."""
        return [*self.config_files, *self.tokenizer_files]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError("loading a Hugging Face folder needs the transformers package "
                             "(pip install 'open-autoglm[huggingface]')") from exc
    return transformers


def _read_json(path: Path, what: str) -> Any:
    return loads_json(read_user_file(path, what, "config", error=ModelLoadError), f"{what} {path}",
                      error=ModelLoadError)


def _refuse_custom_code(doc: Any, path: Path, trust_remote_code: bool) -> None:
    if isinstance(doc, dict) and doc.get("auto_map") and not trust_remote_code:
        raise UnsafeFileError(f"{path} names custom model code (auto_map); loading it would import Python code "
                              "from the folder, so it is refused: pass --trust-remote-code "
                              "(trust_remote_code=True) if you trust this folder")


def inspect_hf_folder(path: str | os.PathLike, trust_remote_code: bool = False) -> HfFolder:
    """Check ``path`` is a usable Hugging Face folder, before transformers touches it."""
    root = Path(path)
    if not root.exists():
        raise ModelLoadError(f"Hugging Face model folder {root} does not exist")
    if not root.is_dir():
        raise ModelLoadError(f"{root} is a file; --hf-model takes a Hugging Face model folder "
                             "(config.json, *.safetensors weights, tokenizer files)")
    if not (root / "config.json").exists():
        raise ModelLoadError(f"{root} has no config.json, so it is not a Hugging Face model folder "
                             "(write one with model.save_pretrained(folder))")
    config = _read_json(root / "config.json", "model config")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{root / 'config.json'} is not a JSON object")
    _refuse_custom_code(config, root / "config.json", trust_remote_code)
    names = sorted(p.name for p in root.iterdir())
    weights = [root / n for n in names if n.endswith(".safetensors")]
    pickled = [root / n for n in names if n.endswith(_PICKLED_SUFFIXES)]
    if not weights and not (pickled and trust_remote_code):
        if pickled:
            raise UnsafeFileError(f"{root} holds {pickled[0].name} (a pickle) but no *.safetensors weights; "
                                  "unpickling can run code from the file, so it is refused. Save the model with "
                                  "model.save_pretrained(folder, safe_serialization=True), or pass "
                                  "--trust-remote-code (trust_remote_code=True) if you trust this folder")
        raise ModelLoadError(f"{root} has no *.safetensors weights (save them with "
                             "model.save_pretrained(folder, safe_serialization=True))")
    for w in weights or pickled:
        require_regular_file(w, "model weights", "model", error=ModelLoadError)
    tokenizer_files = check_tokenizer_files(root, trust_remote_code, "the example inputs are built with the "
                                            "folder's tokenizer: save it there with tokenizer.save_pretrained(folder)")
    config_files = [root / n for n in CONFIG_FILES if (root / n).is_file()]
    return HfFolder(root, config, weights, pickled if not weights else [], tokenizer_files, config_files)


def check_tokenizer_files(root: Path, trust_remote_code: bool, hint: str) -> list[Path]:
    """The tokenizer files in ``root`` (at least one vocabulary), refusing custom tokenizer code."""
    if not any((root / n).is_file() for n in _VOCABULARY_FILES):
        raise ModelLoadError(f"{root} has no tokenizer (none of {', '.join(_VOCABULARY_FILES)}); {hint}")
    tokenizer_files = [root / n for n in TOKENIZER_FILES if (root / n).is_file()]
    if (root / "tokenizer_config.json").is_file():
        _refuse_custom_code(_read_json(root / "tokenizer_config.json", "tokenizer config"),
                            root / "tokenizer_config.json", trust_remote_code)
    for f in tokenizer_files:
        require_regular_file(f, "tokenizer file", "model", error=ModelLoadError)
    return tokenizer_files


def _trust(trust_remote_code: bool) -> dict[str, Any]:
    # Never passed as False either: transformers' own default then applies, unchanged.
    return {"trust_remote_code": True} if trust_remote_code else {}


def load_hf_config(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    transformers = _transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, **_trust(trust_remote_code))
    except Exception as exc:  # noqa: BLE001 - unknown model_type, bad values: one line
        raise ModelLoadError(f"{Path(path) / 'config.json'}: transformers cannot read it ({first_line(exc)})") from exc


def load_hf_model(folder: HfFolder, task: str, config: Any, *, trust_remote_code: bool = False,
                  weights_from: Path | None = None) -> tuple[nn.Module, list[str]]:
    """The model for ``task``, in eval mode and float32; returns it and the names of weights the folder
    lacked (transformers initialises those at random: a task head the checkpoint was not trained with).

    ``weights_from``: read the weights from another folder (the eager model an artifact was
    compiled from, rebuilt with the artifact's copy of config.json)."""
    transformers = _transformers()
    cls = getattr(transformers, auto_class_name(task))
    source = weights_from or folder.path
    hf_logging = transformers.utils.logging
    bars_were_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    # A bar per load and transformers' multi-line load report would break the one-line-per-message
    # console; missing weights, the report's one useful fact, are returned and warned about by the caller.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(str(source), config=config, local_files_only=True,
                                          use_safetensors=bool(folder.weights), output_loading_info=True,
                                          **_trust(trust_remote_code))
    except Exception as exc:  # noqa: BLE001 - wrong task for the architecture, damaged weights...
        arch = ", ".join(folder.config.get("architectures") or []) or folder.config.get("model_type", "?")
        raise ModelLoadError(f"{folder.path}: cannot build the {task} model ({arch}) with transformers."
                             f"{auto_class_name(task)}: {first_line(exc)}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.eval()
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        model.float()  # bf16/fp16 checkpoints: autoglm compiles and validates in float32
    return model, sorted(info.get("missing_keys", []))


def load_hf_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    transformers = _transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                          **_trust(trust_remote_code))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: transformers cannot load the tokenizer ({first_line(exc)})") from exc


def weights_fingerprint(weights: list[Path]) -> dict[str, str]:
    """sha256 per weight file: lets a later command tell whether the folder still holds these weights."""
    out = {}
    for w in weights:
        h = hashlib.sha256()
        with open(w, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        out[w.name] = h.hexdigest()
    return out
