"""``autoglm inspect MODEL|DIR``: the graph, node by node, with its costs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from autoglm.cli.common import Console, UsageError, load_compiled, quote_path
from autoglm.loading.model_files import load_example_inputs, load_model

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("inspect", parents=parents, help="show a model's or artifact's graph and costs",
                       description="Capture MODEL (no passes) or load artifact DIR and print one row per "
                                   "node: op, shape, FLOPs, bytes, partition, provenance.")
    p.add_argument("target", metavar="MODEL|DIR", help="a model file (as for compile) or an artifact folder")
    p.add_argument("--example-inputs", metavar="FILE", help="inputs for a model file (.pt2 carries its own)")
    p.add_argument("--model", dest="factory", metavar="PKG.MODULE:FACTORY", help="builds the model for a state dict")
    p.add_argument("--trust-remote-code", action="store_true", help="the file may run code: allow whole-module pickles, TorchScript and "
                   "torch.fx.wrap functions (docs/security.md)")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf weights (warns)")
    p.set_defaults(handler=run)


def _load(args: argparse.Namespace, console: Console) -> Any:
    target = Path(args.target)
    if target.is_dir():
        with console.step(f"loading {quote_path(target)}"):
            cm = load_compiled(target, args.trust_remote_code)
        return cm  # shapes and costs come from the artifact: nothing runs
    from autoglm.api.entry import compile as autoglm_compile

    with console.step(f"loading {quote_path(target)}"):
        loaded = load_model(target, factory=args.factory, trust_remote_code=args.trust_remote_code,
                            allow_nonfinite=args.allow_nonfinite)
    for w in loaded.warnings:
        console.warn(f"{quote_path(target)}: {w}")
    inputs = load_example_inputs(args.example_inputs) if args.example_inputs else loaded.example_inputs
    if inputs is None:
        raise UsageError(f"--example-inputs FILE is required: {quote_path(target)} carries no example inputs")
    with console.step("capturing and annotating"):
        return autoglm_compile(loaded.module, inputs.as_call(), passes="none")


def run(args: argparse.Namespace, console: Console) -> int:
    cm = _load(args, console)
    rows = cm.node_table()
    totals = {
        "nodes": len(rows),
        "flops": sum(r["flops"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "param_bytes": cm.parameter_bytes,  # stored tensors once (per-node param_bytes counts readers too)
        "captured_param_bytes": cm.captured_parameter_bytes,
        "estimated_s": sum(r["cost_s"] or 0.0 for r in rows),
        "partitions": sorted({r["partition"] for r in rows if r["partition"] is not None}),
    }
    passes = [r.name if hasattr(r, "name") else r["name"] for r in cm.records]  # loaded artifacts hold dicts
    text = cm.summary() + (f"\nestimated time {totals['estimated_s'] * 1e3:.3f} ms (cost model), "
                           f"parameters {cm.size_text()}, passes: {', '.join(passes) or 'none'}")
    data = {"ok": True, "frontend": cm.frontend, "totals": totals, "nodes": rows,
            "config": {k: v for k, v in cm.config.items() if k != "records"},
            "inputs": [{"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                       for t in cm.example_inputs if isinstance(t, torch.Tensor)]}
    console.result(text, data)
    return 0
