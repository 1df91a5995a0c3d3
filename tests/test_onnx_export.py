"""ONNX export and the onnxruntime executor.

Every export here runs the exporter's own checks (ONNX checker, strict shape
inference, onnxruntime parity on three input sets); the tests additionally
re-run the saved file in a fresh session against eager PyTorch, so they would
catch an export that checked itself wrongly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoglm
from autoglm.export.onnx.check import OnnxParityError, random_like
from autoglm.api.entry import load
from autoglm.export.onnx.export import OnnxExportError, attach_onnxruntime, export_onnx
from autoglm.runtime.onnxruntime import OrtExecutor, OrtInputError
from examples.models import small_cnn, small_transformer

RTOL, ATOL = 1e-3, 1e-5


def _eager(model: nn.Module, *args, **kwargs) -> tuple:
    with torch.no_grad():
        out = model(*args, **kwargs)
    if hasattr(out, "to_tuple"):  # Hugging Face ModelOutput
        out = out.to_tuple()
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _assert_parity(got: tuple, want: tuple) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)


def _op_types(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


@pytest.mark.parametrize("factory", [small_transformer, small_cnn], ids=["transformer", "cnn"])
def test_example_models_export_with_parity_and_dynamic_batch(factory, tmp_path):
    model, inputs = factory()
    cm = autoglm.compile(model, inputs)
    result = cm.export_onnx(tmp_path / "model.onnx")
    assert [p.inputs for p in result.parity] == ["example", "random-1", "random-2", "dynamic-shape"]
    assert all(p.ok and p.mismatched == 0 for p in result.parity)
    assert result.dynamic_axes["input_0"][0] == "batch"
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    # A fresh session on the saved file, against eager, at the example batch and another one.
    ort = OrtExecutor(tmp_path / "model.onnx", threads=1)
    _assert_parity(ort(*inputs), _eager(model, *inputs))
    bigger = tuple(torch.cat([x, x[:1]]) for x in inputs)
    _assert_parity(ort(*bigger), _eager(model, *bigger))
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # nothing left from the staging directory
    if factory is small_transformer:  # token ids: the sequence axis is dynamic too
        assert result.dynamic_axes["input_0"] == {0: "batch", 1: "seq"}
        longer = torch.randint(0, 1000, (3, 40))
        _assert_parity(ort(longer), _eager(model, longer))


def _hf(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      use_cache=False)
        model = transformers.GPT2Model(cfg)
    ids = torch.randint(0, 128, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    return model.eval(), {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_hf_models_export_with_keyword_inputs(kind, tmp_path):
    model, kwargs = _hf(kind)
    cm = autoglm.compile(model, kwargs)
    result = export_onnx(cm, tmp_path / f"{kind}.onnx")
    assert result.input_names == ["input_ids", "attention_mask"]
    assert result.output_names[0] == "last_hidden_state"
    assert all(p.ok for p in result.parity) and len(result.parity) == 4
    # The graph is captured with dynamic batch and sequence dims (autoglm.capture.dynamic), so the
    # file has them as named axes, checked at another shape ("dynamic-shape").
    assert result.dynamic_axes == {name: {0: "batch", 1: "seq"} for name in ("input_ids", "attention_mask")}
    assert result.parity[-1].inputs == "dynamic-shape"
    ort = OrtExecutor(result.path, threads=1)
    other_mask = kwargs["attention_mask"].clone()
    other_mask[0, 4:] = 0
    got = ort(kwargs["input_ids"], other_mask)
    want = _eager(model, input_ids=kwargs["input_ids"], attention_mask=other_mask)
    _assert_parity(got, want)


def test_backend_onnxruntime_is_a_drop_in_callable():
    model, (x,) = small_cnn()
    cm = autoglm.compile(model, (x,), backend="onnxruntime", backend_options={"threads": 1})
    assert isinstance(cm.executor, OrtExecutor)
    assert cm.executor.session.get_session_options().intra_op_num_threads == 1
    torch.testing.assert_close(cm(x), model(x), rtol=RTOL, atol=ATOL)
    x7 = torch.randn(7, 1, 8, 8)  # dynamic batch through the CompiledModel interface
    torch.testing.assert_close(cm(x7), model(x7), rtol=RTOL, atol=ATOL)
    path = Path(cm.notes["onnxruntime"]["path"])
    assert path.is_file()


def test_attach_to_explicit_path_and_options(tmp_path):
    model, (x,) = small_cnn()
    cm = autoglm.compile(model, (x,))
    ex = attach_onnxruntime(cm, threads=1, path=tmp_path / "m.onnx", optimization="basic", dynamic=False)
    assert cm.executor is ex and (tmp_path / "m.onnx").is_file()
    assert cm.notes["onnxruntime"]["export"]["dynamic_axes"] == {}
    torch.testing.assert_close(cm(x), model(x), rtol=RTOL, atol=ATOL)


def test_loaded_artifact_exports_with_external_data(tmp_path):
    model, (x,) = small_cnn()
    autoglm.compile(model, (x,)).save(tmp_path / "artifact")
    out = tmp_path / "onnx" / "cnn.onnx"
    result = export_onnx(load(tmp_path / "artifact"), out, external_data=True)
    assert result.external_data == ["cnn.onnx.data"]
    assert (out.parent / "cnn.onnx.data").is_file()
    assert out.stat().st_size < (out.parent / "cnn.onnx.data").stat().st_size  # the weights went out
    _assert_parity(OrtExecutor(out, threads=1)(x), _eager(model, x))


def test_sparse_csr_layers_export_dense_with_mask_metadata(tmp_path):
    from autoglm.ir.sparse_modules import CsrLinear

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(5, 16)
    cm = autoglm.compile(model, (x,))
    gm = cm.graph_module
    lin = gm.get_submodule("model.0")
    w = lin.weight.detach().clone()
    w[w.abs() < w.abs().median()] = 0.0
    gm.set_submodule("model.0", CsrLinear.from_dense(w, lin.bias.detach()))
    want = _eager(gm, x)
    result = cm.export_onnx(tmp_path / "sparse.onnx")
    assert all(p.ok for p in result.parity)
    meta = json.loads(result.metadata["autoglm.sparse"])
    assert meta["model.0"]["mask"] == "weight != 0" and meta["model.0"]["density"] == pytest.approx(0.5, abs=0.01)
    stored = {p.key: p.value for p in onnx.load(str(tmp_path / "sparse.onnx")).metadata_props}
    assert json.loads(stored["autoglm.sparse"]) == meta
    _assert_parity(OrtExecutor(tmp_path / "sparse.onnx", threads=1)(x), want)


class _WrongTwin(nn.Linear):
    """Exports a twin whose math differs: the parity check must catch it."""

    def __autoglm_onnx__(self) -> nn.Module:
        twin = nn.Linear(self.in_features, self.out_features)
        with torch.no_grad():
            twin.weight.copy_(self.weight * 1.01)
            twin.bias.copy_(self.bias)
        return twin


def test_parity_failure_raises_and_leaves_no_file(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh()).eval()
    cm = autoglm.compile(model, (torch.randn(3, 8),))
    wrong = _WrongTwin(8, 8)
    wrong.load_state_dict(model[0].state_dict())
    cm.graph_module.set_submodule("model.0", wrong)
    with pytest.raises(OnnxParityError, match="example inputs"):
        cm.export_onnx(tmp_path / "bad.onnx", dynamic=False)
    assert list(tmp_path.iterdir()) == []


def test_torch_cond_exports_as_onnx_if(tmp_path):
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: self.a(t).relu(), lambda t: self.b(t) * 2, (x,))

    model = Gate().eval()
    x = torch.randn(3, 8).abs()
    cm = autoglm.compile(model, (x,))
    cm.export_onnx(tmp_path / "cond.onnx")
    assert "If" in _op_types(tmp_path / "cond.onnx")
    ort = OrtExecutor(tmp_path / "cond.onnx", threads=1)
    for inp in (x, -x):  # both branches
        _assert_parity(ort(inp), _eager(model, inp))


def test_bad_arguments_give_clear_errors(tmp_path):
    model, (x,) = small_cnn()
    cm = autoglm.compile(model, (x,))
    with pytest.raises(ValueError, match="must end in .onnx"):
        cm.export_onnx(tmp_path / "model.bin")
    with pytest.raises(TypeError, match="unknown export option"):
        cm.export_onnx(tmp_path / "m.onnx", opset_version=17)
    with pytest.raises(ValueError, match="opset 11 is too old"):
        cm.export_onnx(tmp_path / "m.onnx", opset=11)
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        OrtExecutor(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="optimization must be one of"):
        attach_onnxruntime(cm, optimization="max")
    assert isinstance(OnnxParityError("x"), OnnxExportError)


def test_executor_checks_its_inputs(tmp_path):
    model, (x,) = small_cnn()
    autoglm.compile(model, (x,)).export_onnx(tmp_path / "m.onnx", dynamic=False, parity_sets=0)
    ort = OrtExecutor(tmp_path / "m.onnx", threads=1)
    with pytest.raises(OrtInputError, match="takes 1 input tensors"):
        ort(x, x)
    with pytest.raises(OrtInputError, match="bfloat16"):
        ort(x.bfloat16())


def test_random_inputs_keep_ranges_and_padding():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (4, 12))
    r = random_like(ids, gen)
    assert r.dtype == ids.dtype and r.shape == ids.shape and int(r.min()) >= 5 and int(r.max()) <= 49
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 9:] = 0
    mask[3, 2:] = 0
    for _ in range(5):
        m = random_like(mask, gen, (6, 12))
        assert bool((m[:, 0] == 1).all())  # right padding, never an empty row
        assert bool(((m[:, 1:] - m[:, :-1]) <= 0).all())
    assert bool((random_like(torch.ones(2, 5, dtype=torch.long), gen) == 1).all())
    x = torch.randn(100)
    rx = random_like(x, gen)
    assert float(rx.min()) >= float(x.min()) and float(rx.max()) <= float(x.max())


class _QdqTwin(nn.Module):
    """The QDQ form ONNX Runtime fuses: DQ(pre-transposed int8 weight, per-channel
    scales on axis 1) -> MatMul, activations through Q/DQ, bias as a separate Add."""

    def __init__(self, w_int8_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor, act_scale: float):
        super().__init__()
        self.register_buffer("w_int8_t", w_int8_t)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_zero", torch.zeros_like(w_scale, dtype=torch.int64))
        self.register_buffer("bias", bias)
        self.act_scale = act_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        w = qd.dequantize_per_channel(self.w_int8_t, self.w_scale, self.w_zero, 1, -127, 127, torch.int8)
        q = qd.quantize_per_tensor(x, self.act_scale, 0, -128, 127, torch.int8)
        return torch.matmul(qd.dequantize_per_tensor(q, self.act_scale, 0, -128, 127, torch.int8), w) + self.bias


class _Int8Linear(nn.Linear):
    """A stand-in for the quantize pass's modules: int8-simulated math in PyTorch,
    a QDQ twin for ONNX through the ``__autoglm_onnx__`` hook."""

    def freeze(self, act_scale: float) -> "_Int8Linear":
        self.w_scale = (self.weight.detach().abs().amax(1) / 127).float()
        self.w_int8 = torch.clamp(torch.round(self.weight.detach() / self.w_scale[:, None]), -127, 127).to(torch.int8)
        self.act_scale = act_scale
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.clamp(torch.round(x / self.act_scale), -128, 127) * self.act_scale
        return xq @ (self.w_int8.float() * self.w_scale[:, None]).t() + self.bias

    def __autoglm_onnx__(self) -> nn.Module:
        return _QdqTwin(self.w_int8.t().contiguous(), self.w_scale, self.bias.detach(), self.act_scale)


def test_int8_modules_export_as_fused_qdq(tmp_path):
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers quantized_decomposed ops

    from autoglm.ir.meta import annotation
    from autoglm.export.onnx.check import int8_kernel_report

    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(6, 32)
    cm = autoglm.compile(model, (x,))
    gm = cm.graph_module
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Linear):
            lin = gm.get_submodule(node.target)
            q = _Int8Linear(lin.in_features, lin.out_features)
            q.load_state_dict(lin.state_dict())
            gm.set_submodule(node.target, q.freeze(act_scale=0.05))
            annotation(node).tags["int8"] = {"weight": "per-channel", "activation": "static"}
    result = cm.export_onnx(tmp_path / "int8.onnx", int8_min_sqnr_db=40.0)
    assert result.int8 and all(p.ok for p in result.parity)
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    # One 8-bit weight with per-output-channel scales per layer; the twin's int8 weight is stored as
    # uint8 + 128 with zero point 128 (same real values; exact u8 x u8 kernels in onnxruntime).
    per_channel = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[0]].data_type == onnx.TensorProto.UINT8 and list(inits[n.input[1]].dims) ==
                   [inits[n.input[0]].dims[1]]]
    assert len(per_channel) == 2
    for n in per_channel:
        zero = onnx.numpy_helper.to_array(inits[n.input[2]])
        assert zero.dtype.name == "uint8" and (zero == 128).all()
    report = int8_kernel_report(tmp_path / "int8.onnx", threads=1)
    assert report["share"] == 1.0 and report["int8_kernels"] == 2, report


def test_quantize_pass_exports_as_qdq(tmp_path):
    from autoglm.export.onnx.check import int8_kernel_report
    from autoglm.passes import REGISTRY

    if "quantize" not in REGISTRY:
        pytest.skip("quantize pass not registered yet (passes/__init__.py REGISTRY)")
    model, (x,) = small_cnn()
    for mode in ("dynamic", "static"):
        cm = autoglm.compile(model, (x,), passes=f"quantize(mode={mode},progress=False)")
        result = cm.export_onnx(tmp_path / f"{mode}.onnx", dynamic=False)
        ops = _op_types(tmp_path / f"{mode}.onnx")
        # dynamic Linear: quantize_dynamic's own MatMulInteger form; static: QDQ.
        assert result.int8 and ("MatMulInteger" in ops if mode == "dynamic" else "DequantizeLinear" in ops)
        assert all(p.ok and p.sqnr_db >= 25.0 for p in result.parity)
        report = int8_kernel_report(tmp_path / f"{mode}.onnx", threads=1)
        assert report["share"] >= 0.95, report
        # Against eager fp32: the int8 file stays close (the pass's own default budget is accuracy, not exactness).
        got, want = OrtExecutor(result.path, threads=1)(x)[0], model(x)
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99
    assert report["op_counts"].get("QLinearConv") == 2  # static mode quantizes the convs too


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h) * 2
        else:
            h = self.b(h)
        return self.c(h)


def test_branching_program_exports_paths_and_manifest(tmp_path):
    from autoglm.runtime.onnxruntime import OrtPathsExecutor, PathNotExportedError

    torch.manual_seed(0)
    model = _Branchy().eval()
    with torch.no_grad():
        model.a.bias.fill_(0.0)
    x = torch.randn(3, 8)
    with torch.no_grad():  # without bias a(-x) = -a(x): one input per branch
        pos = x * model.a(x).sum().sign()
    neg = -pos
    cm = autoglm.compile(model, (pos,))
    one = cm.export_onnx(tmp_path / "one" / "m.onnx")
    manifest = json.loads(Path(one.manifest).read_text())
    assert [p["outcomes"] for p in manifest["paths"]] == [[True]]
    assert "test_onnx_export.py" in manifest["paths"][0]["guards"][0]["source"]
    only_true = OrtPathsExecutor(one.manifest, threads=1)
    _assert_parity(only_true(pos), _eager(model, pos))
    with pytest.raises(PathNotExportedError, match="test_onnx_export.py"):
        only_true(neg)
    cm(neg)  # compiles the other path
    both = cm.export_onnx(tmp_path / "both" / "m.onnx")
    assert sorted(os.listdir(tmp_path / "both")) == ["m.manifest.json", "m.path0.onnx", "m.path1.onnx"]
    assert all(r.parity and all(p.ok for p in r.parity) for r in both.paths)
    ex = OrtPathsExecutor(both.manifest, threads=1)
    for inp in (pos, neg, pos * 2, neg * 3):
        _assert_parity(ex(inp), _eager(model, inp))


def _optimized_graph(path: Path, tmp_path: Path) -> onnx.GraphProto:
    from autoglm.runtime.onnxruntime import OrtOptions

    out = tmp_path / (path.stem + ".optimized.onnx")
    OrtExecutor(path, OrtOptions(threads=1, optimized_model_path=str(out)))
    return onnx.load(str(out), load_external_data=False).graph


def test_dynamic_int8_linear_bias_fuses_into_ort_kernel(tmp_path):
    """Our dynamic Int8Linear exports as quantize_dynamic's MatMulInteger form, which
    onnxruntime fuses into one int8 kernel *with* the bias (no separate bias Add)."""
    model, inputs = small_transformer(batch=2, seq=16)
    cm = autoglm.compile(model, inputs, passes="quantize(progress=False)")
    result = cm.export_onnx(tmp_path / "int8.onnx", dynamic=False)
    assert all(p.ok and p.sqnr_db >= 25.0 for p in result.parity)
    ops = _op_types(tmp_path / "int8.onnx")
    assert ops.count("MatMulInteger") == 13 and ops.count("DequantizeLinear") == 0
    graph = _optimized_graph(tmp_path / "int8.onnx", tmp_path)
    inits = {i.name for i in graph.initializer}
    kernels = [n for n in graph.node if n.op_type in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")]
    assert len(kernels) == 13
    bias_slot = {"DynamicQuantizeMatMul": 4, "MatMulIntegerToFloat": 6}
    kernel_outputs = {n.output[0] for n in kernels}
    loose_bias_adds = [n for n in graph.node if n.op_type == "Add" and n.input[0] in kernel_outputs
                       and n.input[1] in inits]
    assert not loose_bias_adds, [n.input for n in loose_bias_adds]
    # A bias onnxruntime did not take into the kernel went into a SkipLayerNormalization.
    absorbed = sum(1 for n in graph.node if n.op_type == "SkipLayerNormalization" and len(n.input) > 4
                   and n.input[4])
    with_bias = sum(1 for n in kernels if len(n.input) > bias_slot[n.op_type] and n.input[bias_slot[n.op_type]])
    assert with_bias + absorbed == 13, (with_bias, absorbed)


def test_gpt2_int8_export_runs_int8_kernels(tmp_path):
    from autoglm.export.onnx.check import int8_kernel_report

    model, kwargs = _hf("gpt2")
    cm = autoglm.compile(model, kwargs, passes="quantize(progress=False)")
    result = export_onnx(cm, tmp_path / "gpt2_int8.onnx")
    assert result.int8 and all(p.ok and p.sqnr_db >= 25.0 for p in result.parity), result.parity
    report = int8_kernel_report(tmp_path / "gpt2_int8.onnx", threads=1)
    assert report["int8_kernels"] == 8 and report["share"] >= 0.95, report  # 2 blocks x 4 Conv1D
    got = OrtExecutor(result.path, threads=1)(*kwargs.values())[0]
    want = _eager(model, **kwargs)[0]
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos >= 0.999, cos  # measured 0.999976 (43.2 dB SQNR) vs fp32 (random weights, this config)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_unlowered_qdq_graph_exports_like_lowered(mode, tmp_path):
    from autoglm.export.onnx.check import int8_kernel_report

    model, inputs = small_transformer(batch=2, seq=16)
    cm = autoglm.compile(model, inputs, passes=f"quantize(progress=False,lower=False,mode={mode})")
    assert any(n.target is torch.ops.aten.linear.default for n in cm.graph_module.graph.nodes)  # q/dq form
    result = cm.export_onnx(tmp_path / "qdq.onnx")
    assert result.int8 and all(p.ok and p.sqnr_db >= 25.0 for p in result.parity)
    report = int8_kernel_report(result.path, threads=1)
    assert report["int8_kernels"] == 13 and report["share"] == 1.0, report
    # Against eager fp32 at another batch size (the export is dynamic).
    x = torch.randint(0, 1000, (3, 16))
    got, want = OrtExecutor(result.path, threads=1)(x)[0], model(x)
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99


class _LeafInt8Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from autoglm.ir.int8 import Int8Conv2d, Int8Linear

        return isinstance(m, (Int8Linear, Int8Conv2d)) or super().is_leaf_module(m, qualname)


def _int8_graph(mod: nn.Module) -> torch.fx.GraphModule:
    root = nn.Sequential(mod).eval()
    return torch.fx.GraphModule(root, _LeafInt8Tracer().trace(root))


@pytest.mark.parametrize("pattern", ["dynamic-linear", "static-linear", "static-conv", "dynamic-conv"])
def test_int8_export_is_exact_in_onnxruntime_worst_case(pattern, tmp_path):
    """Activations at uint8 255 times weights at +-127: every pair of products is 64770, which
    onnxruntime's u8 x s8 kernels saturate to 32767 on x86 CPUs without VNNI (AVX2 only). The
    exported file must give the exact int32 sums, in a session without ``x64quantprecision``
    (so the file itself is exact, not just our executor). Scales are powers of two: the float
    outputs are the integer sums times 2^-k, exactly."""
    from autoglm.ir.int8 import Int8Conv2d, Int8Linear
    from autoglm.export.onnx.check import int8_kernel_report
    from autoglm.export.onnx.export import ExportOptions, export_graph
    from autoglm.runtime.onnxruntime import OrtOptions

    gen = torch.Generator().manual_seed(0)
    k, n, w_scale = 64, 16, 2.0 ** -7
    wq = torch.where(torch.rand(n, k, generator=gen) < 0.5, -127, 127).to(torch.int8)
    wq[0], wq[1] = 127, -127  # the worst cases themselves: all pairs at +-64770
    if pattern == "static-conv":
        c = k // 4
        mod = Int8Conv2d(wq.reshape(n, c, 2, 2), torch.full((n,), w_scale), None, act_scale=2.0 ** -4,
                         act_zero_point=0, out_scale=8.0, out_zero_point=128, kernel="int_mm_static")
        x = torch.full((2, c, 3, 3), 255 * 2.0 ** -4)  # uint8 code 255 everywhere
        acc = 255 * wq.long().sum(1)  # per output channel, at every position
        # output q/dq: acc * 2^-11 / 8 rounded (no ties: acc = 64770 * j, |j| <= 32), zero point 128
        want = ((torch.round(acc.double() * 2.0 ** -14).clamp(-128, 127)) * 8.0).reshape(1, n, 1, 1).expand(2, n, 2, 2)
    elif pattern == "dynamic-conv":
        c = k // 4
        mod = Int8Conv2d(wq.reshape(n, c, 2, 2), torch.full((n,), w_scale), None, kernel="int_mm_dynamic")
        # dynamic range [0, 255/256]: scale 1/256, zero point 0; code 255 except one 0 (first window only)
        x = torch.full((2, c, 3, 3), 255 / 256)
        x[0, 0, 0, 0] = 0.0
        codes = torch.round(x / 2.0 ** -8)
        assert codes.max() == 255
        want = F.conv2d(codes.double(), wq.reshape(n, c, 2, 2).double()) * (2.0 ** -8 * w_scale)
    else:
        static = pattern == "static-linear"
        mod = Int8Linear(wq, torch.full((n,), w_scale), None, 2.0 ** -4 if static else None, 0 if static else None,
                         kernel="int_mm_static" if static else "int_mm_dynamic")
        if static:
            x, x_scale = torch.full((8, k), 255 * 2.0 ** -4), 2.0 ** -4
        else:  # dynamic range [0, 255/256]: scale 1/256, zero point 0, code 255 (0 at [0, 0])
            x, x_scale = torch.full((8, k), 255 / 256), 2.0 ** -8
            x[0, 0] = 0.0
        codes = torch.round(x / x_scale).long()
        assert codes.max() == 255
        want = (codes @ wq.long().t()).double() * (x_scale * w_scale)
    gm = _int8_graph(mod)
    path = tmp_path / f"{pattern}.onnx"
    result = export_graph(gm, (x,), path, ExportOptions(dynamic=False), ["x"], [])
    assert result.int8 and all(p.ok for p in result.parity), result.parity
    # The file stores the weight as uint8 + 128 (zero point 128): same real values.
    proto = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = [a for a in inits.values() if a.shape in ((k, n), (n, k // 4, 2, 2))]
    assert len(weights) == 1 and weights[0].dtype.name == "uint8", {name: a.dtype for name, a in inits.items()}
    assert not any(a.dtype.name == "int8" for a in inits.values())
    plain = {"threads": 1, "session_config": {"session.x64quantprecision": "0"}}
    report = int8_kernel_report(path, **plain)
    assert report["int8_kernels"] == 1 and report["share"] == 1.0, report  # it ran as an int8 kernel
    got = OrtExecutor(path, OrtOptions(**plain))(x)[0]
    assert torch.equal(got.double(), want), (got.double() - want).abs().max()
    assert torch.equal(gm(x).double(), want)  # the compiled module is exact too


def test_store_weights_uint8_keeps_values_and_leaves_other_int8_alone():
    """Only weights every use of which is a quantized-weight input move to uint8 (+128); an int8
    zero point shared with an int8 activation's Q/DQ stays int8 there, an int8 table read by
    ``Gather`` stays int8, and onnxruntime computes the same numbers (here: exactly)."""
    import numpy as np
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto as T, helper, numpy_helper

    from autoglm.export.onnx.int8 import store_weights_uint8

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 4)).astype(np.int8)
    table = rng.integers(-127, 128, (5, 8)).astype(np.int8)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),  # int8 activation, zero point "z"
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "z"], ["wd"]),  # the weight shares "z"
             helper.make_node("MatMul", ["xd", "wd"], ["y"]),
             helper.make_node("MatMulInteger", ["xq", "w"], ["acc"]),  # no zero points at all
             helper.make_node("Gather", ["table", "ids"], ["rows"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(0.25, np.float32), "ws")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [3, 8]),
                                           helper.make_tensor_value_info("ids", T.INT64, [2])],
                              [helper.make_tensor_value_info(n, t, shape) for n, t, shape in
                               (("y", T.FLOAT, [3, 4]), ("acc", T.INT32, [3, 4]), ("rows", T.INT8, [2, 8]))], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    model = ir.serde.deserialize_model(proto)
    assert store_weights_uint8(model) == 1
    rewritten = ir.serde.serialize_model(model)
    onnx.checker.check_model(rewritten, full_check=True)
    dtypes = {i.name: i.data_type for i in rewritten.graph.initializer}
    assert dtypes["w"] == T.UINT8 and dtypes["table"] == T.INT8 and dtypes["z"] == T.INT8
    by_op = {n.op_type: n for n in rewritten.graph.node if n.op_type != "DequantizeLinear"}
    assert dtypes[by_op["MatMulInteger"].input[3]] == T.UINT8
    feeds = {"x": rng.uniform(-60, 60, (3, 8)).astype(np.float32), "ids": np.array([4, 1])}
    outs = [ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
            for p in (proto, rewritten)]
    xq = np.clip(np.round(feeds["x"] / 0.5), -128, 127)
    np.testing.assert_array_equal(outs[1][1], xq.astype(np.int64) @ w.astype(np.int64))  # exact int32 sums
    np.testing.assert_allclose(outs[1][0], (xq * 0.5) @ (w * 0.25), rtol=1e-6)
    np.testing.assert_array_equal(outs[1][2], table[[4, 1]])
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
