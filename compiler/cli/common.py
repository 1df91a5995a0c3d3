"""What every subcommand shares: errors, console output, atomic outputs, input loading.

Outputs are staged in hidden temporary folders next to their destination and
renamed into place only once everything a command writes is complete, so a
failure (or Ctrl-C, or SIGTERM) never leaves a half-written artifact, report or file.

Every stderr line is one line: control characters from user data (a file name
holding a newline or a terminal escape) are shown escaped, as ``repr`` does, so a
name can never start a line of its own (a forged ``autoglm: error:``).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, TextIO

import torch

from autoglm.capture.dynamic import check_call
from autoglm.artifacts.atomic import move_into, replace_dir, signals_deferred, staging_dir

__all__ = ["CliError", "UsageError", "Interrupted", "RUN", "Console", "OutputPlan", "one_line", "printable",
           "quote_path", "describe_tensors", "check_inputs_match", "load_compiled"]


class CliError(Exception):
    """A failure to report as one line with exit status 1 (bad input, failed step)."""


class UsageError(CliError):
    """The command line itself is wrong (exit status 2)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread like Ctrl-C so every ``finally`` runs:
    staging folders are removed and pipeline stages stopped. (Python's default SIGTERM
    ends the process on the spot, without any of that.)"""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunState:
    """What this CLI invocation has seen: the first SIGINT/SIGTERM, and the outputs it renamed
    into place. One per process, as signal handlers are; ``main()`` resets it.

    The exception a signal raises lands wherever the main thread happens to be, and library
    code can swallow it (torch's C++ does, inside its lazy imports) and go on half-initialised.
    So the signal is also recorded here: ``check()`` raises it again at the safe points (each
    progress step, before any output is renamed into place), and the CLI reports the
    interruption, not whatever confused error followed it.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.signum: int | None = None
        self.written: list[Path] = []

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


RUN = RunState()


def one_line(exc: BaseException | str) -> str:
    """Multi-line messages (capture errors list each frontend) folded into one line."""
    text = exc if isinstance(exc, str) else str(exc)
    parts = [p.strip() for p in text.strip().splitlines() if p.strip()]
    if not parts:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return "; ".join(parts)


def printable(text: str) -> str:
    """``text`` with every non-printable character (newline, CR, ESC, U+2028...) escaped as ``repr`` does."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def quote_path(path: str | os.PathLike) -> str:
    """A path for a message: as is, or ``repr``-quoted (control characters escaped) when it holds any."""
    text = os.fsdecode(path)
    return text if text.isprintable() else repr(text)


class Console:
    """Progress and warnings on stderr; results on stdout (JSON with ``--json``)."""

    def __init__(self, quiet: bool = False, json_mode: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None):
        self.quiet = quiet
        self.json_mode = json_mode
        self._out = out
        self._err = err
        self._seen_warnings: set[str] = set()

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    # Our own messages are one line; whatever user data they carry is escaped, never printed raw.
    # warn/error first fold multi-line exception text (capture errors list each frontend) into one.
    def info(self, msg: str) -> None:
        if not self.quiet:
            print(f"autoglm: {printable(msg)}", file=self.err, flush=True)

    def warn(self, msg: str) -> None:
        line = printable(one_line(msg))
        if line not in self._seen_warnings:
            self._seen_warnings.add(line)
            print(f"autoglm: warning: {line}", file=self.err, flush=True)

    def error(self, msg: str) -> None:
        print(f"autoglm: error: {printable(one_line(msg))}", file=self.err, flush=True)

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        """One line when a long step starts and one with its time when it ends.

        Step boundaries are safe points: an interrupt some library swallowed is raised here."""
        RUN.check()
        self.info(f"{label} ...")
        t0 = time.perf_counter()
        yield
        RUN.check()
        self.info(f"{label}: done in {time.perf_counter() - t0:.2f} s")

    def result(self, text: str, data: dict[str, Any]) -> None:
        if self.json_mode:
            print(json.dumps(data, indent=2, default=str), file=self.out, flush=True)
        elif text:
            print(text, file=self.out, flush=True)

    @contextmanager
    def routed_warnings(self) -> Iterator[None]:
        """Python warnings become one ``autoglm: warning:`` line each (shown once, not with --quiet)."""
        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
            if not self.quiet:
                self.warn(f"{category.__name__}: {message}")

        with warnings.catch_warnings():  # keeps Python's filters (DeprecationWarnings stay hidden)
            warnings.showwarning = show  # type: ignore[assignment]
            yield


def _nearest_existing(path: Path) -> Path:
    cur = path
    while not cur.exists():
        if cur.parent == cur:
            break
        cur = cur.parent
    return cur


def _nearest_missing(path: Path) -> Path:
    """The outermost folder of ``path`` that does not exist (what the user has to create)."""
    cur = path
    while not cur.parent.exists() and cur.parent != cur:
        cur = cur.parent
    return cur


class OutputPlan:
    """Stage every output of a command; ``commit()`` renames them into place.

    ``directory(final)`` and ``file(final)`` return staged paths to write to. A file
    planned inside a planned directory is written into that directory's staging
    copy, so it lands together with it.

    Signals (Ctrl-C, SIGTERM) never cut a staging step in half: creating a staging
    folder, the renames of ``commit()`` and the clean-up run whole, and the signal
    is raised once they are done. Nothing is renamed into place once a signal has
    come (``RUN.check()``); what was is listed in ``RUN.written``.
    """

    def __init__(self) -> None:
        self._dirs: dict[Path, Path] = {}  # final -> staged
        self._files: dict[Path, Path] = {}  # final -> staged temp folder holding it
        self._temps = ExitStack()  # the staging folders (atomic.staging_dir), removed on close

    def _stage_root(self, final: Path, what: str) -> Path:
        anchor = _nearest_existing(final.parent)
        where = f"{what} {quote_path(final)}"
        if not anchor.is_dir():
            raise CliError(f"cannot write {where}: {quote_path(anchor)} is a file, not a folder")
        if not os.access(anchor, os.W_OK | os.X_OK):
            raise CliError(f"cannot write {where}: {quote_path(anchor)} is not writable")
        try:
            return self._temps.enter_context(staging_dir(anchor, final.name, "autoglm-tmp-"))
        except OSError as exc:
            raise CliError(f"cannot write {where}: {exc.strerror or exc}") from exc

    def directory(self, final: str | os.PathLike, what: str = "output folder") -> Path:
        final = Path(final).absolute()
        if final.exists() and not final.is_dir():
            raise CliError(f"{what} {quote_path(final)} exists and is a file; choose a folder path")
        if final.is_dir() and any(final.iterdir()) and not (final / "graph.json").exists():
            raise CliError(f"{what} {quote_path(final)} exists and is not an autoglm artifact; refusing to replace it "
                           "(choose an empty or new folder)")
        staged = self._stage_root(final, what) / final.name
        self._dirs[final] = staged
        return staged

    def file(self, final: str | os.PathLike, what: str = "output file") -> Path:
        final = Path(final).absolute()
        if final.is_dir():
            raise CliError(f"{what} {quote_path(final)} is a folder; give a file path")
        for d, staged in self._dirs.items():
            if d in final.parents:
                target = staged / final.relative_to(d)
                target.parent.mkdir(parents=True, exist_ok=True)
                return target
        # A file's folder must exist, as for cp or torch.save (a typo in --onnx used to create
        # /nonexistent/dir); only an output folder (--out) creates its missing parents, and a
        # file may go into a folder that one creates (--out build/m --report build/m.html).
        missing = _nearest_missing(final.parent) if not final.parent.is_dir() else None
        if missing is not None and not any(missing in d.parents for d in self._dirs):
            raise CliError(f"cannot write {what} {quote_path(final)}: the folder {quote_path(missing)} does not "
                           "exist; create it first or choose another path")
        tmp = self._stage_root(final, what)
        self._files[final] = tmp
        return tmp / final.name

    def commit(self) -> None:
        RUN.check()  # a signal whose exception was swallowed still means: write nothing
        for final, staged in self._dirs.items():
            if not staged.exists():
                raise CliError(f"internal: {quote_path(final)} was planned but never written")
            replace_dir(staged, final)
            RUN.written.append(final)
        for final, tmp in self._files.items():
            move_into(tmp, final.parent)  # the file plus any sidecars (JSON twin, ONNX external data), together
            RUN.written.append(final)

    def cleanup(self) -> None:
        self._temps.close()

    def __enter__(self) -> "OutputPlan":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with signals_deferred():  # commit and clean-up run whole; a signal waits until both are done
            try:
                if exc_type is None:
                    self.commit()
            finally:
                self.cleanup()


def describe_tensors(tensors: Any) -> str:
    out = []
    for t in tensors:
        if isinstance(t, torch.Tensor):
            out.append(f"{str(t.dtype).replace('torch.', '')}[{'x'.join(map(str, t.shape))}]")
        else:
            out.append(type(t).__name__)
    return ", ".join(out)


def check_inputs_match(cm: Any, args: tuple, kwargs: dict, microbatches: int = 1) -> None:
    """Shapes a compiled graph cannot take fail here clearly instead of inside the graph.

    ``microbatches > 1`` (a pipeline run): dim 0 must split evenly, and one microbatch
    must match the compiled shapes (pipelines are compiled at microbatch size)."""
    try:
        flat = cm.signature.flatten_inputs(args, kwargs)
    except TypeError as exc:
        raise CliError(f"inputs do not match the compiled model: {exc}") from exc
    if microbatches > 1:
        for i, t in enumerate(flat):
            if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] % microbatches:
                raise CliError(f"input {i} ({describe_tensors([t])}): dim 0 does not split into "
                               f"--microbatches {microbatches} equal parts")
        flat = [t[: t.shape[0] // microbatches] for t in flat]
    expected = cm.example_inputs
    if len(flat) != len(expected):
        raise CliError(f"the compiled model takes {len(expected)} tensors ({describe_tensors(expected)}), "
                       f"got {len(flat)} ({describe_tensors(flat)})")
    per = " per microbatch" if microbatches > 1 else ""
    dims = getattr(cm, "dynamic_dims", None)  # a torch.export graph: its dynamic dims take any size in range
    for i, (got, want) in enumerate(zip(flat, expected)):
        if not isinstance(got, torch.Tensor) or got.dtype != want.dtype or (dims is None and got.shape != want.shape):
            raise CliError(f"input {i}: the model was compiled for {describe_tensors([want])}, got "
                           f"{describe_tensors([got])}{per}; compile again with inputs of this shape/dtype")
    if dims is not None:
        try:
            check_call(flat, expected, dims, cm.signature.input_names)
        except ValueError as exc:
            raise CliError(f"inputs do not fit the compiled model{per}: {exc}") from exc


def load_compiled(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """``autoglm.load`` with the artifact errors turned into one-line CLI errors."""
    from autoglm.api.entry import load

    p = Path(path)
    if not p.exists():
        raise CliError(f"artifact folder {quote_path(p)} does not exist")
    if not p.is_dir():
        raise CliError(f"{quote_path(p)} is a file; expected an artifact folder written by autoglm compile --out")
    from autoglm.artifacts.directory import ArtifactError
    from autoglm.artifacts.graph_json import UnsafeArtifactError

    try:
        return load(p, trust_remote_code=trust_remote_code)
    except (ArtifactError, UnsafeArtifactError):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged artifact fails in many ways
        raise CliError(f"cannot load artifact {quote_path(p)}: {type(exc).__name__}: {one_line(exc)}") from exc
