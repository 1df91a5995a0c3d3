"""``autoglm run DIR --inputs FILE [--output FILE] [--nproc K]``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from autoglm.cli.common import (CliError, Console, OutputPlan, UsageError, check_inputs_match, load_compiled,
                                quote_path)
from autoglm.loading.model_files import load_example_inputs

__all__ = ["add_parser", "run", "save_outputs"]

OUTPUT_SUFFIXES = (".pt", ".npz", ".safetensors")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", parents=parents, help="run a compiled artifact on inputs",
                       description="Load an artifact folder and run it on the inputs in FILE.")
    p.add_argument("artifact", metavar="DIR", help="artifact folder written by autoglm compile --out")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the artifact may run code: resolve torch.fx.wrap functions by importing them (docs/security.md)")
    p.add_argument("--inputs", metavar="FILE", required=True, help="inputs as .pt, .npz or .safetensors")
    p.add_argument("--output", metavar="FILE", help="save the outputs (.pt, .npz or .safetensors)")
    p.add_argument("--nproc", metavar="K", type=int, default=1,
                   help="run as a K-stage pipeline over torch.distributed (needs a partitioned artifact)")
    p.add_argument("--schedule", choices=["gpipe", "1f1b"], default="gpipe", help="pipeline schedule (--nproc > 1)")
    # Default 1: compiled graphs are shape-specialised, so splitting the batch only works
    # for graphs whose ops do not bake in the batch size.
    p.add_argument("--microbatches", type=int, default=1, help="split dim 0 into this many microbatches "
                   "(--nproc > 1; default 1)")
    p.set_defaults(handler=run)


def _named_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """Flat ``name -> tensor`` view of any output structure (dict keys kept, else output_i)."""
    if isinstance(outputs, torch.Tensor):
        return {"output_0": outputs}
    if isinstance(outputs, dict) and all(isinstance(v, torch.Tensor) for v in outputs.values()):
        return {str(k): v for k, v in outputs.items()}
    leaves, _ = tree_flatten(outputs)
    return {f"output_{i}": t for i, t in enumerate(x for x in leaves if isinstance(x, torch.Tensor))}


def save_outputs(outputs: Any, path: Path) -> None:
    named = {k: v.detach().cpu().contiguous() for k, v in _named_outputs(outputs).items()}
    if path.suffix == ".pt":
        # Plain containers of tensors only, so `torch.load(weights_only=True)` reads it back.
        torch.save(named, path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(named, str(path))
    else:
        import numpy as np

        with open(path, "wb") as fh:
            np.savez(fh, **{k: v.numpy() for k, v in named.items()})


def _summary(named: dict[str, torch.Tensor]) -> str:
    lines = []
    for k, t in named.items():
        shape = "x".join(map(str, t.shape)) or "scalar"
        stats = ""
        if t.is_floating_point() and t.numel():
            stats = f" mean {float(t.double().mean()):.6g} min {float(t.min()):.6g} max {float(t.max()):.6g}"
        lines.append(f"{k}: {str(t.dtype).replace('torch.', '')}[{shape}]{stats}")
    return "\n".join(lines)


def _run_pipeline(artifact: str, cm: Any, inputs: Any, args: argparse.Namespace) -> Any:
    try:
        from autoglm.runtime.pipeline.driver import run_pipeline
    except ImportError as exc:
        raise CliError(f"--nproc {args.nproc} needs the pipeline runner (autoglm.runtime.pipeline.driver.run_pipeline), "
                       "which this build does not have; run without --nproc") from exc
    flat = cm.signature.flatten_inputs(inputs.args, inputs.kwargs)
    try:
        outputs = run_pipeline(artifact, flat, nproc=args.nproc, schedule=args.schedule,
                               microbatches=args.microbatches)
    except Exception as exc:  # noqa: BLE001 - PipelineFault / ValueError: one line, with the stage named
        raise CliError(f"pipeline run on {args.nproc} processes failed: {type(exc).__name__}: {exc}") from exc
    return cm.signature.unflatten_outputs(tuple(outputs))


def run(args: argparse.Namespace, console: Console) -> int:
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.output and Path(args.output).suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {quote_path(args.output)}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    with OutputPlan() as plan:
        staged = plan.file(args.output, "--output file") if args.output else None
        with console.step(f"loading {quote_path(args.artifact)}"):
            cm = load_compiled(args.artifact, args.trust_remote_code)
        inputs = load_example_inputs(args.inputs)
        check_inputs_match(cm, inputs.args, inputs.kwargs, args.microbatches if args.nproc > 1 else 1)
        with console.step("running" if args.nproc == 1 else f"running on {args.nproc} pipeline stages"):
            if args.nproc > 1:
                outputs = _run_pipeline(args.artifact, cm, inputs, args)
            else:
                with torch.no_grad():
                    outputs = cm(*inputs.args, **inputs.kwargs)
        named = _named_outputs(outputs)
        if staged is not None:
            save_outputs(outputs, staged)
    data = {"ok": True, "outputs": {k: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                                    for k, t in named.items()},
            "output_file": str(Path(args.output).absolute()) if args.output else None}
    text = _summary(named) + (f"\nwrote {quote_path(args.output)}" if args.output else "")
    console.result(text, data)
    return 0
