"""``autoglm report DIR [--out FILE]``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoglm.cli.common import CliError, Console, OutputPlan, load_compiled, quote_path

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", parents=parents, help="write the HTML report of a compiled artifact",
                       description="Write the HTML report (and its JSON twin) for an artifact folder.")
    p.add_argument("artifact", metavar="DIR", help="artifact folder written by autoglm compile --out")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="the artifact may run code: resolve torch.fx.wrap functions by importing them (docs/security.md)")
    p.add_argument("--out", metavar="FILE", help="report path (default DIR/report.html)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, console: Console) -> int:
    try:
        from autoglm.report import write_report
    except ImportError as exc:
        raise CliError("the report writer (autoglm.report.write_report) is not available in this build") from exc
    out = Path(args.out) if args.out else Path(args.artifact) / "report.html"
    if out.suffix != ".html":
        raise CliError(f"report path {quote_path(out)} must end in .html (the JSON twin is written beside it)")
    with OutputPlan() as plan:
        staged = plan.file(out, "report file")
        with console.step(f"loading {quote_path(args.artifact)}"):
            cm = load_compiled(args.artifact, args.trust_remote_code)
        with console.step(f"writing {quote_path(out)}"):
            write_report(cm, staged)
    data = {"ok": True, "report": str(out.absolute()), "json": str(out.absolute().with_suffix(".json"))}
    console.result(f"wrote {quote_path(out)}", data)
    return 0
