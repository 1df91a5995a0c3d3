"""What ``autoglm compile --hf-model DIR`` adds to a compile: the folder, the eager check, the copied files.

``compile_cmd`` runs the compile itself (``compile_to_dir``, one atomic output); this module
loads the folder (``autoglm.api.pretrained``), checks the compiled model against eager
before anything is written, and copies the folder's config and tokenizer into ``OUT/hf/``
so the artifact is self-contained (``autoglm run OUT --text ...`` tokenizes with it).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoglm.api.eager_check import EagerMismatchError
from autoglm.api.pretrained import HF_SUBDIR, Pretrained, copy_hf_files, load_pretrained, validate
from autoglm.cli.common import CliError, Console, UsageError, quote_path

__all__ = ["add_flags", "check_flags", "load", "ArtifactAdditions", "human"]


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-model", metavar="DIR", help="a local Hugging Face model folder (config.json, *.safetensors, "
                   "tokenizer), instead of MODEL; see docs/huggingface.md")
    p.add_argument("--task", metavar="TASK", help="with --hf-model: feature-extraction, text-classification, "
                   "fill-mask, text-generation, ... (default: from the config's architectures)")


def check_flags(args: argparse.Namespace) -> bool:
    """True for the Hugging Face path; usage errors for flags that do not fit it."""
    if args.hf_model is None:
        if args.model is None:
            raise UsageError("autoglm compile: give MODEL (a .pt2 or state dict file) or --hf-model DIR")
        if args.task:
            raise UsageError("--task goes with --hf-model DIR")
        return False
    if args.model is not None:
        raise UsageError(f"give either MODEL ({quote_path(args.model)}) or --hf-model DIR, not both")
    for flag, value in (("--example-inputs", args.example_inputs), ("--model", args.factory)):
        if value:
            raise UsageError(f"{flag} does not go with --hf-model: the folder holds the model, and the example "
                             "inputs come from its tokenizer")
    return True


def load(args: argparse.Namespace, console: Console) -> Pretrained:
    with console.step(f"loading Hugging Face folder {quote_path(args.hf_model)}"):
        pre = load_pretrained(args.hf_model, args.task, trust_remote_code=args.trust_remote_code,
                              allow_nonfinite=args.allow_nonfinite)
    for note in pre.warnings:
        console.warn(note)
    shapes = ", ".join(f"{k}[{'x'.join(map(str, t.shape))}]" for k, t in pre.example_inputs.items())
    console.info(f"task {pre.task} ({type(pre.model).__name__}); example inputs from the tokenizer: {shapes}")
    return pre


class ArtifactAdditions:
    """``compile_to_dir``'s two hooks: before saving, check against eager and record the folder;
    after saving into the staging folder, copy config.json and the tokenizer files into it."""

    def __init__(self, pre: Pretrained, pipeline: list[Any], console: Console):
        self.pre, self.pipeline, self.console = pre, pipeline, console

    def before_save(self, cm: Any) -> dict[str, Any]:
        try:
            check = validate(cm, self.pre, self.pipeline)
        except EagerMismatchError as exc:
            raise CliError(f"the compiled model does not match eager: {exc}; nothing was written") from exc
        if check.warning():
            self.console.warn(check.warning())
        cm.config["huggingface"] = self.pre.record()
        return {"eager_check": check.to_json(), "eager_check_line": check.line(), "task": self.pre.task,
                "huggingface_files": [p.name for p in self.pre.folder.files_to_copy]}

    def after_save(self, staged_dir: Path) -> None:
        copy_hf_files(self.pre.folder.path, [p.name for p in self.pre.folder.files_to_copy], staged_dir)


def human(result: dict[str, Any], folder: str) -> str:
    lines = [f"compiled Hugging Face folder {quote_path(folder)} ({result['task']}) -> {quote_path(result['out'])} "
             f"({result['frontend']} frontend, {result['nodes']} nodes, devices {','.join(result['devices'])})",
             result["eager_check_line"]]
    if not result["eager_check"]["within_budget"]:
        lines.append("warning: below the lossy passes' accuracy budget (see the warning above)")
    lines.append(f"copied {', '.join(result['huggingface_files'])} to {quote_path(Path(result['out']) / HF_SUBDIR)}")
    if result["report"]:
        lines.append(f"report: {quote_path(result['report'])}")
    out = quote_path(result["out"])
    lines.append(f'next: autoglm run {out} --text "A man is playing a guitar."   autoglm run {out} --benchmark')
    return "\n".join(lines)
