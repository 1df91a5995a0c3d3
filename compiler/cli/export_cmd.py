"""``autoglm export DIR --onnx FILE``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoglm.cli.common import CliError, Console, OutputPlan, UsageError, load_compiled, one_line, quote_path

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", parents=parents, help="export a compiled artifact to ONNX",
                       description="Export an artifact folder to an ONNX file, checked in onnxruntime.")
    p.add_argument("artifact", metavar="DIR", help="artifact folder written by autoglm compile --out")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the artifact may run code: resolve torch.fx.wrap functions by importing them (docs/security.md)")
    p.add_argument("--onnx", metavar="FILE", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ai.onnx opset (default: the exporter's)")
    p.add_argument("--static", action="store_true", help="export fixed shapes (no dynamic batch/sequence axes)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if Path(args.onnx).suffix != ".onnx":
        raise UsageError(f"--onnx {quote_path(args.onnx)}: the file name must end in .onnx")
    try:
        from autoglm.export.onnx.export import export_onnx
    except ImportError as exc:
        raise CliError("ONNX export (autoglm.export.onnx.export) is not available in this build") from exc
    options: dict[str, Any] = {}
    if args.opset is not None:
        options["opset"] = args.opset
    if args.static:
        options["dynamic"] = False
    with OutputPlan() as plan:
        staged = plan.file(args.onnx, "--onnx file")
        with console.step(f"loading {quote_path(args.artifact)}"):
            cm = load_compiled(args.artifact, args.trust_remote_code)
        with console.step(f"exporting to {quote_path(args.onnx)} (with onnxruntime parity checks)"):
            try:
                result = export_onnx(cm, staged, **options)
            except (ValueError, RuntimeError, TypeError) as exc:  # OnnxExportError and friends
                raise CliError(f"ONNX export failed: {type(exc).__name__}: {one_line(exc)}") from exc
    data = result.to_json() if hasattr(result, "to_json") else {}
    data = {**data, "ok": True, "path": str(Path(args.onnx).absolute())}
    folder = Path(args.onnx).absolute().parent  # sidecars were moved next to the .onnx with it
    data["external_data"] = [str(folder / Path(f).name) for f in data.get("external_data", [])]
    console.result(f"wrote {quote_path(args.onnx)}", data)
    return 0
