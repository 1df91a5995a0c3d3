"""The multi-device local executor: parity, save/load, concurrency, transfers, compression."""
import threading
import time

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.runtime.compression import compress, decompress, sqnr_db
from autoglm.runtime.local import LocalExecutor
from examples.graphs import gpt2_decoder
from examples.models import small_transformer


def test_compile_partitioned_runs_on_local_executor_and_matches_eager():
    model, inputs = gpt2_decoder(layers=4, seq=16)  # tied embedding: a weight read by two partitions
    cm = autoglm.compile(model, inputs, passes="partition(k=3)", devices=["cpu", "cpu", "cpu"])
    assert isinstance(cm.executor, LocalExecutor)
    assert len(cm.executor.partitions) == 3
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs))
    assert cm.plan is not None and cm.plan.k == 3 and cm.plan.to_json()["parts"][0]["nodes"]


def test_save_and_load_keeps_partitions(tmp_path):
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="partition(k=2,method=metis)", devices=["cpu", "cpu"])
    cm.save(tmp_path / "art")
    loaded = autoglm.load(tmp_path / "art")
    assert isinstance(loaded.executor, LocalExecutor)
    before = {n.name: n.meta["autoglm"].partition for n in cm.graph_module.graph.nodes}
    after = {n.name: n.meta["autoglm"].partition for n in loaded.graph_module.graph.nodes}
    assert before == after
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs))


class Branches(nn.Module):
    """Input -> two independent heavy branches -> sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, 64)
        self.left = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 64))
        self.right = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 64))

    def forward(self, x):
        h = self.stem(x)
        return self.left(h) + self.right(h)


def test_independent_partitions_run_concurrently():
    model, x = Branches().eval(), torch.randn(32, 64)
    cm = autoglm.compile(model, (x,), passes="none")
    gm = cm.graph_module
    # Hand-made plan (the executor reads annotations): stem | left | right | join.
    for n in gm.graph.nodes:
        name = str(n.target) if n.op == "call_module" else ""
        part = 1 if ".left." in name else 2 if ".right." in name else 3 if n.op == "call_function" else 0
        n.meta["autoglm"].partition = part
    ex = LocalExecutor(gm, ["cpu"] * 4)
    deps = {pm.index: set(pm.reads_from) for pm in ex.partitions}
    assert deps == {0: set(), 1: {0}, 2: {0}, 3: {1, 2}}
    a, b = 1, 2
    spans = {}
    for pm in ex.partitions:
        if pm.index in (a, b):
            inner = pm.module

            def slow(*args, _inner=inner, _i=pm.index):
                start = time.perf_counter()
                time.sleep(0.3)  # stands in for a long kernel that releases the GIL
                out = _inner(*args)
                spans[_i] = (start, time.perf_counter(), threading.get_ident())
                return out

            pm.module = slow
    with torch.no_grad():
        torch.testing.assert_close(ex(x)[0], model(x))
    (s1, e1, t1), (s2, e2, t2) = spans[a], spans[b]
    assert t1 != t2 and s1 < e2 and s2 < e1, "independent partitions did not overlap"


def test_boundary_compression_saves_bytes_with_measured_error():
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="partition(k=2)", devices=["cpu", "cpu"])
    with torch.no_grad():
        ref = model(*inputs)
        plain = LocalExecutor(cm.graph_module, ["cpu", "cpu"])
        plain(*cm.example_inputs)
        assert plain.stats.saved_bytes == 0 and plain.stats.raw_bytes == cm.plan.cut_bytes
        for mode, ratio, min_db in (("fp16", 0.5, 40.0), ("int8", 0.25, 20.0)):
            ex = LocalExecutor(cm.graph_module, ["cpu", "cpu"], compression=mode)
            out = ex(*cm.example_inputs)
            assert ex.stats.raw_bytes == cm.plan.cut_bytes
            assert ex.stats.sent_bytes <= ratio * ex.stats.raw_bytes + 8 * ex.stats.transfers
            assert sqnr_db([ref], [out[0]]) >= min_db


def test_compress_roundtrip_keeps_integers_exact():
    ids = torch.arange(10)
    assert compress(ids, "int8") is ids
    x = torch.randn(1000)
    err = (decompress(compress(x, "int8")) - x).abs().max()
    assert err <= x.abs().max() / 127 / 2 + 1e-6
    with pytest.raises(ValueError, match="compression must be one of"):
        compress(x, "int4")


def test_grad_mode_follows_the_caller_and_input_count_is_checked():
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="partition(k=2)", devices=["cpu", "cpu"])
    with torch.no_grad():
        assert not cm.executor(*cm.example_inputs)[0].requires_grad
    assert cm.executor(*cm.example_inputs)[0].requires_grad == cm.graph_module(*cm.example_inputs)[0].requires_grad
    with pytest.raises(TypeError, match="expected 1 flat inputs, got 2"):
        cm.executor(*cm.example_inputs, *cm.example_inputs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_partitions():
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="partition(k=2)", devices=["cuda:0", "cpu"])
    ex = cm.executor
    assert {str(d) for d in ex.device_of.values()} == {"cuda:0", "cpu"}
    with torch.no_grad():
        out = cm(*inputs)
        assert out.device.type == "cpu"
        torch.testing.assert_close(out, model(*inputs), rtol=1e-4, atol=1e-4)
