"""Run the driver on one hostile input in a fresh process and check what every reader did."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMORY_CAP = 6 << 30  # address space per process: far above what the readers need, far below a bomb


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_driver(kind: str, paths: list[Path], outdir: Path, timeout: float = 300) -> tuple[list[list[dict]], float]:
    """Results per path (``outdir/i`` is the i-th path's output folder) and the wall time."""
    outdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AUTOGLM_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.hostile.driver", kind, str(outdir), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=_limit_memory)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), elapsed


def assert_refused(results: list[dict], canary: Path, outdir: Path) -> None:
    """Every reader refused: no canary, exit 1, one ``autoglm: error:`` line, no output written."""
    assert not canary.exists(), "the payload ran"
    for r in results:
        assert r["code"] not in (0, 3) and not str(r["code"]).startswith("escaped"), r
        if r["argv"][0] != "autoglm.load":
            assert r["code"] == 1, r
            errors = [line for line in r["stderr"] if line.startswith("autoglm: error: ")]
            assert len(errors) == 1, r  # progress lines may precede it; nothing else (no traceback)
            assert all(line.startswith("autoglm: ") for line in r["stderr"]), r
    leftovers = [p.name for p in outdir.iterdir() if p.name not in ("x.pt",)]
    assert not leftovers, leftovers
