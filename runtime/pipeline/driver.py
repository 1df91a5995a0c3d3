"""Run a partitioned artifact as a pipeline of processes over ``torch.distributed``.

    from autoglm.runtime.pipeline.driver import run_pipeline
    outputs = run_pipeline("build/", [x], nproc=2, schedule="1f1b", microbatches=4)

``run_pipeline`` starts ``torchrun --standalone --nproc-per-node K`` on
``autoglm.runtime.pipeline.worker`` (one ``PipelineStage`` per process, gloo on
CPU, nccl on GPU), waits, and returns the last stage's flat outputs (merged
across microbatches along dim 0). It is what ``autoglm run DIR --nproc K`` calls.

Faults. The driver watches every stage's status file and process:

* a stage process that dies (signal or error) is reported with its rank, pid,
  signal, and last finished microbatch; the whole process group is then killed;
* a step that makes no progress for ``step_timeout_s`` (a hung stage) is reported
  the same way, naming the stage that finished the fewest microbatches;
* collectives themselves time out after ``step_timeout_s`` (never torch's
  30-minute default).

Both raise ``PipelineFault``. No worker outlives ``run_pipeline``, and its scratch
folder (``$TMPDIR/autoglm-pipe-*``, torchrun's own temporary files inside) is removed,
on every exit path: success, fault, error, Ctrl-C, and SIGTERM (which, where the caller
left Python's default, still ends the process, once the stages are down).

When one stage dies, torchrun stops the others with SIGTERM; the fault names the stage
that died first, never one of those (``_first_death``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from autoglm.artifacts.atomic import signals_deferred

__all__ = ["run_pipeline", "PipelineFault", "PipelineStats", "SCHEDULES"]

# The stage process module: launched by name, and how the driver recognises its stage processes.
WORKER_MODULE = "autoglm.runtime.pipeline.worker"

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
        step = f" of step {self.step}" if self.step is not None else ""  # None: died before its first record
        return (f"pipeline {where}{pid} {self.reason} {mb}{step}; other stages stopped "
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
                if WORKER_MODULE.encode() not in f.read():
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
        if any(WORKER_MODULE.encode() in a for a in args) and marker in args:
            found.add(int(entry.name))
    return found


def _kill_group(proc: subprocess.Popen, sdir: Path, nproc: int) -> None:
    # torchrun first: once it is gone it cannot start a stage after the sweep below (a driver
    # interrupted at start-up meets torchrun still spawning them); the stages it leaves are
    # found by their status records and command lines.
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _kill_workers(sdir, nproc)


def _exit_signal_from_log(log: str, rank: int) -> str | None:
    for r, code, _ in _failures_from_log(log):
        if r == rank and code < 0:
            return _signal_name(-code)
    return None


def _failures_from_log(log: str) -> list[tuple[int, int, int]]:
    """``(rank, exitcode, pid)`` of every failed stage in torchrun's failure summary:
    "rank : 1 (local_rank: 1)\n exitcode : -9 (pid: 123)"."""
    found = re.finditer(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)", log)
    return [(int(m.group(1)), int(m.group(2)), int(m.group(3))) for m in found]


def _stopped_by_torchrun(log: str) -> set[int]:
    """Pids torchrun sent its closing signal to: "Sending process 123 closing signal SIGTERM"."""
    return {int(pid) for pid in re.findall(r"Sending process (\d+) closing signal", log)}


def _first_death(log: str, status: dict[int, dict[str, Any]], observed: Sequence[int]
                 ) -> tuple[int, int | None, str | None] | None:
    """``(rank, pid, signal)`` of the stage that died first, or None when nothing says.

    Once one stage dies, torchrun stops the others with SIGTERM, so a dead stage is not
    necessarily the culprit: on a loaded machine the driver can see those deaths first,
    or only them (a stage killed at start-up, before its first status record). The one
    to name is a stage torchrun did not stop: in its failure summary, one killed by a
    signal torchrun did not send; else the first dead stage the driver saw that it did not stop.
    """
    stopped = _stopped_by_torchrun(log)
    order = {r: i for i, r in enumerate(observed)}
    killed = [f for f in _failures_from_log(log) if f[1] < 0 and f[2] not in stopped]
    if killed:
        rank, code, pid = min(killed, key=lambda f: order.get(f[0], len(order)))
        return rank, pid, _signal_name(-code)
    fallback = [r for r in observed if int(status.get(r, {}).get("pid", 0)) not in stopped] or list(observed)
    if not fallback:
        return None
    rank = fallback[0]
    pid = status.get(rank, {}).get("pid")
    return rank, int(pid) if pid else None, _exit_signal_from_log(log, rank)


def _wait_for_summary(proc: subprocess.Popen, log_path: Path, limit_s: float = 5.0) -> str:
    """torchrun's log once it has stopped the other stages and printed its failure summary
    (it exits right after), or as it is after ``limit_s`` (a stopped stage ignoring SIGTERM)."""
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        if "Root Cause" in log_path.read_text(errors="replace"):
            break
        time.sleep(0.1)
    return log_path.read_text(errors="replace")


def _death_fault(proc: subprocess.Popen, sdir: Path, nproc: int, observed: Sequence[int], log_path: Path,
                 seen_at: float) -> PipelineFault:
    log = _wait_for_summary(proc, log_path)
    status = _read_status(sdir, nproc)
    rank, pid, sig = _first_death(log, status, observed) or (observed[0] if observed else None, None, None)
    st = status.get(rank, {})
    return PipelineFault(rank, pid, sig, st.get("microbatch"), st.get("step"),
                         f"died{' from ' + sig if sig else ''}", time.monotonic() - seen_at, log[-3000:])


class _Terminated(BaseException):
    """SIGTERM while the stages run, for a caller that left Python's default (which ends the
    process on the spot, leaving torchrun, in its own session, and the stages running)."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Under Python's default SIGTERM, turn SIGTERM into an exception while the stages run, so
    the clean-up runs; then end the process from SIGTERM as the default would have. A handler
    the caller installed (the CLI's) is left to do its own job."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL):
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)  # stages and scratch are gone: now end as the default does
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _scratch_dir() -> Iterator[Path]:
    """``$TMPDIR/autoglm-pipe-*``, removed on every exit path (a signal included)."""
    work: Path | None = None
    try:
        with signals_deferred():  # created and known to the clean-up as one step
            work = Path(tempfile.mkdtemp(prefix="autoglm-pipe-"))
        yield work
    finally:
        if work is not None:
            with signals_deferred():  # a second Ctrl-C must not stop the removal halfway
                shutil.rmtree(work, ignore_errors=True)


def _run_torchrun(cmd: list[str], env: dict[str, str], log_path: Path, sdir: Path, nproc: int,
                  step_timeout_s: float, startup_timeout_s: float) -> tuple[int | None, PipelineFault | None]:
    """Start torchrun and watch it; returns its exit code and the fault to raise (or None).

    Whatever ends the watch (a fault, an error, Ctrl-C, SIGTERM), no stage outlives this call."""
    proc: subprocess.Popen | None = None
    with open(log_path, "wb") as log:
        try:
            with signals_deferred():  # no signal between starting torchrun and knowing its pid
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            fault = _watch(proc, sdir, nproc, step_timeout_s, startup_timeout_s, log_path)
        finally:
            if proc is not None:
                with signals_deferred():  # a second signal must not stop the teardown halfway
                    _kill_group(proc, sdir, nproc)
    return proc.returncode, fault


def run_pipeline(artifact_dir: str | os.PathLike, inputs: Sequence[torch.Tensor] | None = None, nproc: int = 2,
                 schedule: str = "gpipe", microbatches: int = 4, *, step_timeout_s: float = 60.0,
                 startup_timeout_s: float = 120.0, steps: int = 1, warmup: int = 0, threads: int = 1,
                 status_dir: str | os.PathLike | None = None, return_stats: bool = False,
                 torchrun_args: Sequence[str] = ()) -> Any:
    """Run the artifact's partitions as ``nproc`` pipeline stages; returns the flat outputs.

    ``inputs``: the flat input tensors (default: the artifact's example inputs);
    their dim 0 is split into ``microbatches`` equal pieces, or fewer when the batch
    needs it (``worker.effective_microbatches``: batch 1 runs as one, batch 6 of 4
    asked for as 3; ``PipelineStats.microbatches`` is the count used).
    ``step_timeout_s`` bounds a step (and each collective); ``startup_timeout_s``
    bounds process start and rendezvous. ``return_stats=True`` returns ``(outputs, PipelineStats)``.
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
    with _sigterm_unwinds(), _scratch_dir() as work:
        return _run_in(work, artifact_dir, inputs, nproc, schedule, microbatches, step_timeout_s,
                       startup_timeout_s, steps, warmup, threads, status_dir, return_stats, torchrun_args)


def _run_in(work: Path, artifact_dir: str | os.PathLike, inputs: Sequence[torch.Tensor] | None, nproc: int,
            schedule: str, microbatches: int, step_timeout_s: float, startup_timeout_s: float, steps: int,
            warmup: int, threads: int, status_dir: str | os.PathLike | None, return_stats: bool,
            torchrun_args: Sequence[str]) -> Any:
    sdir = Path(status_dir) if status_dir is not None else work / "status"
    sdir.mkdir(parents=True, exist_ok=True)
    out_file = work / "outputs.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "--max-restarts=0", "--monitor-interval=0.2", *torchrun_args,
           "-m", WORKER_MODULE, "--artifact", str(artifact_dir), "--out", str(out_file),
           "--schedule", schedule, "--microbatches", str(microbatches), "--steps", str(steps),
           "--warmup", str(warmup), "--step-timeout", str(step_timeout_s), "--status-dir", str(sdir),
           "--threads", str(threads)]
    if inputs is not None:
        from safetensors.torch import save_file

        save_file({f"input_{i}": t.detach().cpu().contiguous() for i, t in enumerate(inputs)},
                  str(work / "inputs.safetensors"))
        cmd += ["--inputs", str(work / "inputs.safetensors")]
    # TMPDIR inside the scratch folder: torchrun's own temporary folders (torchelastic_*, which
    # a killed torchrun leaves behind) go when it goes.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TMPDIR=str(work))
    log_path = work / "torchrun.log"
    t_start = time.monotonic()
    returncode, fault = _run_torchrun(cmd, env, log_path, sdir, nproc, step_timeout_s, startup_timeout_s)
    if fault is not None:
        raise fault
    if returncode != 0 or not out_file.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise PipelineFault(None, None, None, None, None, f"exited with code {returncode}", 0.0, tail)
    from safetensors.torch import load_file

    stored = load_file(str(out_file))
    outputs = tuple(stored[f"output_{i}"] for i in range(len(stored)))  # still readable once the scratch goes
    if not return_stats:
        return outputs
    status = _read_status(sdir, nproc)
    stats = PipelineStats(time.monotonic() - t_start, list(status.get(nproc - 1, {}).get("step_s", [])),
                          [float(status.get(r, {}).get("forward_s", 0.0)) for r in range(nproc)],
                          int(status.get(nproc - 1, {}).get("microbatches", microbatches)),  # as the stages ran
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
        dead = [r for r, st in sorted(status.items())
                if not st.get("done") and st.get("error") is None and not _alive(int(st["pid"]))]
        if dead:
            return _death_fault(proc, sdir, nproc, dead, log_path, now)
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
            if code == 0:
                return None
            if _first_death(log_path.read_text(errors="replace"), status, []) is not None:
                return _death_fault(proc, sdir, nproc, [], log_path, now)  # e.g. died before any status record
            return PipelineFault(None, None, None, None, None, f"torchrun exited with code {code}", 0.0,
                                 log_path.read_text(errors="replace")[-3000:])
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
