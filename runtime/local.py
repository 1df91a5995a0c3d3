"""Run a partitioned graph on several torch devices in one process.

    ex = LocalExecutor(gm, ["cuda:0", "cpu"])     # partition p runs on devices[p % len(devices)]
    outputs = ex(*flat_inputs)                    # flat tuple, like gm(*flat_inputs)

Each partition is its own ``GraphModule`` (``partition_graphs.extract_partitions``)
whose weights live on its device. A partition starts as soon as the partitions
it reads from have finished; partitions with no dependency between them run at
the same time on a thread pool (torch kernels release the GIL). Every value
that crosses a boundary is moved explicitly (``tensor.to(device)``), optionally
compressed (``compression="fp16" | "int8"``, lossy; see ``compression.py``);
``stats`` counts the bytes. Outputs come back on the device of the first flat
input (the caller's device), as ``torch.compile`` returns them where the model ran.
Autograd mode is the caller's: it is thread-local in torch, so it is passed on to
each worker thread.
"""
from __future__ import annotations

import copy
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map

from autoglm.runtime.compression import BoundaryStats, check_mode, compress, decompress, payload_nbytes
from autoglm.ir.partitions import PartModule, extract_partitions, output_names

__all__ = ["LocalExecutor"]


def _module_device(mod: torch.nn.Module) -> torch.device | None:
    for t in list(mod.parameters()) + list(mod.buffers()):
        return t.device
    return None


class LocalExecutor:
    """Callable over the flat inputs returning the flat output tuple."""

    def __init__(self, gm: fx.GraphModule, devices: Sequence[str | torch.device] | None = None,
                 compression: str = "none", concurrent: bool = True):
        self.graph_module = gm
        self.devices = [torch.device(d) for d in (devices or ["cpu"])]
        if not self.devices:
            raise ValueError("LocalExecutor needs at least one device, e.g. ['cpu', 'cpu']")
        self.compression = check_mode(compression)
        self.partitions: list[PartModule] = extract_partitions(gm)
        self.device_of: dict[int, torch.device] = {}
        for pm in self.partitions:
            dev = self.devices[pm.index % len(self.devices)]
            self.device_of[pm.index] = dev
            current = _module_device(pm.module)
            if current is not None and current != dev:
                # Submodules are shared with the original graph: copy before moving.
                pm.module = copy.deepcopy(pm.module).to(dev)
            else:
                self._move_plain_attrs(pm.module, dev)
        self._producer = {name: pm.index for pm in self.partitions for name in pm.outputs}
        self._outputs = output_names(gm)
        self.concurrent = concurrent and len(self.partitions) > 1
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.stats = BoundaryStats()

    @staticmethod
    def _move_plain_attrs(mod: torch.nn.Module, dev: torch.device) -> None:
        for k, v in list(vars(mod).items()):
            if isinstance(v, torch.Tensor) and not k.startswith("_") and v.device != dev:
                setattr(mod, k, v.to(dev))

    def __repr__(self) -> str:
        parts = ", ".join(f"{pm.index}@{self.device_of[pm.index]}" for pm in self.partitions)
        return f"LocalExecutor(partitions=[{parts}], compression={self.compression!r})"

    # ------------------------------------------------------------------ running

    def _transfer(self, value: Any, dev: torch.device, crosses: bool) -> Any:
        def move(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            if not crosses:
                return t.to(dev)
            payload = compress(t, self.compression)
            raw = t.numel() * t.element_size()
            moved = payload.to(dev)
            self.stats.add(raw, payload_nbytes(moved))
            return decompress(moved)

        return tree_map(move, value)

    def _run_part(self, pm: PartModule, env: dict[str, Any], grad: bool) -> dict[str, Any]:
        dev = self.device_of[pm.index]
        args = []
        for name in pm.inputs:
            src = self._producer.get(name)
            args.append(self._transfer(env[name], dev, crosses=src is not None and src != pm.index))
        with torch.set_grad_enabled(grad):
            out = pm.module(*args)
        return dict(zip(pm.outputs, out))

    def __call__(self, *flat_inputs: Any) -> tuple:
        placeholders = [n.name for n in self.graph_module.graph.nodes if n.op == "placeholder"]
        if len(flat_inputs) != len(placeholders):
            raise TypeError(f"LocalExecutor expected {len(placeholders)} flat inputs, got {len(flat_inputs)}")
        env: dict[str, Any] = dict(zip(placeholders, flat_inputs))
        self.stats = BoundaryStats()
        grad = torch.is_grad_enabled()
        if self.concurrent:
            self._run_concurrent(env, grad)
        else:
            for pm in self.partitions:  # already in dependency order
                env.update(self._run_part(pm, env, grad))
        host = next((t.device for t in flat_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
        result = []
        for name in self._outputs:
            if not isinstance(name, str):
                result.append(name)
            elif name in env:
                result.append(tree_map(lambda t: t.to(host) if isinstance(t, torch.Tensor) else t, env[name]))
            else:  # an output that is a weight read
                result.append(_read_attr(self.graph_module, name))
        return tuple(result)

    def _run_concurrent(self, env: dict[str, Any], grad: bool) -> None:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=len(self.partitions),
                                                    thread_name_prefix="autoglm-part")
        waiting = {pm.index: set(pm.reads_from) for pm in self.partitions}
        by_index = {pm.index: pm for pm in self.partitions}
        done: set[int] = set()
        running: dict[Future, int] = {}

        def launch_ready() -> None:
            for idx in list(waiting):
                if waiting[idx] <= done:
                    del waiting[idx]
                    # env is only written by this (the calling) thread, between waits
                    running[self._pool.submit(self._run_part, by_index[idx], dict(env), grad)] = idx

        launch_ready()
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                idx = running.pop(fut)
                env.update(fut.result())  # re-raises a partition's exception here
                done.add(idx)
            launch_ready()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def _read_attr(gm: fx.GraphModule, node_name: str) -> Any:
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj
