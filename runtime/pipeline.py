"""Run a partitioned artifact as a pipeline of processes over ``torch.distributed``.

    from autoglm.runtime.pipeline import run_pipeline
    outputs = run_pipeline("build/", [x], nproc=2, schedule="1f1b", microbatches=4)

``run_pipeline`` starts ``torchrun --standalone --nproc-per-node K`` on
``autoglm.runtime.pipeline_worker`` (one ``PipelineStage`` per process, gloo on
CPU, nccl on GPU), waits, and returns the last stage's flat outputs (merged
across microbatches along dim 0). It is what ``autoglm run DIR --nproc K`` calls.

Faults. The driver watches every stage's status file and process:

* a stage process that dies (signal or error) is reported with its rank, pid,
  signal, and last finished microbatch; the whole process group is then killed;
* a step that makes no progress for ``step_timeout_s`` (a hung stage) is reported
  the same way, naming the stage that finished the fewest microbatches;
* collectives themselves time out after ``step_timeout_s`` (never torch's
  30-minute default).

Both raise ``PipelineFault``; no worker outlives ``run_pipeline``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["run_pipeline", "PipelineFault", "PipelineStats", "SCHEDULES"]

SCHEDULES = ("gpipe", "1f1b")


@dataclass
class PipelineStats:
    wall_s: float  # whole run, including process start-up
    step_s: list[float]  # per measured step, on the last stage
    stage_forward_s: list[float]  # per stage: forward wall time summed over the measured steps
    microbatches: int
    schedule: str
    # Per stage: CPU time of the same forwards (the stage thread's). It leaves out time
    # the process waited for a core, which wall time counts on a shared machine.
    stage_forward_cpu_s: list[float] = field(default_factory=list)


@dataclass
class PipelineFault(RuntimeError):
    """A stage died or hung; the others were stopped."""

    stage: int | None
    pid: int | None
    signal: str | None  # "SIGKILL" or None for an exception/timeout
    last_microbatch: int | None  # last microbatch the stage finished in ``step`` (-1: none yet)
    step: int | None
    reason: str
    detected_after_s: float
    log_tail: str = field(default="", repr=False)

    def __str__(self) -> str:
        where = f"stage {self.stage}" if self.stage is not None else "a stage"
        pid = f" (pid {self.pid})" if self.pid else ""
        mb = ("before its first microbatch" if self.last_microbatch in (None, -1)
              else f"after finishing microbatch {self.last_microbatch}")
        return (f"pipeline {where}{pid} {self.reason} {mb} of step {self.step}; other stages stopped "
                f"(detected {self.detected_after_s:.1f} s after the fault)")


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _read_status(status_dir: Path, nproc: int, tries: int = 5) -> dict[int, dict[str, Any]]:
    """Each stage's last status record. A stage rewrites its record in place (one
    ``pwrite``), so a read can meet it half-written: read again, a write takes microseconds."""
    out = {}
    for r in range(nproc):
        p = status_dir / f"rank{r}.json"
        for attempt in range(tries):
            try:
                out[r] = json.loads(p.read_text())
                break
            except OSError:
                break
            except ValueError:
                time.sleep(0.002 * (attempt + 1))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def _kill_workers(sdir: Path, nproc: int) -> None:
    """SIGKILL every stage process still alive: torchrun starts workers in their own sessions,
    so killing torchrun's process group does not reach a hung (or stopped) worker.

    Pids come from the status records and, in case a record could not be read, from
    the processes whose command line names this run's status directory."""
    pids = {int(st.get("pid", 0)) for st in _read_status(sdir, nproc).values()} | _workers_of(sdir)
    killed = []
    for pid in pids:
        if pid <= 0 or not _alive(pid):
            continue
        try:  # guard against pid reuse: only a pipeline worker is ours to kill
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"pipeline_worker" not in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ProcessLookupError):
            pass
    # SIGKILL is delivered asynchronously: a loaded machine may take a moment to run the
    # exit. Return only once the workers are gone, so no stage outlives run_pipeline.
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)


def _workers_of(sdir: Path) -> set[int]:
    """Pids of pipeline workers started with ``--status-dir sdir`` (Linux /proc)."""
    marker = str(sdir).encode()
    found = set()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"pipeline_worker" in a for a in args) and marker in args:
            found.add(int(entry.name))
    return found


def _kill_group(proc: subprocess.Popen, sdir: Path, nproc: int) -> None:
    _kill_workers(sdir, nproc)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _exit_signal_from_log(log: str, rank: int) -> str | None:
    # torchrun's failure summary: "rank : 1 (local_rank: 1)\n exitcode : -9 (pid: 123)"
    for m in re.finditer(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", log):
        if int(m.group(1)) == rank and int(m.group(2)) < 0:
            return _signal_name(-int(m.group(2)))
    return None


def run_pipeline(artifact_dir: str | os.PathLike, inputs: Sequence[torch.Tensor] | None = None, nproc: int = 2,
                 schedule: str = "gpipe", microbatches: int = 4, *, step_timeout_s: float = 60.0,
                 startup_timeout_s: float = 120.0, steps: int = 1, warmup: int = 0, threads: int = 1,
                 status_dir: str | os.PathLike | None = None, return_stats: bool = False,
                 torchrun_args: Sequence[str] = ()) -> Any:
    """Run the artifact's partitions as ``nproc`` pipeline stages; returns the flat outputs.

    ``inputs``: the flat input tensors (default: the artifact's example inputs);
    their dim 0 is split into ``microbatches``. ``step_timeout_s`` bounds a step
    (and each collective); ``startup_timeout_s`` bounds process start and
    rendezvous. ``return_stats=True`` returns ``(outputs, PipelineStats)``.
    Raises ``PipelineFault`` when a stage dies or hangs, ``ValueError`` on bad arguments.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if nproc < 2:
        raise ValueError(f"a pipeline needs nproc >= 2 stage processes, got {nproc}; run single-process with autoglm.load")
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    if not (Path(artifact_dir) / "graph.json").is_file():
        raise ValueError(f"{artifact_dir} is not an autoglm artifact (no graph.json); save one with cm.save(dir)")
    work = Path(tempfile.mkdtemp(prefix="autoglm-pipe-"))
    sdir = Path(status_dir) if status_dir is not None else work / "status"
    sdir.mkdir(parents=True, exist_ok=True)
    out_file = work / "outputs.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--max-restarts=0", "--monitor-interval=0.2", *torchrun_args,
           "-m", "autoglm.runtime.pipeline_worker", "--artifact", str(artifact_dir), "--out", str(out_file),
           "--schedule", schedule, "--microbatches", str(microbatches), "--steps", str(steps),
           "--warmup", str(warmup), "--step-timeout", str(step_timeout_s), "--status-dir", str(sdir),
           "--threads", str(threads)]
    if inputs is not None:
        from safetensors.torch import save_file

        save_file({f"input_{i}": t.detach().cpu().contiguous() for i, t in enumerate(inputs)},
                  str(work / "inputs.safetensors"))
        cmd += ["--inputs", str(work / "inputs.safetensors")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log_path = work / "torchrun.log"
    t_start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            fault = _watch(proc, sdir, nproc, step_timeout_s, startup_timeout_s, log_path)
        finally:
            _kill_group(proc, sdir, nproc)  # whatever happened, no stage outlives this call
    if fault is not None:
        raise fault
    if proc.returncode != 0 or not out_file.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise PipelineFault(None, None, None, None, None, f"exited with code {proc.returncode}", 0.0, tail)
    from safetensors.torch import load_file

    stored = load_file(str(out_file))
    outputs = tuple(stored[f"output_{i}"] for i in range(len(stored)))
    if not return_stats:
        return outputs
    status = _read_status(sdir, nproc)
    stats = PipelineStats(time.monotonic() - t_start, list(status.get(nproc - 1, {}).get("step_s", [])),
                          [float(status.get(r, {}).get("forward_s", 0.0)) for r in range(nproc)], microbatches,
                          schedule, [float(status.get(r, {}).get("forward_cpu_s", 0.0)) for r in range(nproc)])
    return outputs, stats


def _hung_stage(sdir: Path, active: dict[int, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Which stage of a stalled pipeline is hung.

    A frozen process stops its heartbeat; stages waiting in a collective keep
    beating. Without a frozen one, the stage furthest behind holds the others up;
    on a tie the later stage, since an earlier one only stalls waiting for it.
    """
    now = time.time()
    beats = {}
    for r in active:
        try:
            beats[r] = now - (sdir / f"rank{r}.alive").stat().st_mtime
        except OSError:
            beats[r] = float("inf")
    frozen = [r for r, age in beats.items() if age > 2.0]
    if frozen and len(frozen) < len(active):
        r = min(frozen)
        return r, active[r]
    return min(active.items(), key=lambda kv: (kv[1].get("step", 0), kv[1].get("microbatch", -1), -kv[0]))


def _watch(proc: subprocess.Popen, sdir: Path, nproc: int, step_timeout_s: float, startup_timeout_s: float,
           log_path: Path) -> PipelineFault | None:
    """Poll until torchrun exits or a stage dies/hangs; returns the fault to raise (or None)."""
    started = time.monotonic()
    last_progress = started
    seen: dict[int, tuple] = {}
    while True:
        status = _read_status(sdir, nproc)
        now = time.monotonic()
        for r, st in status.items():
            key = (st.get("step"), st.get("microbatch"), st.get("done"))
            if seen.get(r) != key:
                seen[r] = key
                last_progress = now
        ready = len(status) == nproc
        for r, st in sorted(status.items()):
            if st.get("done"):
                continue
            if st.get("error") is None and not _alive(int(st["pid"])):
                log = log_path.read_text(errors="replace")
                # torchrun prints the exit code shortly after it notices; give it a moment
                sig = _exit_signal_from_log(log, r)
                deadline = time.monotonic() + 2.0
                while sig is None and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                    sig = _exit_signal_from_log(log_path.read_text(errors="replace"), r)
                return PipelineFault(r, int(st["pid"]), sig, st.get("microbatch"), st.get("step"),
                                     f"died{' from ' + sig if sig else ''}", time.monotonic() - now,
                                     log_path.read_text(errors="replace")[-3000:])
        errors = {r: st for r, st in status.items() if st.get("error")}
        if errors:
            # A stage that raised is often the victim of another's death: let that surface first.
            first = min(errors.items(), key=lambda kv: float(kv[1]["time"]))
            if proc.poll() is not None or time.time() - float(first[1]["time"]) > 2.0:
                r, st = first
                return PipelineFault(r, int(st["pid"]), None, st.get("microbatch"), st.get("step"),
                                     f"failed: {st['error']}", time.time() - float(st["time"]),
                                     log_path.read_text(errors="replace")[-3000:])
        code = proc.poll()
        if code is not None:
            if code != 0:
                return PipelineFault(None, None, None, None, None, f"torchrun exited with code {code}", 0.0,
                                     log_path.read_text(errors="replace")[-3000:])
            return None
        limit = step_timeout_s if ready else startup_timeout_s
        if now - last_progress > limit:
            active = {r: st for r, st in status.items() if not st.get("done")}
            if not active:
                r, st = None, {}
            else:
                r, st = _hung_stage(sdir, active)
            reason = (f"made no progress for {limit:.0f} s (hung)" if ready
                      else f"did not start within {limit:.0f} s")
            return PipelineFault(r, st.get("pid"), None, st.get("microbatch"), st.get("step"), reason,
                                 now - last_progress - limit, log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.1)
