"""Shrink a failing program: drop ops (and what depends on them) while it still fails."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Callable

from tests.fuzz.generator import Program

__all__ = ["shrink", "write_regression"]

REGRESSIONS = Path(__file__).resolve().parent / "regressions"


def _drop(prog: Program, k: int) -> Program | None:
    """``prog`` without op ``k`` and every op that (transitively) reads it; None if empty."""
    n_in = len(prog.inputs)
    dead = {n_in + k}
    keep_ops: list[tuple[int, dict]] = []
    for i, op in enumerate(prog.ops):
        v = n_in + i
        if v in dead or any(r in dead for r in op["in"]):
            dead.add(v)
            continue
        keep_ops.append((v, op))
    if not keep_ops:
        return None
    remap = {v: v for v in range(n_in)}
    for new_i, (v, _) in enumerate(keep_ops):
        remap[v] = n_in + new_i
    ops = []
    for v, op in keep_ops:
        op = copy.deepcopy(op)
        op["in"] = [remap[r] for r in op["in"]]
        ops.append(op)
    outputs = [remap[o] for o in prog.outputs if o in remap and o >= n_in]
    if not outputs:
        outputs = [n_in + len(ops) - 1]
    return Program([list(s) for s in prog.inputs], ops, outputs, prog.seed)


def shrink(prog: Program, fails: Callable[[Program], bool], max_rounds: int = 50) -> Program:
    """Greedy delta-debugging over ops and outputs; ``fails(p)`` re-runs the oracle."""
    current = prog
    for _ in range(max_rounds):
        progress = False
        for k in reversed(range(len(current.ops))):
            candidate = _drop(current, k)
            if candidate is not None and fails(candidate):
                current, progress = candidate, True
                break
        if not progress and len(current.outputs) > 1:
            for j in range(len(current.outputs)):
                candidate = Program(current.inputs, current.ops, current.outputs[:j] + current.outputs[j + 1:],
                                    current.seed)
                if fails(candidate):
                    current, progress = candidate, True
                    break
        if not progress:
            return current
    return current


def write_regression(prog: Program, config: str, error: str) -> Path:
    """Keep a shrunk failing case as data; tests/test_fuzz.py replays every file here."""
    REGRESSIONS.mkdir(exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", config).strip("_")
    path = REGRESSIONS / f"seed{prog.seed}_{slug}.json"
    path.write_text(json.dumps({"config": config, "error": error[:500], "program": prog.to_json()}, indent=1))
    return path
