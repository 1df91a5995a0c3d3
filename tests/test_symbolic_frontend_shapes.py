"""Symbolic-frontend graphs and the dims that change between calls.

A ``CompiledModel`` of the symbolic frontend (``torch.fx`` symbolic trace) checks no
shape at call time: its graph reads sizes at run time, so it is called at any batch
size. Its nodes carry no fake values, so the annotations must be told which input
dims may change (inferred: dim 0 of every input with the first input's batch size,
dim 1 of token inputs) and propagate them, or ``split_merge`` slices a batched
matmul along the batch at the example's bounds: a later call at another batch size
then drops rows (a larger batch) or fails (a smaller one).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.capture.frontends import capture
from autoglm.driver.graph import DriverOptions, compile_graph
from autoglm.ir.meta import annotation, output_spec
from autoglm.passes.pipeline import resolve_passes

CPU2 = ["cpu", "cpu"]


class BatchedScores(nn.Module):
    """A cheap projection, then ``bmm`` on [B, L, L] scores that holds most of the work.

    The batch is the matmul's only batch dimension, so a size-blind split cuts it.
    """

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)
        scores = torch.bmm(q, x.transpose(1, 2))  # [B, L, L]
        return scores.softmax(-1)


class HeadScores(nn.Module):
    """Attention scores with heads, ``q @ q.transpose(-1, -2)`` on [B, H, L, D] views of the input."""

    def __init__(self, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = x.view(b, n, self.heads, -1).transpose(1, 2)
        return q @ q.transpose(-1, -2)  # [B, H, L, L]


class WideMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 512)
        self.b = nn.Linear(512, 512)
        self.c = nn.Linear(512, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _compile(model: nn.Module, x: torch.Tensor, **kw) -> autoglm.CompiledModel:
    model.eval()
    cm = autoglm.compile(model, (x,), passes="split_merge", devices=CPU2, frontend="symbolic", **kw)
    assert cm.frontend == "symbolic"
    return cm


def _shards(cm) -> list:
    return [n for n in cm.graph_module.graph.nodes
            if annotation(n).tags.get("split", {}).get("role") == "shard"]


def _check_batches(cm, model: nn.Module, example: torch.Tensor, batches) -> None:
    for batch in batches:
        x = torch.randn(batch, *example.shape[1:], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)
            got = cm(x)
        torch.testing.assert_close(got, expected, msg=lambda m: f"batch {batch}: {m}")


def test_batch_only_matmul_is_not_split_along_the_batch():
    torch.manual_seed(0)
    model, x = BatchedScores(), torch.randn(4, 256, 32)
    cm = _compile(model, x)
    notes = cm.notes["split_merge"]
    # The bmm is heavy enough to split (its load is above `high`), but its only batch dim is the batch.
    refused = [r for r in notes["not_split"] if "symbolic" in r["reason"]]
    assert refused and refused[0]["load"] > 0.85, notes
    assert not [s for s in notes["splits"] if s["how"] == "matmul_batch"], notes
    assert notes.get("costs_at") == "example shapes"
    _check_batches(cm, model, x, [1, 12, 4])


def test_heads_are_still_split_and_other_batches_run():
    torch.manual_seed(0)
    model, x = HeadScores(), torch.randn(2, 256, 512)  # batch 2 < heads 8: heads win anyway
    cm = _compile(model, x)
    splits = [s for s in cm.notes["split_merge"]["splits"] if s["how"] == "matmul_batch"]
    assert splits, cm.notes["split_merge"]
    slices = [n for n in cm.graph_module.graph.nodes
              if annotation(n).tags.get("split", {}).get("role") == "slice"]
    assert slices and all(n.args[1] == 1 for n in slices)  # heads, never the batch
    _check_batches(cm, model, x, [1, 6, 2])


def test_heads_beat_a_larger_batch():
    """Example batch 16 > 8 heads: a size-blind split would take the batch (the largest)."""
    torch.manual_seed(0)
    model, x = HeadScores(), torch.randn(16, 128, 512)
    cm = _compile(model, x)
    slices = [n for n in cm.graph_module.graph.nodes
              if annotation(n).tags.get("split", {}).get("role") == "slice"]
    assert slices and all(n.args[1] == 1 for n in slices)
    _check_batches(cm, model, x, [1, 48, 16])


def test_linear_out_features_still_split():
    torch.manual_seed(0)
    model, x = WideMLP(), torch.randn(64, 32)
    cm = _compile(model, x)
    assert {s["how"] for s in cm.notes["split_merge"]["splits"]} == {"linear_out"}
    assert len(_shards(cm)) >= 2
    _check_batches(cm, model, x, [1, 192, 64])


def test_annotations_mark_the_batch_symbolic_and_weights_static():
    torch.manual_seed(0)
    model, x = BatchedScores(), torch.randn(4, 256, 32)
    cm = _compile(model, x)
    specs = {n.name: output_spec(n) for n in cm.graph_module.graph.nodes if n.op != "output"}
    placeholder = next(n for n in cm.graph_module.graph.nodes if n.op == "placeholder")
    sym = specs[placeholder.name].symbolic
    assert sym is not None and sym[0] is not None and sym[1:] == (None, None)  # batch only (float input)
    for n in cm.graph_module.graph.nodes:
        spec = specs.get(n.name)
        if n.op == "get_attr" or (n.op == "call_module" and spec is None):
            continue
        if spec is not None and len(spec.shape) == 3 and n.op != "placeholder":
            assert spec.symbolic is not None and spec.symbolic[0] is not None, (n.name, spec)
            assert spec.symbolic[1:] == (None, None), (n.name, spec)


def test_token_inputs_mark_batch_and_sequence():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(100, 16)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = self.emb(ids)
            return h @ h.transpose(1, 2)

    model, ids = Tokens().eval(), torch.randint(0, 100, (3, 10))
    cm = autoglm.compile(model, (ids,), passes="none", frontend="symbolic")
    out = next(n for n in cm.graph_module.graph.nodes if n.op == "output").args[0][0]
    sym = output_spec(out).symbolic
    assert sym is not None and sym[0] is not None and sym[1] is not None and sym[2] is not None
    assert sym[1] == sym[2]  # both the sequence


def test_compile_graph_takes_stated_dims():
    """``dynamic={}`` (a graph checked static at call time) leaves every dim static: the batch splits."""
    torch.manual_seed(0)
    model, x = BatchedScores().eval(), torch.randn(4, 256, 32)
    cap = capture(model, (x,), {}, frontend="symbolic")
    options = DriverOptions(resolve_passes("split_merge", CPU2), CPU2)
    static = compile_graph(cap.graph_module, cap.flat_inputs, options, dynamic={})
    assert [s["how"] for s in static.notes["split_merge"]["splits"]] == ["matmul_batch"]
    with torch.no_grad():
        torch.testing.assert_close(static.executor(x)[0], model(x))


@pytest.mark.parametrize("batch", [1, 12])
def test_program_segments_infer_dims_too(batch):
    """Driver default (``dynamic=None``) infers the dims for any graph without fake values."""
    torch.manual_seed(0)
    model, x = BatchedScores().eval(), torch.randn(4, 256, 32)
    cap = capture(model, (x,), {}, frontend="symbolic")
    options = DriverOptions(resolve_passes("split_merge", CPU2), CPU2)
    compiled = compile_graph(cap.graph_module, cap.flat_inputs, options)
    assert not [s for s in compiled.notes["split_merge"]["splits"] if s["how"] == "matmul_batch"]
    y = torch.randn(batch, 256, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled.executor(y)[0], model(y))
