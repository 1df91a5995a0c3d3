"""``CompiledModel``: the drop-in callable ``autoglm.compile`` returns, and the ``Compiled`` protocol.

``Compiled`` is the interface every compiled object offers (``CompiledModel``,
a branching ``Program``, a loaded program): callable like the model, with its
graph, signature, config, pass records and notes, and ``summary``/``save``/
``report``/``export_onnx``. ``CompiledViews`` holds what is computed from those
attributes alone (node table, summary, plan, report, ONNX export), so a class
shares it without inheriting a constructor it does not use.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.fx as fx

from autoglm.capture.dynamic import check_call
from autoglm.capture.flat import FlatSignature
from autoglm.ir.meta import annotation, has_annotation, output_specs
from autoglm.ir.sizes import format_bytes, state_bytes

__all__ = ["Compiled", "CompiledViews", "CompiledModel"]

_NOT_COMPUTE = ("placeholder", "get_attr", "output")


def _fmt_shape(node: fx.Node) -> tuple[str, str]:
    specs = output_specs(node)
    if not specs:
        return "", ""
    if len(specs) == 1:
        return "x".join(map(str, specs[0].shape)) or "scalar", str(specs[0].dtype).replace("torch.", "")
    return f"{len(specs)} tensors", ",".join(sorted({str(s.dtype).replace("torch.", "") for s in specs}))


@runtime_checkable
class Compiled(Protocol):
    """What ``autoglm.compile`` and ``autoglm.load`` return, whichever class it is."""

    signature: FlatSignature
    example_inputs: list[torch.Tensor]
    config: dict[str, Any]
    notes: dict[str, Any]
    frontend: str

    @property
    def graph_module(self) -> fx.GraphModule: ...

    @property
    def records(self) -> list[Any]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def summary(self) -> str: ...

    def save(self, path: str | os.PathLike) -> None: ...

    def report(self, path: str | os.PathLike, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any: ...

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> Any: ...


class CompiledViews:
    """Views computed from ``graph_module``, ``notes``, ``frontend`` (for any ``Compiled``)."""

    graph_module: fx.GraphModule
    notes: dict[str, Any]
    frontend: str

    @property
    def plan(self) -> Any:
        """The partition plan, when a partition pass ran (None otherwise)."""
        return self.notes.get("partition", {}).get("plan")

    @property
    def parameter_bytes(self) -> int:
        """Bytes of the compiled graph's weights (each stored tensor once; int8 weights at 1 byte)."""
        return state_bytes(self.graph_module)

    @property
    def captured_parameter_bytes(self) -> int | None:
        """The same for the graph as captured, before any pass (None for artifacts saved before it was kept)."""
        sizes = self.notes.get("sizes") or self.config.get("sizes") or {}
        return sizes.get("captured_parameter_bytes")

    def size_text(self) -> str:
        """``22.0 MiB (was 86.7 MiB before passes)``, or just the size when nothing changed it."""
        now, before = self.parameter_bytes, self.captured_parameter_bytes
        if before is None or before == now:
            return format_bytes(now)
        return f"{format_bytes(now)} (was {format_bytes(before)} before passes)"

    def node_table(self) -> list[dict[str, Any]]:
        """One dict per graph node: name, op, target, shape, dtype, flops, bytes, param_bytes, cost_s,
        latency_s (when measured), partition, created_by (the pass that made it) and tags."""
        rows = []
        for n in self.graph_module.graph.nodes:
            ann = annotation(n) if has_annotation(n) else None
            shape, dtype = _fmt_shape(n)
            target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
            rows.append({
                "name": n.name, "op": n.op, "target": str(target), "shape": shape, "dtype": dtype,
                "flops": ann.flops if ann else 0, "bytes": ann.bytes_moved if ann else 0,
                "param_bytes": ann.param_bytes if ann else 0,
                "cost_s": ann.cost_s if ann else None, "latency_s": ann.latency_s if ann else None,
                "partition": ann.partition if ann else None, "created_by": ann.created_by if ann else "",
                "tags": dict(ann.tags) if ann else {},
            })
        return rows

    def summary(self, max_rows: int | None = 40, all_nodes: bool = False) -> str:
        """What was compiled, then a per-node table: op, target, shape, dtype, FLOPs, bytes, partition,
        provenance, tags.

        The table lists the nodes that compute (not inputs, weight reads or the output) unless
        ``all_nodes``; the ``max_rows`` costliest of them, in graph order (None: every one).
        ``node_table()`` has every row as data."""
        rows = self.node_table()
        compute = [r for r in rows if r["op"] not in _NOT_COMPUTE]
        shown = rows if all_nodes else compute
        if max_rows is not None and len(shown) > max_rows:
            costliest = sorted(range(len(shown)), key=lambda i: -(shown[i]["cost_s"] or shown[i]["flops"]))
            keep = set(costliest[:max_rows])
            hidden = len(shown) - max_rows
            shown = [r for i, r in enumerate(shown) if i in keep]
        else:
            hidden = 0
        head = ["name", "op", "target", "shape", "dtype", "flops", "bytes", "part", "by", "tags"]
        table = [head]
        for r in shown:
            table.append([r["name"][:48], r["op"], r["target"][:40], r["shape"], r["dtype"], f"{r['flops']:,}",
                          f"{r['bytes']:,}", "" if r["partition"] is None else str(r["partition"]),
                          r["created_by"], ",".join(sorted(r["tags"]))])
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        total_flops = sum(r["flops"] for r in rows)
        passes = ", ".join(getattr(r, "spec", None) or (r.get("spec") if isinstance(r, dict) else "") or "?"
                           for r in self.records) or "none"
        parts = sorted({r["partition"] for r in rows if r["partition"] is not None})
        lines = [f"{len(rows)} nodes ({len(compute)} compute), {total_flops:,} FLOPs, parameters {self.size_text()}, "
                 f"frontend={self.frontend}, passes: {passes}"
                 + (f", {len(parts)} partitions" if parts else "")]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        if hidden:
            lines.append(f"... {hidden} cheaper nodes not shown (summary(max_rows=None) lists all, "
                         f"summary(all_nodes=True) adds inputs and weights)")
        return "\n".join(lines)

    def report(self, path: str | os.PathLike, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Write the HTML report and its JSON twin; ``extra``: e.g. ``autoglm.report.measure_against_eager``."""
        from autoglm.report import write_report

        return write_report(self, path, extra=extra, **kwargs)

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        """Export to ``path`` (``.onnx``) and check it in onnxruntime; keywords are ``ExportOptions`` fields.
        See ``autoglm.export.onnx.export.export_onnx``."""
        from autoglm.export.onnx.export import export_onnx

        return export_onnx(self, path, **kwargs)


class CompiledModel(CompiledViews):
    """Same call signature and output structure as the model it was compiled from.

    ``executor`` runs the flat graph (the graph module itself, or a runtime
    executor such as the multi-device one); the signature maps user calls to flat
    tensors and back.
    """

    def __init__(self, graph_module: fx.GraphModule, signature: FlatSignature, example_inputs: list[torch.Tensor],
                 config: dict[str, Any], records: Sequence[Any] = (), frontend: str = "",
                 executor: Callable[..., Any] | None = None, notes: dict[str, Any] | None = None):
        self.graph_module = graph_module
        self.signature = signature
        self.example_inputs = list(example_inputs)
        self.config = dict(config)
        self.records = list(records)
        self.frontend = frontend
        self.executor = executor or graph_module
        self.notes = dict(notes or {})
        # A torch.export graph takes its dynamic dims at any size in range and the rest only at
        # the example's: say so in one line instead of failing deep inside a kernel. Stated dims
        # are checked for every frontend; None: a symbolic graph with nothing stated, which reads
        # sizes at run time. (An export artifact from before dynamic shapes has no dims: static.)
        dims = signature.dynamic
        self.dynamic_dims = dims if dims is not None else ({} if frontend == "export" else None)
        self._example_shapes = [tuple(t.shape) for t in self.example_inputs]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run like the original model: same arguments, same output structure. Inputs of another
        structure, or of a shape outside the compiled dynamic range, fail with a one-line error."""
        flat = self.signature.flatten_inputs(args, kwargs)
        if self.dynamic_dims is not None and [tuple(t.shape) for t in flat] != self._example_shapes:
            check_call(flat, self.example_inputs, self.dynamic_dims, self.signature.input_names)
        out = self.executor(*flat)
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return self.signature.unflatten_outputs(out)

    forward = __call__

    def save(self, path: str | os.PathLike) -> None:
        """Write the artifact folder (graph.json, weights.safetensors, config.json, example inputs);
        no pickle, written atomically. ``autoglm.load(path)`` reads it back without running code."""
        from autoglm.artifacts.directory import save_artifact

        records = [asdict(r) if hasattr(r, "__dataclass_fields__") else r for r in self.records]
        extra = {"frontend": self.frontend, "records": records, "sizes": self.notes.get("sizes", {})}
        if self.plan is not None:
            extra["partition_plan"] = self.plan.to_json()
        save_artifact(path, self.graph_module, self.signature, self.example_inputs, self.config, extra=extra)

    def __repr__(self) -> str:
        return (f"CompiledModel(frontend={self.frontend!r}, nodes={len(self.graph_module.graph.nodes)}, "
                f"passes={[r.name for r in self.records]})")
