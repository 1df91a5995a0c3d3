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

__all__ = ["Compiled", "CompiledViews", "CompiledModel"]


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

    def node_table(self) -> list[dict[str, Any]]:
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

    def summary(self) -> str:
        """A per-node table: op, target, shape, dtype, FLOPs, bytes, partition, provenance, tags."""
        rows = self.node_table()
        head = ["name", "op", "target", "shape", "dtype", "flops", "bytes", "part", "by", "tags"]
        table = [head]
        for r in rows:
            table.append([r["name"], r["op"], r["target"][:40], r["shape"], r["dtype"], f"{r['flops']:,}",
                          f"{r['bytes']:,}", "" if r["partition"] is None else str(r["partition"]),
                          r["created_by"], ",".join(sorted(r["tags"]))])
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
        total_flops = sum(r["flops"] for r in rows)
        lines.append(f"{len(rows)} nodes, {total_flops:,} FLOPs, frontend={self.frontend}")
        return "\n".join(lines)

    def report(self, path: str | os.PathLike, extra: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """Write the HTML report and its JSON twin; ``extra``: e.g. ``autoglm.report.measure_against_eager``."""
        from autoglm.report import write_report

        return write_report(self, path, extra=extra, **kwargs)

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> Any:
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
        flat = self.signature.flatten_inputs(args, kwargs)
        if self.dynamic_dims is not None and [tuple(t.shape) for t in flat] != self._example_shapes:
            check_call(flat, self.example_inputs, self.dynamic_dims, self.signature.input_names)
        out = self.executor(*flat)
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return self.signature.unflatten_outputs(out)

    forward = __call__

    def save(self, path: str | os.PathLike) -> None:
        from autoglm.artifacts.directory import save_artifact

        records = [asdict(r) if hasattr(r, "__dataclass_fields__") else r for r in self.records]
        extra = {"frontend": self.frontend, "records": records}
        if self.plan is not None:
            extra["partition_plan"] = self.plan.to_json()
        save_artifact(path, self.graph_module, self.signature, self.example_inputs, self.config, extra=extra)

    def __repr__(self) -> str:
        return (f"CompiledModel(frontend={self.frontend!r}, nodes={len(self.graph_module.graph.nodes)}, "
                f"passes={[r.name for r in self.records]})")
