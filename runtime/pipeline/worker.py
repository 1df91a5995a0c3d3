"""One pipeline stage process; ``torchrun`` starts one per stage.

    torchrun --nproc-per-node 2 -m autoglm.runtime.pipeline.worker --artifact build/ \
        --inputs x.safetensors --out y.safetensors --schedule 1f1b --microbatches 4

Rank ``r`` runs stage ``r`` of the artifact's partitions (``extract_stages``)
as a ``torch.distributed.pipelining.PipelineStage`` under GPipe or 1F1B,
forward only. Rank 0 reads the inputs; the last rank writes the outputs. Every
rank writes ``rank<r>.json`` into ``--status-dir`` after each microbatch (pid,
step, last finished microbatch, forward wall and CPU seconds) and on error, so the driver
(``pipeline.run_pipeline``) can say which stage died and where. Collectives time
out after ``--step-timeout`` seconds (``init_process_group(timeout=...)``), never
the 30-minute default.

Microbatches: the inputs' dim 0 is cut into ``--microbatches`` equal pieces, or
into fewer when the batch needs it (``effective_microbatches``): a graph with a
dynamic batch takes any batch, so batch 1 runs as one microbatch and batch 6 of 4
asked for as 3. Rank 0 decides from its inputs and tells the others, which build
the same schedule without reading the inputs.

Multi-machine: run the same command on every machine with torchrun's usual
rendezvous flags (``--nnodes``, ``--rdzv-endpoint``); the inputs file is only
read by rank 0 and the outputs are written by the last rank.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["main", "SCHEDULES", "effective_microbatches"]

SCHEDULES = ("gpipe", "1f1b")


def effective_microbatches(batch: int, requested: int) -> int:
    """The most microbatches, at most ``requested``, that cut ``batch`` rows into equal pieces.

    Equal, because every stage sizes its receive buffers from the first
    microbatch's shapes (``torch.distributed.pipelining`` infers them once per
    run); padding the batch instead would change the outputs of a model whose rows
    interact.
    """
    return max(d for d in range(1, max(1, min(batch, requested)) + 1) if batch % d == 0)


def _agree_microbatches(inputs: list[torch.Tensor], requested: int, rank: int, device: torch.device) -> int:
    """Rank 0 picks the count for its inputs' batch (the gcd of their dim-0 sizes); every rank gets it."""
    count = requested
    if rank == 0:
        sizes = [int(t.shape[0]) for t in inputs if t.dim() >= 1]
        if sizes:
            count = effective_microbatches(math.gcd(*sizes), requested)
    value = torch.tensor([count], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


class _Status:
    """``rank<r>.json``, rewritten in place after every microbatch.

    One ``pwrite`` of the whole record at offset 0, padded with spaces to the
    longest record so far (JSON ignores trailing blanks): about 10 us, where a
    temporary file plus rename cost 160 us, on the critical path of every
    microbatch. A kill cannot tear the record (the kernel finishes the write
    before delivering the signal); a reader that meets a half-updated page gets
    invalid JSON and reads again at its next poll.
    """

    def __init__(self, directory: str | None, rank: int, microbatches: int):
        self.fd = (os.open(Path(directory) / f"rank{rank}.json", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                   if directory else None)
        self.size = 0
        self.state: dict[str, Any] = {"rank": rank, "pid": os.getpid(), "step": 0, "microbatch": -1,
                                      "microbatches": microbatches, "forward_s": 0.0, "forward_cpu_s": 0.0,
                                      "done": False, "error": None, "time": time.time()}
        self.write()

    def write(self, **changes: Any) -> None:
        self.state.update(changes, time=time.time())
        if self.fd is None:
            return
        data = json.dumps(self.state).encode()
        self.size = max(self.size, len(data))
        os.pwrite(self.fd, data.ljust(self.size), 0)


def _start_heartbeat(directory: str | None, rank: int, period_s: float = 0.5) -> None:
    """Touch ``rank<r>.alive`` every ``period_s`` from a daemon thread.

    A frozen process (stopped, swapped out, stuck holding the GIL) stops touching
    it; a stage that merely waits in a collective keeps touching it. That tells
    the driver which stage of a stalled pipeline is the hung one.
    """
    if not directory:
        return
    path = Path(directory) / f"rank{rank}.alive"

    def beat() -> None:
        while True:
            path.touch()
            time.sleep(period_s)

    threading.Thread(target=beat, name="autoglm-heartbeat", daemon=True).start()


class _CountedStage(nn.Module):
    """Runs the stage graph and records each finished microbatch."""

    def __init__(self, module: nn.Module, status: _Status, microbatches: int):
        super().__init__()
        self.module = module
        self.status = status
        self.microbatches = microbatches
        self.calls = 0

    def forward(self, *args: torch.Tensor) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.module(*args)
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
        mb = self.calls % self.microbatches
        self.calls += 1
        state = self.status.state
        self.status.write(microbatch=mb, forward_s=state["forward_s"] + elapsed,
                          forward_cpu_s=state["forward_cpu_s"] + cpu)
        return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="autoglm.runtime.pipeline.worker")
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--inputs", default=None, help="safetensors with input_0..; default: the artifact's examples")
    ap.add_argument("--out", default=None, help="safetensors the last rank writes the outputs to")
    ap.add_argument("--schedule", choices=SCHEDULES, default="gpipe")
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1, help="repeat the whole batch (timing)")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--step-timeout", type=float, default=60.0)
    ap.add_argument("--status-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def _load_inputs(args: argparse.Namespace) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    from autoglm.runtime.artifact_reader import read_example_inputs

    if args.inputs is None:
        return read_example_inputs(args.artifact)
    stored = load_file(args.inputs)
    return [stored[f"input_{i}"] for i in range(len(stored))]


def _test_kill_hook(rank: int) -> None:
    """Fault tests only: ``AUTOGLM_TEST_KILL_STAGE=r`` makes stage ``r`` die from SIGKILL at
    start-up, before its first status record (as the OOM killer would during loading), so the
    driver must name it from torchrun's log rather than from its status file."""
    if os.environ.get("AUTOGLM_TEST_KILL_STAGE") == str(rank):
        os.kill(os.getpid(), signal.SIGKILL)


def run_stage(args: argparse.Namespace) -> int:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from autoglm.runtime.artifact_reader import read_graph_module
    from autoglm.ir.partitions import extract_stages

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _test_kill_hook(rank)
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    status = _Status(args.status_dir, rank, args.microbatches)
    _start_heartbeat(args.status_dir, rank)
    torch.set_num_threads(args.threads)
    # Every rank must pick the same backend: nccl only when each local rank has a GPU of
    # its own (nccl refuses two ranks on one device); otherwise gloo on CPU everywhere.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=args.step_timeout))
    try:
        stages = extract_stages(read_graph_module(args.artifact))
        if len(stages) != world:
            raise ValueError(f"the artifact has {len(stages)} partitions but torchrun started {world} processes; "
                             f"use --nproc {len(stages)} or compile with partition(k={world})")
        inputs = [t.to(device) for t in _load_inputs(args)] if rank == 0 else []
        microbatches = _agree_microbatches(inputs, args.microbatches, rank, device)
        status.write(microbatches=microbatches)
        stage_mod = _CountedStage(stages[rank].module.to(device), status, microbatches)
        stage = PipelineStage(stage_mod, rank, world, device)
        kind = ScheduleGPipe if args.schedule == "gpipe" else Schedule1F1B
        schedule = kind(stage, n_microbatches=microbatches)
        outputs = None
        step_s: list[float] = []
        with torch.no_grad():
            for step in range(args.warmup + args.steps):
                status.write(step=step, microbatch=-1)
                t0 = time.perf_counter()
                result = schedule.eval(*inputs) if rank == 0 else schedule.eval()
                if step >= args.warmup:
                    step_s.append(time.perf_counter() - t0)
                if step == args.warmup - 1:
                    status.write(forward_s=0.0, forward_cpu_s=0.0)  # measured forward time excludes warm-up
                if rank == world - 1:
                    outputs = result
        if rank == world - 1 and args.out:
            from safetensors.torch import save_file

            outs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            save_file({f"output_{i}": t.detach().cpu().contiguous() for i, t in enumerate(outs)}, args.out)
        status.write(done=True, step_s=step_s)
        return 0
    except Exception as exc:
        status.write(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    return run_stage(args)


if __name__ == "__main__":
    sys.exit(main())
