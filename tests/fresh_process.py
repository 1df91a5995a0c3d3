"""Checks that load an artifact in a new interpreter, one that never imported the test's modules."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn

_LOAD_AND_COMPARE = ("import sys, torch, autoglm\n"
                     "d = torch.load(sys.argv[2], weights_only=True)\n"
                     "m = autoglm.load(sys.argv[1])\n"
                     "with torch.no_grad():\n"
                     "    for x, r in zip(d['xs'], d['refs']):\n"
                     "        torch.testing.assert_close(m(x), r)\n")


def assert_loads_like_eager(tmp_path: Path, name: str, model: nn.Module, xs: list[torch.Tensor]) -> None:
    """``autoglm.load(tmp_path / name)`` in a fresh process gives ``model(x)`` for every ``x``."""
    with torch.no_grad():
        torch.save({"xs": xs, "refs": [model(x) for x in xs]}, tmp_path / "data.pt")
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_COMPARE, str(tmp_path / name), str(tmp_path / "data.pt")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
