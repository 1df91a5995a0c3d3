"""Pipeline executor over torch.distributed: 2 stage processes on CPU (gloo), GPipe and 1F1B, faults.

Each test starts torchrun (about 10-15 s of process start-up on a loaded 2-core machine).
"""
import os
import signal
import threading
import time

import pytest
import torch

import autoglm
from autoglm.runtime.pipeline.driver import PipelineFault, run_pipeline
from examples.models import small_transformer


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model, inputs = small_transformer(batch=8)
    cm = autoglm.compile(model, inputs, passes="partition(k=2,contiguous=True)", devices=["cpu", "cpu"])
    path = tmp_path_factory.mktemp("pipe") / "art"
    cm.save(path)
    with torch.no_grad():
        ref = model(*inputs)
    return path, list(inputs), ref


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stage_pipeline_matches_eager(artifact, schedule):
    path, inputs, ref = artifact
    outputs, stats = run_pipeline(path, inputs, nproc=2, schedule=schedule, microbatches=4, step_timeout_s=30,
                                  return_stats=True)
    torch.testing.assert_close(outputs[0], ref)
    assert stats.schedule == schedule and len(stats.step_s) == 1
    assert all(s > 0 for s in stats.stage_forward_s)


def _wait_for(status_dir, rank, min_step, timeout=90.0):
    import json

    path = status_dir / f"rank{rank}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = json.loads(path.read_text())
            if st["step"] >= min_step:
                return st
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"rank {rank} never reached step {min_step}")


def _run_with_fault(artifact, tmp_path, sig, step_timeout_s):
    path, inputs, _ = artifact
    status_dir = tmp_path / "status"
    caught = {}

    def drive():
        try:
            run_pipeline(path, inputs, nproc=2, schedule="gpipe", microbatches=4, steps=100000,
                         step_timeout_s=step_timeout_s, status_dir=status_dir)
        except PipelineFault as fault:
            caught["fault"] = fault
            caught["at"] = time.monotonic()

    driver = threading.Thread(target=drive)
    driver.start()
    st = _wait_for(status_dir, 1, min_step=3)
    pids = [_wait_for(status_dir, r, 0)["pid"] for r in (0, 1)]
    injected = time.monotonic()
    os.kill(st["pid"], sig)
    driver.join(timeout=60)
    assert not driver.is_alive(), "run_pipeline did not return after the fault"
    return caught, injected, pids


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_killed_stage_is_reported_within_10s_and_nothing_is_left(artifact, tmp_path):
    caught, injected, pids = _run_with_fault(artifact, tmp_path, signal.SIGKILL, step_timeout_s=30)
    fault = caught.get("fault")
    assert fault is not None, "no PipelineFault raised"
    assert fault.stage == 1 and fault.signal == "SIGKILL"
    assert fault.last_microbatch is not None and fault.step >= 3
    assert caught["at"] - injected < 10.0
    assert "stage 1" in str(fault)
    assert all(_gone(p) for p in pids), "a stage process outlived run_pipeline"


def test_hung_stage_hits_the_step_deadline(artifact, tmp_path):
    caught, injected, pids = _run_with_fault(artifact, tmp_path, signal.SIGSTOP, step_timeout_s=3)
    fault = caught.get("fault")
    assert fault is not None, "no PipelineFault raised"
    assert fault.stage == 1 and "no progress" in fault.reason
    assert caught["at"] - injected < 10.0
    assert all(_gone(p) for p in pids), "a stage process outlived run_pipeline"
