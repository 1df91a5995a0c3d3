"""Which dims of a graph's values follow its inputs' dynamic dims, found by running it once more.

Graphs of the symbolic frontend (``torch.fx`` symbolic trace) have no fake values,
yet they read sizes at run time and are called at any batch size. Without knowing
which dims follow the batch, ``split_merge`` sliced a batched matmul along the
batch at the example's bounds: a call at a larger batch then dropped rows, one at
a smaller batch failed.

torch.export graphs answer this with symbolic fake values. Giving symbolic-frontend
graphs the same (a fake input per dynamic dim, propagated node by node) was tried:
it costs ~20 ms a node in sympy on every annotation and made the fuzz campaign
3.2x slower (10 generated models: 8.8 s -> 28.3 s). Instead the graph runs once
more, on the example with every dynamic dim grown (the k-th dim name by k + 1, so
names stay apart), and a dim whose size changed is dynamic: named after the input
dim whose growth it shows, or ``"dim"`` for a combination (a flattened batch x seq).
The price is one forward per annotation.

A dim that would change on other inputs in a way this one run does not show
(a size computed from values, not shapes) is missed; such graphs are rare in the
symbolic frontend (data-dependent sizes stop the trace). A graph with side effects
is not run again (it would update its buffers twice): its values stay unknown,
which passes treat as "may change".
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx

from autoglm.ir.effects import has_side_effects

__all__ = ["probe_symbolic_shapes"]

Symbolic = tuple[str | None, ...]


def _dim_name(spec: Any) -> str:
    return str(getattr(spec, "name", spec))


def _grown(t: torch.Tensor, dims: Mapping[int, int]) -> torch.Tensor:
    """``t`` with dim ``d`` longer by ``dims[d]``, repeating its last slice (ids and masks stay valid)."""
    for d, extra in dims.items():
        if t.shape[d] >= 1:
            last = t.narrow(d, t.shape[d] - 1, 1)
            t = torch.cat([t] + [last] * extra, dim=d)
    return t


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        self.shapes: dict[fx.Node, list[torch.Size]] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = [t.shape for t in _tensors(result)]
        return result


def _tensors(value: Any) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    return [v for v in leaves if isinstance(v, torch.Tensor)]


def _label(old: int, new: int, growth: dict[int, str]) -> str | None:
    if new == old:
        return None
    return growth.get(new - old, "dim")


def probe_symbolic_shapes(gm: fx.GraphModule, inputs: Sequence[Any], dynamic: Mapping[int, Mapping[int, Any]],
                          example: Mapping[fx.Node, list[torch.Size]]
                          ) -> dict[fx.Node, list[Symbolic | None]] | None:
    """Per node, the symbolic dims of each tensor it produces (``TensorSpec.symbolic``).

    ``dynamic``: per flat input, the dims that may change between calls, each with a
    name (a string or anything with ``.name``: ``DimRange``, ``Dim``); dims sharing a
    name grow together. ``example``: each node's tensor shapes on ``inputs`` (the
    annotating run). Returns {} when nothing is dynamic, None when the graph cannot be
    probed (side effects, or it fails at the grown shapes): then only the inputs are known.
    """
    names = list(dict.fromkeys(_dim_name(s) for dims in dynamic.values() for s in dims.values()))
    if not names:
        return {}
    if any(has_side_effects(n) for n in gm.graph.nodes if n.op not in ("placeholder", "output")):
        return None
    extra = {name: k + 1 for k, name in enumerate(names)}
    grown = []
    for i, t in enumerate(inputs):
        dims = {d: extra[_dim_name(s)] for d, s in dynamic.get(i, {}).items()}
        grown.append(_grown(t, dims) if isinstance(t, torch.Tensor) and dims else t)
    recorder = _ShapeRecorder(gm)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # a random op must not move the caller's RNG
            recorder.run(*grown)
    except Exception:  # noqa: BLE001 - the graph does not run at other sizes: nothing known beyond the inputs
        return None
    growth = {k: name for name, k in extra.items()}
    out: dict[fx.Node, list[Symbolic | None]] = {}
    for n, shapes in recorder.shapes.items():
        before = example.get(n)
        if n.op == "get_attr" or before is None:
            continue
        if len(before) != len(shapes) or any(len(a) != len(b) for a, b in zip(before, shapes)):
            out[n] = [None] * len(before)  # another structure at other sizes: unknown
            continue
        out[n] = [tuple(_label(int(a), int(b), growth) for a, b in zip(old, new)) for old, new in zip(before, shapes)]
    return out
