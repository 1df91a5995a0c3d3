"""Progress bars for the library's long steps, and one switch that silences them.

Bars are tqdm's, shown on stderr only once a step has run for ``DELAY_S``
(tqdm's ``delay``): a fast compile prints nothing, an 18 s ONNX export or a
calibration over many batches shows where it is. ``quiet()`` (what ``autoglm -q``
uses) or ``AUTOGLM_PROGRESS=0`` in the environment turns every bar off.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterable, Iterator, Sequence

__all__ = ["DELAY_S", "enabled", "quiet", "bar", "stages"]

DELAY_S = 2.0
_quiet_depth = 0


def enabled() -> bool:
    return _quiet_depth == 0 and os.environ.get("AUTOGLM_PROGRESS", "1") != "0"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars inside this block (nests)."""
    global _quiet_depth
    _quiet_depth += 1
    try:
        yield
    finally:
        _quiet_depth -= 1


def bar(iterable: Iterable[Any], desc: str, show: bool = True, total: int | None = None) -> Any:
    """``iterable`` wrapped in a transient tqdm bar (nothing when quiet or ``show`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not (show and enabled()), leave=False, delay=DELAY_S)


class _Stages:
    def __init__(self, desc: str, names: Sequence[str]):
        from tqdm.auto import tqdm

        self._desc = desc
        self._names = list(names)
        self._done = 0
        self._bar = tqdm(total=len(self._names), desc=desc, disable=not enabled(), leave=False, delay=DELAY_S,
                         bar_format="{desc} [{elapsed}]")
        self._show()
        # tqdm draws a delayed bar only on an update; one stage (torch.onnx.export) can take
        # most of the time, so a ticker redraws it each second once the delay has passed.
        self._closed = threading.Event()
        if not self._bar.disable:
            threading.Thread(target=self._tick, name="autoglm-progress", daemon=True).start()

    def _tick(self) -> None:
        if self._closed.wait(DELAY_S):
            return
        while not self._closed.is_set():
            self._bar.refresh()
            self._closed.wait(1.0)

    def _show(self) -> None:
        if self._done < len(self._names):
            step = f"step {self._done + 1}/{len(self._names)}: {self._names[self._done]}"
            self._bar.set_description_str(f"{self._desc}, {step}", refresh=False)

    def next(self) -> None:
        """The current stage is done; the bar moves to the next name."""
        self._done += 1
        self._show()
        self._bar.update(1)

    def close(self) -> None:
        self._closed.set()
        self._bar.close()


@contextlib.contextmanager
def stages(desc: str, names: Sequence[str]) -> Iterator[_Stages]:
    """A bar over named stages of one long step: ``with stages("onnx export", [...]) as s: ...; s.next()``."""
    s = _Stages(desc, names)
    try:
        yield s
    finally:
        s.close()
