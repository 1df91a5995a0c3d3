"""``autoglm run OUT --text "..."``: sentences in, through the tokenizer an artifact carries.

Only artifacts compiled with ``--hf-model`` carry one (``OUT/hf/``, recorded in
``config.json["huggingface"]``). The tokenizer there is checked as at compile time
(no custom tokenizer code without ``--trust-remote-code``, nothing downloaded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from autoglm.api.pretrained import prepare_tokenizer, tokenize
from autoglm.cli.common import CliError, quote_path
from autoglm.loading.hf_folder import check_tokenizer_files, load_hf_tokenizer

__all__ = ["hf_record", "text_inputs", "embeddings"]


def hf_record(cm: Any) -> dict[str, Any] | None:
    record = getattr(cm, "config", {}).get("huggingface")
    return record if isinstance(record, dict) else None


def text_inputs(artifact: str, cm: Any, texts: Sequence[str], trust_remote_code: bool) -> dict[str, torch.Tensor]:
    record = hf_record(cm)
    if record is None:
        raise CliError(f"{quote_path(artifact)} carries no tokenizer (it was not compiled with --hf-model); "
                       "run it with --inputs FILE")
    names = record.get("input_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CliError(f"{quote_path(Path(artifact) / 'config.json')}: huggingface.input_names is malformed")
    tok_dir = Path(artifact) / str(record.get("dir", "hf"))
    if not tok_dir.is_dir():
        raise CliError(f"{quote_path(artifact)} lacks its tokenizer folder {quote_path(tok_dir)}; compile it again "
                       "with --hf-model")
    check_tokenizer_files(tok_dir, trust_remote_code, "compile the artifact again with --hf-model")
    tokenizer = prepare_tokenizer(load_hf_tokenizer(tok_dir, trust_remote_code))
    return tokenize(tokenizer, texts, names)


def embeddings(named: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Mean-pooled sentence embeddings (sentence-transformers' pooling) from the per-token output, if any."""
    hidden = named.get("last_hidden_state", next(iter(named.values()), None))
    mask = inputs.get("attention_mask")
    if hidden is None or mask is None or hidden.dim() != 3 or hidden.shape[:2] != mask.shape:
        return None
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def embedding_lines(texts: Sequence[str], emb: torch.Tensor) -> tuple[str, list[dict[str, Any]]]:
    lines, rows = [], []
    for text, e in zip(texts, emb):
        first = [round(float(v), 4) for v in e[:4]]
        rows.append({"text": text, "dim": int(e.numel()), "norm": float(e.norm()), "first": first})
        lines.append(f"embedding[{e.numel()}] of {text!r}: norm {float(e.norm()):.4f}, first values "
                     f"{', '.join(f'{v:.4f}' for v in first)}")
    return "\n".join(lines), rows
