"""``autoglm``: the command-line interface.

    autoglm compile MODEL (--passes SPEC | --config FILE) [--set pass.option=value ...]
                    [--example-inputs FILE] --out DIR [--report FILE] [--devices cpu,cpu]
    autoglm run DIR --inputs FILE [--output FILE] [--nproc K]
    autoglm export DIR --onnx FILE
    autoglm inspect MODEL|DIR
    autoglm passes
    autoglm report DIR [--out FILE]
    autoglm demo [--out DIR]

Exit status: 0 success; 1 the input or a step failed (bad file, unsafe file,
unknown pass, capture or pass failure); 2 usage error; 3 internal error (a bug:
rerun with ``--debug`` for the traceback); 130 interrupted. Every failure is one
``autoglm: error: ...`` line on stderr. See docs/cli.md.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import NoReturn, Sequence

from autoglm.cli import compile_cmd, export_cmd, inspect_cmd, passes_cmd, report_cmd, run_cmd
from autoglm.cli.common import CliError, Console, UsageError, one_line

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERNAL"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

COMMANDS = (compile_cmd, run_cmd, export_cmd, inspect_cmd, passes_cmd, report_cmd)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not the usage block) and never exits the caller."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    common.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    common.add_argument("--debug", action="store_true", help="show the Python traceback on failure")
    parser = _Parser(prog="autoglm", description="Open-AutoGLM: a graph-rewriting compiler for PyTorch models.")
    from autoglm import __version__

    parser.add_argument("--version", action="version", version=f"autoglm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS:
        cmd.add_parser(sub, [common])
    compile_cmd.add_demo_parser(sub, [common])
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoglm.artifacts import ArtifactError
    from autoglm.capture import CaptureError
    from autoglm.config_file import ConfigError
    from autoglm.graph_io import UnsafeArtifactError
    from autoglm.ir.pass_base import PassError
    from autoglm.model_loading import ModelLoadError
    from autoglm.spec import SpecError

    return (CliError, ModelLoadError, ConfigError, SpecError, CaptureError, PassError, ArtifactError,
            UnsafeArtifactError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to ``sys.exit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console()
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if not getattr(args, "command", None):
            parser.print_usage(sys.stderr)
            console.error("no command given; run autoglm --help")
            return EXIT_USAGE
        console = Console(quiet=args.quiet, json_mode=args.json)
        with console.routed_warnings():
            return int(args.handler(args, console) or EXIT_OK)
    except UsageError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.error("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes one line
        if debug:
            traceback.print_exc()
        if isinstance(exc, _user_errors()):
            console.error(one_line(exc))
            return EXIT_FAILURE
        console.error(f"internal error: {type(exc).__name__}: {one_line(exc)} "
                      "(this is a bug; rerun with --debug for the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
