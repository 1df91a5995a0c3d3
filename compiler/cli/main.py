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
rerun with ``--debug`` for the traceback); 130 interrupted by SIGINT (Ctrl-C), 143 by
SIGTERM, with nothing written. Every failure is one ``autoglm: error: ...`` line on
stderr. See docs/cli.md.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from typing import Any, NoReturn, Sequence

from autoglm.artifacts.atomic import INTERRUPT_SIGNALS
from autoglm.ir import progress
from autoglm.cli import compile_cmd, export_cmd, inspect_cmd, passes_cmd, report_cmd, run_cmd
from autoglm.cli.common import RUN, CliError, Console, Interrupted, UsageError, one_line, printable, quote_path

__all__ = ["main", "build_parser", "Interrupted", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERNAL",
           "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process SIGTERM ended
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: stdout's reader went away (| head)

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
    from autoglm._version import __version__

    parser.add_argument("--version", action="version", version=f"autoglm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS:
        cmd.add_parser(sub, [common])
    compile_cmd.add_demo_parser(sub, [common])
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoglm.artifacts.directory import ArtifactError
    from autoglm.capture import CaptureError
    from autoglm.driver.devices import DeviceError
    from autoglm.api.config_file import ConfigError
    from autoglm.artifacts.graph_json import UnsafeArtifactError
    from autoglm.ir.pass_base import PassError
    from autoglm.loading.model_files import ModelLoadError
    from autoglm.passes.spec import SpecError

    return (CliError, ModelLoadError, ConfigError, SpecError, CaptureError, PassError, ArtifactError,
            UnsafeArtifactError, DeviceError, OSError)


def _on_signal(signum: int, frame: Any) -> None:
    # Only the first signal interrupts. A second Ctrl-C, or the SIGTERM a supervisor sends
    # right after, would otherwise cut short the clean-up the first one started.
    for s in INTERRUPT_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    RUN.signum = signum  # kept: the exception may be swallowed on its way up (see RunState)
    raise Interrupted(signum)


def _install_signal_handlers() -> dict[int, Any]:
    """Route SIGINT and SIGTERM to ``Interrupted``; returns the handlers to put back.

    Only the main thread may install handlers (main() run from another thread keeps them as
    they are); a handler set from C (``getsignal`` gives None) could not be put back; and an
    ignored signal stays ignored (a shell's background job ignores SIGINT, as Python does)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {s: signal.getsignal(s) for s in INTERRUPT_SIGNALS}
    previous = {s: h for s, h in previous.items() if h not in (None, signal.SIG_IGN)}
    for s in previous:
        signal.signal(s, _on_signal)
    return previous


def _restore_signal_handlers(previous: dict[int, Any], exiting: bool) -> None:
    # The console script exits right after main() returns: a signal then has nothing left to
    # stop, and must not turn a finished command into a traceback. Called in-process
    # (tests, embedding), the caller gets its own handlers back.
    for s, handler in previous.items():
        signal.signal(s, signal.SIG_IGN if exiting else handler)


def _interrupted(console: Console) -> int:
    if RUN.written:  # the signal came once these were renamed into place: do not deny them
        message = (f"interrupted after writing {', '.join(quote_path(p) for p in RUN.written)} "
                   "(complete); nothing else was written")
    else:
        message = "interrupted; nothing was written"
    return _fail(console, message, EXIT_TERMINATED if RUN.signum == signal.SIGTERM else EXIT_INTERRUPTED)


def _fail(console: Console, message: str, code: int) -> int:
    """The one ``autoglm: error:`` line; with ``--json`` also a document on stdout, so a
    script reading stdout always gets one (``{"ok": false, ...}``) instead of nothing."""
    console.error(message)
    if console.json_mode:
        console.result("", {"ok": False, "error": printable(one_line(message)), "exit_code": code,
                            "written": [str(p) for p in RUN.written]})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (the console script passes it to ``sys.exit``)."""
    RUN.reset()
    previous = _install_signal_handlers()
    try:
        return _main(argv)
    except KeyboardInterrupt:  # the signal came after _main's own handling (e.g. while printing)
        return _interrupted(Console())
    finally:
        _restore_signal_handlers(previous, exiting=argv is None)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Known before parsing, so a usage error is reported in the form asked for too.
    console = Console(json_mode="--json" in argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if not getattr(args, "command", None):
            parser.print_usage(sys.stderr)
            return _fail(console, "no command given; run autoglm --help", EXIT_USAGE)
        console = Console(quiet=args.quiet, json_mode=args.json)
        with console.routed_warnings(), (progress.quiet() if args.quiet else contextlib.nullcontext()):
            code = int(args.handler(args, console) or EXIT_OK)
        RUN.check()  # a signal whose exception a library swallowed after the last safe point
        return code
    except BaseException as exc:  # noqa: BLE001 - the one place every failure becomes one line
        return _failure(exc, console, debug)


def _stdout_closed() -> int:
    """``autoglm inspect DIR | head``: the reader left. Say nothing (the result was only output,
    nothing is half-written) and exit as a process SIGPIPE ended would; stdout goes to
    /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    return EXIT_BROKEN_PIPE


def _failure(exc: BaseException, console: Console, debug: bool) -> int:
    if isinstance(exc, BrokenPipeError):
        return _stdout_closed()
    if isinstance(exc, KeyboardInterrupt) or RUN.signum is not None:
        # Ctrl-C or SIGTERM; staging is already cleaned up. Any other error after a signal is
        # its aftermath (a library swallowed the interrupt and failed half-initialised).
        return _interrupted(console)
    if isinstance(exc, UsageError):
        return _fail(console, str(exc), EXIT_USAGE)
    if not isinstance(exc, Exception):  # SystemExit, GeneratorExit: not failures to report
        raise exc
    if debug:
        traceback.print_exc()
    if isinstance(exc, _user_errors()):
        return _fail(console, one_line(exc), EXIT_FAILURE)
    return _fail(console, f"internal error: {type(exc).__name__}: {one_line(exc)} "
                 "(this is a bug; rerun with --debug for the traceback)", EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
