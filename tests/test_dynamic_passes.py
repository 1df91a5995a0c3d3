"""Every pass on a graph with symbolic shapes (issue #18).

The graphs are captured here with ``torch.export.export(..., dynamic_shapes=...)``
directly, as ``compiler/capture/export.py`` does (``ep.module()`` without its
``_guards_fn``), so these tests do not depend on ``autoglm.compile(dynamic=...)``.
Each compiled graph then runs at shapes other than the example's and is
compared with eager. Shapes are (batch, seq); the examples are (2, 12), or
(6, 12) where the split tests need the batch to be the largest batch dimension
of the attention matmuls (4 heads), i.e. the one a size-blind split would cut.
"""
from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
import torch.fx as fx
from torch.export import Dim

from autoglm.capture.flat import FlatSignature, fixed_arity_flat_call
from autoglm.cost.model import CostModel
from autoglm.driver.graph import DriverOptions, compile_graph
from autoglm.ir.annotate import annotate
from autoglm.ir.effects import has_side_effects
from autoglm.ir.meta import TensorSpec, annotation, output_specs, private_copy
from autoglm.ir.ops import matmul_view
from autoglm.passes.pipeline import resolve_passes
from tests.zoo.models import VOCAB, ZOO

CPU2 = ["cpu", "cpu"]


# ------------------------------------------------------------------ capture


def _inputs(name: str, batch: int, seq: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    kw = {"input_ids": torch.randint(3, VOCAB, (batch, seq), generator=g),
          "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    if batch > 1 and seq > 3:
        kw["attention_mask"][-1, seq - 2:] = 0  # padding, so the mask path is exercised
    if name == "bert":
        kw["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return kw


@functools.lru_cache(maxsize=None)
def _captured(name: str, attn: str = "sdpa", batch: int = 2, seq: int = 12):
    """(model, graph, flat example inputs) with batch in [1, 64] and seq in [1, 64] dynamic."""
    model, _ = ZOO[name].build()
    model.set_attn_implementation(attn)
    kw = _inputs(name, batch, seq)
    sig, flat = FlatSignature.from_inputs((), kw)
    root = fixed_arity_flat_call(model, sig, len(flat))
    dims = {0: Dim("batch", min=1, max=64), 1: Dim("seq", min=1, max=64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(root, tuple(flat), dynamic_shapes={f"input_{i}": dims for i in range(len(flat))},
                                 strict=False)
    gm = ep.module()
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn"):
            gm.graph.erase_node(node)
    gm.graph.set_codegen(fx.graph.CodeGen())
    gm.graph.eliminate_dead_code(is_impure_node=has_side_effects)
    gm.recompile()
    return model, fx.GraphModule(gm, gm.graph), tuple(flat), sig


def _fresh(name: str, **kw):
    """A private copy of the captured graph (passes rewrite the graph they are given)."""
    model, gm, flat, sig = _captured(name, **kw)
    return model, private_copy(gm), list(flat), sig


def _compile(name: str, spec: str, devices=("cpu",), **kw):
    model, gm, flat, sig = _fresh(name, **kw)
    devices = list(devices)
    compiled = compile_graph(gm, flat, DriverOptions(resolve_passes(spec, devices), devices))
    return model, compiled, sig


def _eager(model, name: str, batch: int, seq: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    kw = _inputs(name, batch, seq, seed=batch * 100 + seq)
    with torch.no_grad():
        ref = model(**kw).last_hidden_state
    return list(kw.values()), ref


def _assert_runs(model, name: str, executor, shapes, **tol) -> None:
    for batch, seq in shapes:
        flat, ref = _eager(model, name, batch, seq)
        with torch.no_grad():
            out = executor(*flat)
        assert out[0].shape == ref.shape, f"(batch, seq)=({batch}, {seq}): {tuple(out[0].shape)}"
        torch.testing.assert_close(out[0], ref, **tol, msg=lambda m: f"(batch, seq)=({batch}, {seq}): {m}")


# ------------------------------------------------------------------ annotations


def test_annotations_record_symbolic_dims_next_to_the_hint():
    _, gm, flat, _ = _fresh("bert")
    annotate(gm, flat)
    ids = next(n for n in gm.graph.nodes if n.op == "placeholder")
    spec = annotation(ids).outputs[0]
    assert spec.shape == (2, 12)  # the example's sizes: what costs are computed at
    assert spec.symbolic is not None and all(spec.symbolic), spec
    assert spec.dynamic_dims == (0, 1)
    weight = next(n for n in gm.graph.nodes if n.op == "get_attr")
    assert annotation(weight).outputs[0].symbolic == (None, None)  # weights are static
    linear = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default)
    hidden = annotation(linear).outputs[0]
    assert hidden.shape == (2, 12, 32)
    assert hidden.symbolic[:2] == spec.symbolic and hidden.symbolic[2] is None
    # A sym_size node's value is the symbol of the dimension it reads.
    for n in gm.graph.nodes:
        if n.target is torch.ops.aten.sym_size.int:
            src, dim = n.args
            assert str(n.meta["val"].node.expr) == annotation(src).outputs[0].symbolic[dim]


def test_nodes_created_by_passes_get_symbolic_dims():
    """A pass's new nodes have no ``meta["val"]``; the annotator derives their symbolic dims."""
    _, compiled, _ = _compile("bert", "split_merge")
    fused = [n for n in compiled.graph_module.graph.nodes if "merged" in annotation(n).tags]
    assert fused
    for n in fused:
        spec = annotation(n).outputs[0]
        assert spec.symbolic is not None, n.name
        assert len(spec.symbolic) == len(spec.shape)


def test_static_graph_has_no_symbolic_dims():
    model, kw = ZOO["bert"].build()
    sig, flat = FlatSignature.from_inputs((), kw)
    ep = torch.export.export(fixed_arity_flat_call(model, sig, len(flat)), tuple(flat), strict=False)
    gm = ep.module()
    annotate(gm, list(flat))
    specs = [s for n in gm.graph.nodes for s in annotation(n).outputs]
    assert specs and all(not s.dynamic_dims for s in specs)


def test_annotations_still_serialise():
    from autoglm.artifacts.graph_json import graph_from_json, graph_to_json

    _, compiled, _ = _compile("bert", "default")
    data, tensors = graph_to_json(compiled.graph_module)
    loaded = graph_from_json(data, tensors)
    before = {n.name: annotation(n).outputs for n in compiled.graph_module.graph.nodes}
    for n in loaded.graph.nodes:  # hints and dtypes are saved; symbolic dims are derived again where needed
        assert [(s.shape, s.dtype) for s in annotation(n).outputs] == [(s.shape, s.dtype) for s in before[n.name]]
    flat, ref = _eager(_captured("bert")[0], "bert", 3, 7)
    torch.testing.assert_close(loaded(*flat)[0], ref)


def test_costs_use_the_example_shapes():
    _, gm, flat, _ = _fresh("bert")
    annotate(gm, flat)
    linear = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default)
    assert annotation(linear).flops == 2 * 2 * 12 * 32 * 32  # batch 2, seq 12: the hint
    assert CostModel().node_cost(linear) > 0


# ------------------------------------------------------------------ split_merge

SPLIT_SHAPES = [(1, 7), (5, 33), (13, 7), (6, 12), (1, 1)]


def _split_budget(name: str) -> float:
    """A budget under which every attention matmul needs 3 shards (batch 6 and 4 heads both allow 3)."""
    _, gm, flat, _ = _fresh(name, attn="eager", batch=6)
    annotate(gm, flat)
    cost = CostModel()
    top = max(cost.node_cost(n) for n in gm.graph.nodes if matmul_view(n, gm) is not None)
    return top / 2.0  # load 2.0 -> ceil(2.0 / 0.85) = 3 shards


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_split_merge_never_splits_a_symbolic_dim(name):
    model, compiled, _ = _compile(name, f"split_merge(budget={_split_budget(name)!r})", CPU2,
                                  attn="eager", batch=6)
    notes = compiled.notes["split_merge"]
    assert notes["costs_at"] == "example shapes"  # loads are the example's; other shapes reuse the splits
    hows = {s["how"] for s in notes["splits"]}
    assert "matmul_batch" in hows, notes  # split along the heads, the static batch dimension
    gm = compiled.graph_module
    slices = [n for n in gm.graph.nodes if annotation(n).tags.get("split", {}).get("role") == "slice"]
    assert slices
    for n in slices:  # no slice of a split cuts a dimension whose size changes between calls
        src, dim = n.args[0], n.args[1]
        spec = output_specs(src)[0]
        assert spec.symbolic is not None and spec.symbolic[dim] is None, (n.name, spec)
    _assert_runs(model, name, compiled.executor, SPLIT_SHAPES)


def test_matmul_split_refused_when_every_batch_dim_is_symbolic():
    from autoglm.passes.split_merge.split import split_choice

    _, gm, flat, _ = _fresh("bert", attn="eager", batch=6)
    annotate(gm, flat)
    mm = next(n for n in gm.graph.nodes if matmul_view(n, gm) is not None)
    choice = split_choice(mm, gm, "auto", 3)
    assert not isinstance(choice, str) and choice.dim == 1 and choice.extent == 4  # heads, not batch 6
    # Without a static batch dimension there is nothing to split (pretend the heads were dynamic too).
    ann = annotation(mm.args[0])
    spec = ann.outputs[0]
    ann.outputs = [TensorSpec(spec.shape, spec.dtype, (spec.symbolic[0], "h") + spec.symbolic[2:])]
    assert "symbolic" in split_choice(mm, gm, "auto", 3)


def test_balance_split_refuses_a_symbolic_batch():
    """partition's balance splits cut matmuls along dim 0 only: not when dim 0 is the dynamic batch."""
    from autoglm.passes.partition.split import _choice

    _, gm, flat, _ = _fresh("bert", attn="eager", batch=6)
    annotate(gm, flat)
    mm = next(n for n in gm.graph.nodes if matmul_view(n, gm) is not None)
    assert _choice(mm, gm, 2) is None
    linear = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default)
    assert _choice(linear, gm, 2).how == "linear_out"


# ------------------------------------------------------------------ partition + local runtime

PARTITION_SHAPES = [(1, 1), (1, 12), (3, 1), (2, 12), (5, 33), (4, 64)]


@pytest.mark.parametrize("name,k", [("llama", 2), ("llama", 4), ("gpt2", 2), ("gpt2", 4)])
def test_partition_runs_any_shape_on_the_local_executor(name, k):
    from autoglm.runtime.local import LocalExecutor

    model, compiled, _ = _compile(name, f"partition(k={k})", CPU2)
    assert isinstance(compiled.executor, LocalExecutor)
    assert compiled.notes["partition"]["costs_at"] == "example shapes"
    assert len({annotation(n).partition for n in compiled.graph_module.graph.nodes
                if annotation(n).partition is not None}) == k
    _assert_runs(model, name, compiled.executor, PARTITION_SHAPES)


def test_partition_shape_values_read_their_own_symbolic_source():
    """Every copy of a ``sym_size`` node reads a tensor whose dimension has that node's symbol."""
    _, compiled, _ = _compile("llama", "partition(k=4)", CPU2)
    gm = compiled.graph_module
    sizes = [n for n in gm.graph.nodes if n.target is torch.ops.aten.sym_size.int]
    assert sizes
    for n in sizes:
        src, dim = n.args
        assert str(n.meta["val"].node.expr) == output_specs(src)[0].symbolic[dim], n.name


# ------------------------------------------------------------------ pipeline runtime


def test_pipeline_runs_other_batches_and_lengths(tmp_path):
    """A dynamic graph in a 2-stage pipeline at other shapes; microbatches never exceed the batch."""
    from autoglm.artifacts.directory import save_artifact
    from autoglm.runtime.pipeline.driver import run_pipeline

    model, compiled, sig = _compile("gpt2", "partition(k=2,contiguous=True)", CPU2)
    path = tmp_path / "art"
    save_artifact(path, compiled.graph_module, sig, list(_captured("gpt2")[2]), {"devices": CPU2})
    for (batch, seq), expect_mb in [((1, 1), 1), ((6, 9), 3)]:
        flat, ref = _eager(model, "gpt2", batch, seq)
        outputs, stats = run_pipeline(path, flat, nproc=2, microbatches=4, step_timeout_s=60, return_stats=True)
        assert stats.microbatches == expect_mb  # the largest count <= 4 that cuts the batch into equal pieces
        torch.testing.assert_close(outputs[0], ref, msg=lambda m: f"(batch, seq)=({batch}, {seq}): {m}")


def test_effective_microbatches():
    from autoglm.runtime.pipeline.worker import effective_microbatches

    assert [effective_microbatches(b, 4) for b in (1, 2, 3, 4, 5, 6, 8, 9, 12)] == [1, 2, 3, 4, 1, 3, 4, 3, 4]


# ------------------------------------------------------------------ quantize


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).mean().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.pow(2).mean().item() / noise)


def test_quantize_dynamic_runs_at_other_shapes():
    """int8 dynamic quantization on the dynamic graph: at each shape, SQNR against that shape's own
    fp32 output >= 30 dB (random weights; measured 44.5-46.2 dB at these four shapes)."""
    model, compiled, _ = _compile("bert", "quantize(mode=dynamic,progress=False)")
    assert any("int8" in annotation(n).tags for n in compiled.graph_module.graph.nodes)
    # The kernel choices were timed at row counts around the example's: the notes say so.
    assert "timed at row counts" in compiled.notes["quantize"]["kernels_timed_at"]
    for batch, seq in [(1, 5), (4, 33), (2, 12), (7, 1)]:
        flat, ref = _eager(model, "bert", batch, seq)
        with torch.no_grad():
            out = compiled.executor(*flat)[0]
        assert out.shape == ref.shape
        assert _sqnr_db(ref, out) >= 30.0, (batch, seq, _sqnr_db(ref, out))
