"""Hugging Face tasks: which ``transformers`` Auto class builds the model for a task.

The names are optimum-cli's (``feature-extraction``, ``text-classification``...),
plus the short spellings people type (``causal-lm``). Without ``--task`` the task
is read from the ``architectures`` entry of ``config.json`` by its class-name
suffix (``BertForMaskedLM`` -> ``fill-mask``); a plain base model (``BertModel``),
or a config that names no architecture, is ``feature-extraction``.
"""
from __future__ import annotations

from typing import Any

from autoglm.loading.file_safety import ModelLoadError

__all__ = ["TASKS", "TASK_ALIASES", "resolve_task", "task_from_architectures", "auto_class_name", "config_for_task"]

# task -> the Auto class that builds it. Text models only: the example inputs come from a tokenizer.
TASKS: dict[str, str] = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "fill-mask": "AutoModelForMaskedLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "text-generation": "AutoModelForCausalLM",
}

TASK_ALIASES: dict[str, str] = {
    "causal-lm": "text-generation",
    "sequence-classification": "text-classification",
    "masked-lm": "fill-mask",
    "sentence-similarity": "feature-extraction",
    "default": "feature-extraction",
}

# Class-name suffix in config.json's "architectures" -> task. Longest suffixes first, so
# "ForCausalLM" is not mistaken for a shorter match.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
)


def resolve_task(task: str | None, architectures: Any) -> str:
    """The canonical task name: ``task`` as given (or its alias), else the one the config implies."""
    if task is None:
        return task_from_architectures(architectures)
    name = TASK_ALIASES.get(task.strip().lower(), task.strip().lower())
    if name not in TASKS:
        known = ", ".join([*TASKS, *TASK_ALIASES])
        raise ModelLoadError(f"unknown task {task!r}; use one of {known}")
    return name


def task_from_architectures(architectures: Any) -> str:
    names = [a for a in architectures if isinstance(a, str)] if isinstance(architectures, (list, tuple)) else []
    for arch in names[:1]:  # transformers builds the first one; so do we
        for suffix, task in _SUFFIXES:
            if arch.endswith(suffix):
                return task
    return "feature-extraction"


def auto_class_name(task: str) -> str:
    return TASKS[task]


def config_for_task(config: Any, task: str) -> Any:
    """The config as autoglm compiles ``task``: a decoder returns logits only (a KV cache is
    not an output a graph artifact can return, and compiling without it serves every length)."""
    if task == "text-generation" and hasattr(config, "use_cache"):
        config.use_cache = False
    return config
