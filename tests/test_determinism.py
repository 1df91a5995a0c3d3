"""Analytic plans are a function of the graph: the same from two fresh processes, whatever is cached."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PLAN = """
import json, torch, autoglm
from examples.graphs import ResNetCNN
torch.manual_seed(0)
model = ResNetCNN().eval()
cm = autoglm.compile(model, (torch.randn(2, 3, 32, 32),), passes="split_merge,partition(k=4)",
                     devices=["cpu"] * 4)
print(json.dumps({"plan": cm.notes["partition"]["plan"].to_json(),
                  "parts": [n.meta["autoglm"].partition for n in cm.graph_module.graph.nodes]}, default=str))
"""


def _plan(cache: Path, threads: str) -> dict:
    env = {**os.environ, "AUTOGLM_CACHE": str(cache), "OMP_NUM_THREADS": threads, "AUTOGLM_TEST_THREADS": threads}
    out = subprocess.run([sys.executable, "-c", _PLAN], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["plan"].pop("time_s")  # how long partitioning took: the one field that may differ
    return result


def test_same_plan_from_two_fresh_processes(tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    # A machine profile cached by an earlier run on a very different machine must not change the plan.
    for t in (1, 2):
        (odd / f"machine-{t}t.json").write_text(json.dumps(
            {"peak_flops": 1e9, "bandwidth": 1e12, "dispatch_s": 1e-3, "threads": t, "python_op_s": 1e-3}))
    first = _plan(tmp_path / "empty", "1")
    second = _plan(odd, "2")
    assert first == second
    assert len(set(p for p in first["parts"] if p is not None)) == 4
