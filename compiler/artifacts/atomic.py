"""Writing outputs whole or not at all: the one helper every writer uses.

Every output autoglm writes (artifact folders, saved programs, ONNX files with
their external ``.data``, a report and its JSON twin, the CLI's outputs) is
written into a hidden staging folder beside its destination and moved into
place only when complete:

    with staging_dir(final_parent, "model.onnx") as tmp:   # removed on every exit
        write tmp/model.onnx, tmp/model.onnx.data
        move_into(tmp, final_parent)                       # all files, or none

``replace_dir`` swaps a whole directory; ``move_into`` moves several files that
belong together: the old ones are moved aside first and put back if a move
fails, so a model and its ``.data`` are never left half-replaced. Signals wait
(``signals_deferred``) while a swap or a clean-up runs, so Ctrl-C cannot land
between two renames. Before this module the same pattern was written five
times, and the ONNX writers moved files one by one.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["signals_deferred", "staging_dir", "replace_dir", "move_into", "INTERRUPT_SIGNALS"]

INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them as they would have been.

    Python runs signal handlers between bytecodes, so a Ctrl-C could otherwise land
    between two renames or halfway through removing a staging folder and leave it
    behind. Only the main thread runs Python handlers (and can install them); in any
    other thread the block cannot be interrupted by them and runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.getsignal(s) for s in INTERRUPT_SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: a C-level handler, left alone
    for s in previous:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            _deliver(s, previous[s])


def _deliver(signum: int, handler: Callable[..., Any] | int) -> None:
    if callable(handler):
        handler(signum, None)  # e.g. raises KeyboardInterrupt, now that the block is done
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action: the process ends here
    # SIG_IGN: the signal was to be ignored anyway


@contextmanager
def staging_dir(parent: Path, name: str, prefix: str = "") -> Iterator[Path]:
    """A hidden folder ``parent/.NAME.*`` to write into; removed on every exit (moved contents are gone)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with signals_deferred():  # created and recorded together, so the clean-up always knows it
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{prefix}", dir=parent))
        yield tmp
    finally:
        if tmp is not None:
            with signals_deferred():  # a second Ctrl-C must not stop the removal halfway
                shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(staged: Path, final: Path) -> None:
    """Move a fully written ``staged`` directory to ``final``, replacing what was there.

    The old directory is renamed aside first and removed only after the new one is
    in place, so ``final`` is at every moment either the old or the new whole tree.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():
        if not final.exists():
            staged.rename(final)
            return
        backup = final.with_name(f".{final.name}.autoglm-old")
        shutil.rmtree(backup, ignore_errors=True)
        final.rename(backup)
        try:
            staged.rename(final)
        except BaseException:
            backup.rename(final)  # put the old tree back rather than leave nothing
            raise
        shutil.rmtree(backup, ignore_errors=True)


def move_into(staged: Path, dest: Path) -> list[Path]:
    """Move every entry of ``staged`` into ``dest`` as one unit; returns the destinations.

    Entries already at the destinations are moved aside first; if any move fails,
    the new entries are taken out again and the old ones put back.
    """
    dest.mkdir(parents=True, exist_ok=True)
    entries = sorted(staged.iterdir())
    moved: list[tuple[Path, Path, Path | None]] = []  # (new place, staged place, backup of the old one)
    with signals_deferred():
        try:
            for entry in entries:
                target = dest / entry.name
                backup = None
                if target.exists() or target.is_symlink():
                    backup = staged / f".{entry.name}.autoglm-old"
                    os.replace(target, backup)
                moved.append((target, entry, backup))
                os.replace(entry, target)
        except BaseException:
            for target, entry, backup in reversed(moved):
                if target.exists() and not entry.exists():
                    os.replace(target, entry)
                if backup is not None and backup.exists():
                    os.replace(backup, target)
            raise
        for _, _, backup in moved:
            if backup is not None:
                _remove(backup)
    return [dest / e.name for e in entries]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
