"""``autoglm run DIR (--inputs FILE | --text "..." ...) [--output FILE] [--nproc K] [--backend B] [--benchmark]``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from autoglm.api.entry import BACKENDS, attach_backend
from autoglm.cli import benchmark, run_text
from autoglm.cli.common import (CliError, Console, OutputPlan, UsageError, check_inputs_match, load_compiled,
                                quote_path)
from autoglm.loading.model_files import ExampleInputs, load_example_inputs
from autoglm.program.io import LoadedProgram

__all__ = ["add_parser", "run", "save_outputs"]

OUTPUT_SUFFIXES = (".pt", ".npz", ".safetensors")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", parents=parents, help="run a compiled artifact on inputs",
                       description="Load an artifact folder and run it on the inputs in FILE, on sentences "
                                   "(--text, artifacts compiled with --hf-model), or time it (--benchmark).")
    p.add_argument("artifact", metavar="DIR", help="artifact folder written by autoglm compile --out")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the artifact may run code: resolve torch.fx.wrap functions by importing them (docs/security.md)")
    p.add_argument("--inputs", metavar="FILE", help="inputs as .pt, .npz or .safetensors")
    p.add_argument("--text", metavar="TEXT", action="append", default=[],
                   help="a sentence, tokenized with the artifact's tokenizer (repeatable; --hf-model artifacts)")
    p.add_argument("--output", metavar="FILE", help="save the outputs (.pt, .npz or .safetensors)")
    p.add_argument("--nproc", metavar="K", type=int, default=1,
                   help="run as a K-stage pipeline over torch.distributed (needs a partitioned artifact)")
    p.add_argument("--schedule", choices=["gpipe", "1f1b"], default="gpipe", help="pipeline schedule (--nproc > 1)")
    # Default 1: a graph compiled with a static batch takes only that batch, so splitting it only works
    # for graphs whose ops do not bake in the batch size.
    p.add_argument("--microbatches", type=int, default=1, help="split dim 0 into this many microbatches "
                   "(--nproc > 1; default 1)")
    p.add_argument("--backend", choices=BACKENDS, default="fx",
                   help="run the artifact on this backend (default fx: PyTorch; inductor: torch.compile, int8 "
                        "layers as oneDNN int8 GEMMs; onnxruntime/openvino: exported and parity-checked first)")
    benchmark.add_flags(p)
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


def _check_flags(args: argparse.Namespace) -> None:
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and args.backend != "fx":
        raise UsageError(f"--backend {args.backend} runs one process; a pipeline (--nproc > 1) runs on fx")
    if args.output and Path(args.output).suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"--output {quote_path(args.output)}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.inputs and args.text:
        raise UsageError("give --inputs FILE or --text, not both")
    if not args.inputs and not args.text and not args.benchmark:
        raise UsageError("give --inputs FILE, --text \"...\" (an artifact compiled with --hf-model) or --benchmark "
                         "(times the artifact on its saved example inputs)")
    benchmark.check_flags(args)


def _call_inputs(args: argparse.Namespace, cm: Any) -> tuple[Any, str]:
    """``ExampleInputs`` for the call, and where they came from (for messages)."""
    if args.text:
        kwargs = run_text.text_inputs(args.artifact, cm, args.text, args.trust_remote_code)
        return ExampleInputs((), kwargs), f"{len(args.text)} sentence(s) from the artifact's tokenizer"
    if args.inputs:
        inputs = load_example_inputs(args.inputs)
        sig = cm.signature
        if inputs.args and not inputs.kwargs and not sig.positional_tensors_only \
                and len(inputs.args) == len(sig.in_positions):
            # input_0, input_1, ... (the artifact's own example_inputs.safetensors) for a model called
            # with keywords: the names are the graph's input order, which the signature maps back.
            inputs = ExampleInputs(*benchmark.call_from_flat(cm, list(inputs.args)))
        return inputs, quote_path(args.inputs)
    call_args, call_kwargs = benchmark.saved_inputs(cm)
    return ExampleInputs(call_args, call_kwargs), "the artifact's saved example inputs"


def _benchmark(args: argparse.Namespace, cm: Any, inputs: Any, label: str, console: Console) -> dict[str, Any]:
    with console.step("rebuilding the eager model"):
        eager, what = benchmark.eager_model(args.artifact, cm, args.trust_remote_code)
    fns = {"artifact": lambda: cm(*inputs.args, **inputs.kwargs)}
    if eager is not None:
        try:
            with torch.no_grad():
                eager(*inputs.args, **inputs.kwargs)
            fns["eager"] = lambda: eager(*inputs.args, **inputs.kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the rebuilt model raises: time the artifact alone
            eager, what = None, f"the rebuilt eager model fails on these inputs ({type(exc).__name__}: {exc})"
    with console.step(f"timing {' and '.join(fns)}: {args.warmup} warm-up + {args.repeats} runs each"):
        times = benchmark.measure(fns, args.repeats, args.warmup)
    bench = {"threads": torch.get_num_threads(), "backend": args.backend, "repeats": args.repeats, "warmup": args.warmup,
             "inputs": f"{label} ({inputs.describe()})", "artifact": times["artifact"], "eager": times.get("eager"),
             "eager_source": what, "speedup": None}
    if eager is not None:
        bench["speedup"] = times["eager"]["median_ms"] / times["artifact"]["median_ms"]
    return bench


def run(args: argparse.Namespace, console: Console) -> int:
    _check_flags(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # pinned for the run and both sides of --benchmark
    with OutputPlan() as plan:
        staged = plan.file(args.output, "--output file") if args.output else None
        with console.step(f"loading {quote_path(args.artifact)}"):
            cm = load_compiled(args.artifact, args.trust_remote_code)
        if args.backend != "fx":
            if isinstance(cm, LoadedProgram):  # one graph per branch path
                raise UsageError(f"--backend {args.backend} runs single-graph artifacts; {quote_path(args.artifact)} "
                                 "holds a program with data-dependent branches (run it on fx)")
            # The other runtimes take their thread count as an option; Inductor uses torch's (set above).
            options = {"threads": args.threads} if args.backend in ("onnxruntime", "openvino") else None
            with console.step(f"compiling for {args.backend} and checking it against the artifact"):
                attach_backend(cm, args.backend, options)
        inputs, label = _call_inputs(args, cm)
        check_inputs_match(cm, inputs.args, inputs.kwargs, args.microbatches if args.nproc > 1 else 1)
        with console.step("running" if args.nproc == 1 else f"running on {args.nproc} pipeline stages"):
            if args.nproc > 1:
                outputs = _run_pipeline(args.artifact, cm, inputs, args)
            else:
                with torch.no_grad():
                    outputs = cm(*inputs.args, **inputs.kwargs)
        named = _named_outputs(outputs)
        bench = _benchmark(args, cm, inputs, label, console) if args.benchmark else None
        if staged is not None:
            save_outputs(outputs, staged)
    data: dict[str, Any] = {"ok": True, "inputs": label,
                            "outputs": {k: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                                        for k, t in named.items()},
                            "output_file": str(Path(args.output).absolute()) if args.output else None}
    text = _summary(named)
    record = run_text.hf_record(cm)
    emb = run_text.embeddings(named, inputs.kwargs) if args.text and record and \
        record.get("task") == "feature-extraction" else None
    if emb is not None:
        lines, data["embeddings"] = run_text.embedding_lines(args.text, emb)
        text += "\n" + lines
    if bench is not None:
        data["benchmark"] = bench
        text += "\n" + benchmark.human(bench)
    text += f"\nwrote {quote_path(args.output)}" if args.output else ""
    console.result(text, data)
    return 0
