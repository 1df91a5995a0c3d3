"""Differential fuzzing in CI: 200 generated models through every configuration.

Longer campaigns: ``python -m tests.fuzz --cases 5000 --seed 1000``. Shrunk
failures found by campaigns live in tests/fuzz/regressions/ and replay here.
"""
import json
from pathlib import Path

import pytest

from tests.fuzz.campaign import check_program
from tests.fuzz.generator import Program, generate
from tests.fuzz.oracles import CONFIGS, available_configs

CI_CASES = 200
REGRESSIONS = sorted((Path(__file__).parent / "fuzz" / "regressions").glob("*.json"))


def _configs_for(i: int):
    # ONNX export (the file, and the onnxruntime backend) is the slowest oracle: every 4th case; the rest every case.
    return [c for c in available_configs() if not (c.onnx or c.backend == "onnxruntime") or i % 4 == 0]


@pytest.mark.parametrize("chunk", range(4))
def test_fuzz_campaign(chunk):
    per = CI_CASES // 4
    failures = []
    for i in range(chunk * per, (chunk + 1) * per):
        prog = generate(i, max_ops=40, branches=(i % 10 == 9))
        _, errors = check_program(prog, _configs_for(i))
        failures += [f"seed={i} {cfg}: {err.splitlines()[0][:200]}" for cfg, err in errors]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_regression(path):
    data = json.loads(path.read_text())
    prog = Program.from_json(data["program"])
    configs = [c for c in CONFIGS if c.passes == data["config"] or (c.onnx and data["config"] == "onnx")]
    configs = [c for c in configs if c in available_configs()]
    if not configs:
        pytest.skip(f"configuration {data['config']} not available in this build")
    checked, errors = check_program(prog, configs)
    assert checked
    assert not errors, errors


def test_generator_is_seeded_and_varied():
    a, b = generate(123), generate(123)
    assert a.to_json() == b.to_json()
    kinds = {op["op"] for i in range(200) for op in generate(i).ops}
    assert {"linear", "conv2d", "matmul", "bmm", "add", "mul", "cat", "chunk", "split", "reshape", "permute",
            "transpose", "layernorm", "softmax", "relu", "gelu", "tanh"} <= kinds
    assert "branch" in {op["op"] for i in range(50) for op in generate(i, branches=True).ops}
