"""``autoglm compile`` and ``autoglm demo``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves

from autoglm.cli import hf_compile
from autoglm.cli.common import CliError, Console, OutputPlan, UsageError, one_line, quote_path
from autoglm.api.config_file import CompileConfig, apply_overrides, dynamic_from_value, load_config, passes_from_value
from autoglm.loading.model_files import ExampleInputs, load_example_inputs, load_model

__all__ = ["add_parser", "add_demo_parser", "run", "run_demo", "compile_to_dir"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compile", parents=parents, help="compile a saved model into an artifact folder",
                       description="Capture MODEL, run a pass pipeline over its graph, and write an artifact.")
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help=".pt2 (torch.export.save) or a .safetensors/.pt state dict (or --hf-model DIR instead)")
    hf_compile.add_flags(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--passes", metavar="SPEC", help="pass spec, e.g. 'dce,partition(k=2)'; 'default' or 'none'")
    how.add_argument("--config", metavar="FILE", help="TOML/YAML/JSON config (same pass names and options)")
    p.add_argument("--set", metavar="PASS.OPTION=VALUE", action="append", default=[], dest="sets",
                   help="override a pass option or setting (repeatable; applied last)")
    p.add_argument("--example-inputs", metavar="FILE", help="inputs as .pt (tensors only), .npz or .safetensors; "
                   "defaults to the inputs saved in a .pt2 archive")
    p.add_argument("--out", metavar="DIR", required=True, help="artifact folder to write (atomically)")
    p.add_argument("--report", metavar="FILE", help="also write the HTML report here")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="report: do not measure accuracy and latency against eager (on by default)")
    p.add_argument("--devices", metavar="LIST", help="comma-separated devices for partitions, e.g. cpu,cpu")
    p.add_argument("--frontend", choices=["auto", "symbolic", "export"], help="capture frontend (default auto)")
    p.add_argument("--verify", action="store_true", help="check outputs against eager after every pass")
    p.add_argument("--dynamic", metavar="SPEC",
                   help="dims that may change between calls: auto (default: batch and sequence), static, or "
                        "'input_ids:0=batch,1=seq[1:512];attention_mask:0=batch,1=seq' (docs/dynamic_shapes.md)")
    _add_loading_flags(p)
    p.set_defaults(handler=run)


def _add_loading_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="factory", metavar="PKG.MODULE:FACTORY",
                   help="function that builds the model a state dict is loaded into")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow whole-module pickles and TorchScript (runs code from the file)")
    p.add_argument("--allow-nonfinite", action="store_true", help="compile weights containing NaN/Inf (warns)")


def add_demo_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", parents=parents, help="compile the built-in small transformer end to end",
                       description="Compile the built-in example model with the default passes on two CPU "
                                   "devices; write the artifact and the report.")
    p.add_argument("--out", metavar="DIR", default="autoglm-demo", help="artifact folder (default ./autoglm-demo)")
    p.add_argument("--devices", metavar="LIST", default="cpu,cpu", help="devices (default cpu,cpu)")
    p.set_defaults(handler=run_demo)


def _devices(text: str | None) -> list[str] | None:
    if text is None:
        return None
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise UsageError("--devices must list at least one device, e.g. --devices cpu,cpu")
    for d in devices:
        try:
            torch.device(d)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"--devices: {d!r} is not a torch device ({one_line(exc)})") from exc
    return devices


def _config_from_args(args: argparse.Namespace) -> CompileConfig:
    cfg = load_config(args.config) if args.config else CompileConfig(source="command line")
    if args.passes is not None:
        cfg.passes = passes_from_value(args.passes, "--passes")
    devices = _devices(args.devices)
    if devices:
        cfg.devices = devices
    if args.frontend:
        cfg.frontend = args.frontend
    if args.dynamic is not None:
        cfg.dynamic = dynamic_from_value(args.dynamic, "--dynamic")
    if args.verify:
        cfg.verify = True
    return apply_overrides(cfg, args.sets)


def _report_writer() -> Callable[[Any, Path], None]:
    try:
        from autoglm.report import write_report
    except ImportError as exc:
        raise CliError("--report needs autoglm.report.write_report, which this build does not have; "
                       "compile without --report") from exc
    return write_report


def _check_runs(model: nn.Module, inputs: ExampleInputs) -> None:
    """Run the model once eagerly so input mistakes surface as such, not as capture failures."""
    try:
        with torch.no_grad():
            model(*inputs.args, **inputs.kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever the user's model raises
        raise CliError(f"the model fails on the example inputs ({inputs.describe()}): "
                       f"{type(exc).__name__}: {one_line(exc)}") from exc


def _max_abs_diff(a: Any, b: Any) -> float | None:
    la = [t for t in tree_leaves(a) if isinstance(t, torch.Tensor)]
    lb = [t for t in tree_leaves(b) if isinstance(t, torch.Tensor)]
    if len(la) != len(lb) or not la:
        return None
    diffs = [float((x.double() - y.double()).abs().max()) for x, y in zip(la, lb)
             if x.shape == y.shape and x.numel() and x.is_floating_point()]
    return max(diffs) if diffs else 0.0


def compile_to_dir(model: nn.Module, inputs: ExampleInputs, cfg: CompileConfig, out: str, report: str | None,
                   console: Console, source: dict[str, Any], additions: Any = None,
                   measure: bool = True) -> dict[str, Any]:
    """Compile, check against eager, write artifact (+ report) atomically; return the result record.

    ``additions`` (``hf_compile.ArtifactAdditions``): ``before_save(cm)`` may refuse the result
    or add to it and to ``cm.config``; ``after_save(staged_dir)`` writes extra files into the
    staged artifact, so they land with it or not at all."""
    from autoglm.api.entry import compile as autoglm_compile

    pipeline = cfg.build_pipeline()  # bad names/options fail before any work
    writer = _report_writer() if report else None
    with OutputPlan() as plan:
        staged_out = plan.directory(out, "--out folder")
        staged_report = plan.file(report, "--report file") if report else None
        _check_runs(model, inputs)
        names = ", ".join(p.name for p in pipeline) or "none"
        with console.step(f"compiling: capture, annotate, passes [{names}]"):
            cm = autoglm_compile(model, inputs.as_call(), passes=pipeline, devices=cfg.devices,
                                 frontend=cfg.frontend, verify=cfg.verify, cost=cfg.cost, backend=cfg.backend,
                                 dynamic=cfg.dynamic)
        for r in cm.records:
            console.info(f"  pass {r.spec}: {r.wall_s:.2f} s, nodes {r.nodes_before} -> {r.nodes_after}"
                         + ("" if r.modified else " (no change)"))
        with torch.no_grad():
            got, want = cm(*inputs.args, **inputs.kwargs), model(*inputs.args, **inputs.kwargs)
        diff = _max_abs_diff(got, want)
        # The Hugging Face path checks on held-out sentences itself (additions.before_save).
        check = _eager_check(got, want, pipeline, inputs, console) if additions is None else None
        cm.config["effective_config"] = cfg.effective(pipeline)
        cm.config["source"] = source
        extra = additions.before_save(cm) if additions is not None else {}
        with console.step(f"writing {quote_path(out)}"):
            cm.save(staged_out)
            if additions is not None:
                additions.after_save(staged_out)
        if writer is not None and staged_report is not None:
            with console.step(f"writing report {quote_path(report)}"):
                writer(cm, staged_report, model=model, measure=measure)
    result = {
        "ok": True, "out": str(Path(out).absolute()), "report": str(Path(report).absolute()) if report else None,
        "frontend": cm.frontend, "devices": cfg.devices or ["cpu"], "nodes": len(cm.graph_module.graph.nodes),
        "passes": [dataclasses.asdict(r) for r in cm.records], "max_abs_diff_vs_eager": diff,
        "eager_check": check.to_json() if check else None, "eager_check_line": check.line() if check else None,
        "timings": cm.notes.get("timings", {}), "effective_config": cm.config["effective_config"], **extra,
    }
    return result


def _eager_check(got: Any, want: Any, pipeline: list[Any], inputs: ExampleInputs, console: Console) -> Any:
    """Each output against eager in the metric users read (cosine and max abs diff, per output
    name), with a warning when a lossy pass misses its budget; None when outputs cannot be paired.
    Exact passes that change outputs beyond assert_close are a failure: nothing is written."""
    from autoglm.api.eager_check import EagerMismatchError, compare_outputs

    mask = inputs.kwargs.get("attention_mask")
    try:
        check = compare_outputs(got, want, pipeline, "the example inputs",
                                mask if isinstance(mask, torch.Tensor) else None)
    except EagerMismatchError:
        return None
    far = [d.text() for d in check.outputs if not d.close]
    if check.exact and far:
        raise CliError("exact passes changed the outputs beyond torch.testing.assert_close's tolerances ("
                       + "; ".join(far) + "); nothing was written (this is a bug: rerun with --verify to find "
                       "the pass)")
    if check.warning():
        console.warn(check.warning())
    return check


def _human(result: dict[str, Any], model: str) -> str:
    lines = [f"compiled {model} -> {quote_path(result['out'])} ({result['frontend']} frontend, "
             f"{result['nodes']} nodes, devices {','.join(result['devices'])})"]
    if result.get("eager_check_line"):
        lines.append(result["eager_check_line"])
    elif result["max_abs_diff_vs_eager"] is not None:
        lines.append(f"outputs vs eager: max abs diff {result['max_abs_diff_vs_eager']:.3g}")
    if result["report"]:
        lines.append(f"report: {quote_path(result['report'])}")
    return "\n".join(lines)


def _pt2_dynamic(asked: Any, in_file: dict[str, dict[int, Any]], model: str) -> Any:
    """A ``.pt2``'s graph is dynamic exactly where it was exported so: by default its dims are the
    file's; stated dims must be dynamic in the file, within its range; ``static`` fixes all."""
    if asked is False or (asked is None and not in_file):
        return False
    if asked is None:
        return {name: {d: (r.name, r.min, r.max) for d, r in per.items()} for name, per in in_file.items()}
    out: dict[str, dict[int, Any]] = {}
    for name, per in asked.items():
        for d, spec in per.items():
            have = in_file.get(name, {}).get(d)
            if have is None:
                raise UsageError(f"--dynamic: {quote_path(model)} fixes {name} dim {d}; export it with "
                                 f"torch.export.export(..., dynamic_shapes=...) to make it dynamic")
            label, lo, hi = spec if isinstance(spec, tuple) else (spec, have.min, have.max)
            if lo < have.min or (have.max is not None and (hi is None or hi > have.max)):
                raise UsageError(f"--dynamic: {name} dim {d} is exported for {have.text()} in {quote_path(model)}")
            out.setdefault(name, {})[d] = (label, lo, hi)
    return out


def _inputs_for(args: argparse.Namespace, loaded: Any) -> ExampleInputs:
    if loaded.example_inputs is not None:
        return loaded.example_inputs
    raise UsageError(f"--example-inputs FILE is required: {quote_path(args.model)} carries no example inputs")


def _run_hf(args: argparse.Namespace, console: Console) -> int:
    cfg = _config_from_args(args)
    pipeline = cfg.build_pipeline()  # fail fast on pass names/options, before loading anything
    pre = hf_compile.load(args, console)
    source = {"model": str(args.hf_model), "kind": "huggingface", "task": pre.task, "config_file": args.config,
              "overrides": list(args.sets)}
    additions = hf_compile.ArtifactAdditions(pre, pipeline, console)
    result = compile_to_dir(pre.model, ExampleInputs((), pre.example_inputs), cfg, args.out, args.report, console,
                            source, additions, measure=args.measure)
    console.result(hf_compile.human(result, args.hf_model), result)
    return 0


def run(args: argparse.Namespace, console: Console) -> int:
    if hf_compile.check_flags(args):
        return _run_hf(args, console)
    cfg = _config_from_args(args)
    cfg.build_pipeline()  # fail fast on pass names/options, before loading anything
    given = load_example_inputs(args.example_inputs) if args.example_inputs else None  # cheap: check first
    with console.step(f"loading {quote_path(args.model)}"):
        loaded = load_model(args.model, factory=args.factory, trust_remote_code=args.trust_remote_code,
                            allow_nonfinite=args.allow_nonfinite)
    for w in loaded.warnings:
        console.warn(f"{quote_path(args.model)}: {w}")
    inputs = given or _inputs_for(args, loaded)
    console.info(f"example inputs: {inputs.describe()}")
    if loaded.kind == "pt2":
        cfg.dynamic = _pt2_dynamic(cfg.dynamic, loaded.dynamic or {}, args.model)
    source = {"model": str(args.model), "kind": loaded.kind, "example_inputs": args.example_inputs,
              "factory": args.factory, "config_file": args.config, "overrides": list(args.sets)}
    result = compile_to_dir(loaded.module, inputs, cfg, args.out, args.report, console, source, measure=args.measure)
    console.result(_human(result, quote_path(args.model)), result)
    return 0


def run_demo(args: argparse.Namespace, console: Console) -> int:
    from autoglm.api.demo_models import small_transformer

    devices = _devices(args.devices) or ["cpu", "cpu"]
    model, example = small_transformer()
    cfg = CompileConfig(passes="default", devices=devices, source="autoglm demo")
    try:
        _report_writer()
        report: str | None = str(Path(args.out) / "report.html")
    except CliError:
        report = None
        console.warn("report skipped: autoglm.report.write_report is not available in this build")
    inputs = ExampleInputs(tuple(example), {})
    source = {"model": "autoglm.api.demo_models:small_transformer", "kind": "demo"}
    result = compile_to_dir(model, inputs, cfg, args.out, report, console, source)
    text = _human(result, "the demo transformer (autoglm.api.demo_models.small_transformer)")
    out, example_file = quote_path(args.out), quote_path(Path(args.out) / "example_inputs.safetensors")
    text += f"\nnext: autoglm inspect {out}   autoglm run {out} --inputs {example_file}"
    console.result(text, result)
    return 0
