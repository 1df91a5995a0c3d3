"""quantize / quantize_lower: structure, accuracy by measurement, real data, artifacts."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoglm
from autoglm.ir.int8 import CONV_KERNELS, LINEAR_KERNELS, Int8Conv2d, Int8Embedding, Int8Linear, kernel_exact
from autoglm.ir.pass_manager import PassManager, sqnr_db
from autoglm.passes.quantize.quantize import Quantize
from autoglm.passes.quantize.lower import QuantizeLower
from autoglm.passes.spec import SpecError
from examples.models import digits_cnn, small_cnn, small_transformer
from tests.pass_check import capture_for_test, check_pass, op_sequence


def _modules(gm, cls):
    return [m for m in gm.modules() if type(m) is cls]


def _quantized_rows(notes):
    return [r for r in notes["layers"] if r["status"] == "int8"]


def test_dynamic_transformer_symbolic_lowers_every_linear():
    model, inputs = small_transformer()
    gm = check_pass(Quantize(progress=False), model, inputs, min_sqnr_db=30.0,
                    changed=lambda g: not any(type(m) is nn.Linear for m in g.modules()))
    assert len(_modules(gm, Int8Linear)) == 13  # 2 layers x (q, k, v, out, fc1, fc2) + head
    assert len(_modules(gm, Int8Embedding)) == 2
    assert all(m.weight_int8.dtype == torch.int8 for m in _modules(gm, Int8Linear))


def test_export_spelling_and_per_layer_sqnr():
    model, inputs = small_transformer()
    gm, ctx = capture_for_test(model, inputs, frontend="export")
    assert "fn:linear.default" in op_sequence(gm)
    gm = PassManager([Quantize(progress=False)]).run(gm, ctx)
    assert "fn:linear.default" not in op_sequence(gm)
    rows = [r for r in _quantized_rows(ctx.notes["quantize"]) if r["kind"] == "linear"]
    assert len(rows) == 13
    assert min(r["sqnr_db"] for r in rows) >= 30.0, rows  # acceptance: every quantized Linear >= 30 dB
    with torch.no_grad():
        assert sqnr_db([model(*inputs)], [gm(*ctx.example_inputs)[0]]) >= 30.0


class _TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def test_unlowered_qdq_pattern_then_lowering_matches():
    model, x = _TwoLinear().eval(), torch.randn(4, 16)
    gm, ctx = capture_for_test(model, (x,))
    gm = PassManager([Quantize(lower=False, smooth=None, progress=False)]).run(gm, ctx)  # no smoothing Mul
    qdq = ["fn:dequantize_per_channel.default", "fn:choose_qparams.tensor", "fn:getitem", "fn:getitem",
           "fn:quantize_per_tensor.tensor", "fn:dequantize_per_tensor.tensor", "fn:linear.default"]
    assert op_sequence(gm) == qdq + ["fn:relu"] + qdq  # the portable form the ONNX exporter maps
    with torch.no_grad():
        reference = gm(x)[0]
    manager = PassManager([QuantizeLower()])
    ctx.properties.add("int8")
    gm = manager.run(gm, ctx)
    assert manager.records[-1].modified
    assert op_sequence(gm) == ["module:Int8Linear", "fn:relu", "module:Int8Linear"]
    with torch.no_grad():
        assert sqnr_db([reference], [gm(x)[0]]) >= 40.0  # kernels compute what the q/dq graph says


def _worst_case_linear(static: bool, kernel: str, in_features: int = 64) -> tuple[Int8Linear, torch.Tensor]:
    """Every weight 127, every activation quantized to 255: int16 pair sums (64770) would saturate."""
    q = torch.full((8, in_features), 127, dtype=torch.int8)
    mod = Int8Linear(q, torch.ones(8), None, 1.0 if static else None, 0 if static else None, kernel=kernel)
    x = torch.full((4, in_features), 255.0)
    x[:, 0] = 0.0  # dynamic: range [0, 255] -> scale 1, zero point 0
    return mod, x


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_every_linear_kernel_sums_exactly_on_this_cpu(mode):
    """Whatever kernel a module names (chosen here, or saved on another machine), it computes
    exact int32 sums: fbgemm's int16 pair saturation without VNNI (AVX2) must never run."""
    for kernel in LINEAR_KERNELS[mode]:
        mod, x = _worst_case_linear(mode == "static", kernel)
        with torch.no_grad():
            got = mod(x)
        exact = torch.full_like(got, 255.0 * 127 * 63)
        torch.testing.assert_close(got, exact, rtol=1e-6, atol=0, msg=f"{kernel} ran as {mod.active_kernel}")
        assert kernel_exact(mod, mod.active_kernel)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 1), (1, 1, 1, 4), (1, 1, 1, 8)], ids=["3x3", "stride", "dilated",
                                                                               "grouped", "depthwise"])
def test_int8_conv_kernels_match_qdq_simulation(stride, padding, dilation, groups):
    from autoglm.ir.int8 import act_qparams, dequantize_weight, fake_quant_dynamic, fake_quant_static, quantize_weight

    g = torch.Generator().manual_seed(0)
    q, s = quantize_weight(torch.randn(8, 8 // groups, 3, 3, generator=g))
    bias = torch.randn(8, generator=g)
    x = torch.rand(2, 8, 9, 9, generator=g)
    x[0, :, 2:6, 2:6] = 1.0  # saturated pixels (like digits' full-ink strokes): the int16 worst case
    pair = [stride] * 2, [padding] * 2, [dilation] * 2
    act = act_qparams(0.0, 1.0)
    y = F.conv2d(fake_quant_static(x, *act), dequantize_weight(q, s), bias, *pair, groups)
    out = act_qparams(float(y.min()), float(y.max()))
    reference = fake_quant_static(y, *out)
    for kernel in CONV_KERNELS["static"]:
        mod = Int8Conv2d(q, s, bias, *pair, groups, *act, *out, kernel=kernel)
        with torch.no_grad():
            got = mod(x)
        assert got.shape == reference.shape
        # Equal up to one output step where fp32 rounding lands on the other side of a tie.
        assert sqnr_db([reference], [got]) >= 60.0, (kernel, mod.active_kernel)
    # Dynamic: the input's qparams from its own range, fp32 output (no output rounding).
    x_dyn = x * 3.0 - 1.0  # a range with negatives: a zero point inside (0, 255)
    dynamic_reference = F.conv2d(fake_quant_dynamic(x_dyn), dequantize_weight(q, s), bias, *pair, groups)
    for kernel in CONV_KERNELS["dynamic"]:
        mod = Int8Conv2d(q, s, bias, *pair, groups, kernel=kernel)
        assert mod.mode == "dynamic" and kernel_exact(mod, kernel)
        with torch.no_grad():
            got = mod(x_dyn)
        assert sqnr_db([dynamic_reference], [got]) >= 100.0, kernel  # exact int32 sums, fp32 scaling


def test_kernel_timing_race_cannot_change_results(monkeypatch):
    """Kernel choice is by timing (noisy on a loaded machine): any outcome of the race gives
    the q/dq graph's accuracy, because only exact kernels are candidates (each layer agrees
    with its q/dq simulation to 60 dB). End to end two exact kernels can still differ more:
    their fp32 epilogues round differently in the last bit, and a dynamic scale chosen from
    one element then re-rounds a whole later tensor (export/onnx/int8_reference.py); measured
    49.7 dB here for fbgemm_dynamic with int7 weights, at the same accuracy against fp32."""
    import itertools

    import autoglm.ir.int8 as int8

    model, inputs = small_transformer()
    gm, ctx = capture_for_test(model, inputs)
    qdq = PassManager([Quantize(progress=False, lower=False)]).run(gm, ctx)
    with torch.no_grad():
        want = qdq(*ctx.example_inputs)[0]
        fp32 = model(*inputs)
    chosen = set()
    for step in (1, -1):  # the first-timed candidate always wins, then the last one
        clock = itertools.count(1000, step)
        monkeypatch.setattr(int8, "_KERNEL_TIMES", {})
        monkeypatch.setattr(int8, "median_seconds", lambda fn, repeats: next(clock))
        gm, ctx = capture_for_test(model, inputs)
        gm = PassManager([Quantize(progress=False)]).run(gm, ctx)
        chosen |= {r["kernel"] for r in ctx.notes["quantize"]["lowered"]}
        with torch.no_grad():
            got = gm(*ctx.example_inputs)[0]
        rows = ctx.notes["quantize"]["lowered"]
        assert sqnr_db([want], [got]) >= 40.0, rows
        assert abs(sqnr_db([fp32], [got]) - sqnr_db([fp32], [want])) <= 0.5, rows
    assert "int_mm_dynamic" in chosen  # (fbgemm_dynamic too, on a CPU where it is exact)


def test_inexact_kernel_is_not_a_candidate(monkeypatch):
    import autoglm.ir.int8 as int8

    real = int8.kernel_exact
    monkeypatch.setattr(int8, "kernel_exact", lambda mod, kernel: not kernel.startswith("fbgemm") and real(mod, kernel))
    monkeypatch.setattr(int8, "_KERNEL_TIMES", {})
    model, x = _TwoLinear().eval(), torch.randn(4, 16)
    gm, ctx = capture_for_test(model, (x,))
    gm = PassManager([Quantize(progress=False)]).run(gm, ctx)
    rows = ctx.notes["quantize"]["lowered"]
    assert [r["kernel"] for r in rows] == ["int_mm_dynamic"] * 2
    assert all("inexact" in r["rejected"]["fbgemm_dynamic"] for r in rows), rows
    assert all(m.active_kernel == "int_mm_dynamic" for m in _modules(gm, Int8Linear))


class _Outlier(nn.Module):
    """One input channel 100x larger than the rest: per-tensor int8 activations lose the others."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 16)
        self.register_buffer("gain", torch.ones(64))
        self.gain[3] = 300.0

    def forward(self, x):
        return self.b(self.a(x) * 0.01 + x * self.gain)


def _outlier_data():
    g = torch.Generator().manual_seed(1)
    return _Outlier().eval(), [(torch.randn(32, 64, generator=g),) for _ in range(4)]


def test_accuracy_budget_keeps_sensitive_layer_fp32():
    model, batches = _outlier_data()
    loose_gm, loose_ctx = capture_for_test(model, batches[0], calibration=batches)
    # smooth=None: the outlier layer is the one to keep; SmoothQuant would rescue it instead
    PassManager([Quantize(smooth=None, progress=False)]).run(loose_gm, loose_ctx)
    loose = loose_ctx.notes["quantize"]["metric_value_qdq"]
    gm, ctx = capture_for_test(model, batches[0], calibration=batches)
    gm = PassManager([Quantize(max_error=0.99999, smooth=None, progress=False)]).run(gm, ctx)
    notes = ctx.notes["quantize"]
    kept = [r for r in notes["layers"] if r["status"] == "fp32"]
    assert [r["layer"] for r in kept] == ["model.b"], notes["layers"]
    assert "accuracy budget" in kept[0]["reason"]
    assert loose < 0.99999 <= notes["metric_value_qdq"]
    assert notes["metric_value_lowered"] >= 0.99999  # the shipped kernels meet the budget too
    assert len(_modules(gm, Int8Linear)) == 1 and len(_modules(gm, nn.Linear)) == 1


def test_smoothquant_raises_outlier_layer_sqnr():
    model, batches = _outlier_data()
    sqnr = {}
    for smooth in (None, 0.5):
        gm, ctx = capture_for_test(model, batches[0], calibration=batches)
        PassManager([Quantize(smooth=smooth, progress=False)]).run(gm, ctx)
        row = next(r for r in ctx.notes["quantize"]["layers"] if r["layer"] == "model.b")
        sqnr[smooth] = row["sqnr_db"]
        assert row["smoothquant"] == (smooth is not None)
    assert sqnr[0.5] > sqnr[None] + 6.0, sqnr


def test_exclude_and_static_conv_lowering():
    model, inputs = small_cnn()
    gm, ctx = capture_for_test(model, inputs)
    gm = PassManager([Quantize(mode="static", exclude=["*.fc"], progress=False)]).run(gm, ctx)
    assert len(_modules(gm, Int8Conv2d)) == 2 and len(_modules(gm, nn.Linear)) == 1
    row = next(r for r in ctx.notes["quantize"]["layers"] if r["layer"] == "model.fc")
    assert row["status"] == "fp32" and "excluded" in row["reason"]


def test_bad_options_fail_with_one_line():
    with pytest.raises(ValueError, match="mode='int4' is not one of"):
        Quantize(mode="int4")
    with pytest.raises(SpecError, match="observer"):
        autoglm.compile(_TwoLinear(), (torch.randn(2, 16),), passes="quantize(observer=median)")
    model, x = _TwoLinear().eval(), torch.randn(2, 16)
    with pytest.raises(autoglm.ir.pass_manager.PassError, match="calibration batch 0 has 0 inputs"):
        autoglm.compile(model, (x,), passes="quantize", calibration=[()])


def test_saved_artifact_keeps_int8_and_reloads(tmp_path: Path):
    model, inputs = small_transformer(batch=2, seq=16)
    fp32 = autoglm.compile(model, inputs, passes="none")
    cm = autoglm.compile(model, inputs, passes="quantize(progress=False)")
    fp32.save(tmp_path / "fp32")
    cm.save(tmp_path / "int8")
    ratio = (tmp_path / "int8" / "weights.safetensors").stat().st_size / \
        (tmp_path / "fp32" / "weights.safetensors").stat().st_size
    assert ratio <= 0.30, ratio
    loaded = autoglm.load(tmp_path / "int8")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), cm(*inputs), rtol=0, atol=0)
    assert any(type(m) is Int8Linear for m in loaded.graph_module.modules())


@pytest.mark.parametrize("passes", ["quantize(mode=static, observer=percentile, progress=False)",
                                    "quantize(dynamic_convs=True, progress=False)"], ids=["static", "dynamic"])
def test_int8_on_digits_keeps_top1(passes):
    pytest.importorskip("sklearn.datasets")
    # width 32 trains to ~98% here; the width-16 CNN (93%) left 3 of 540 images within int8 noise
    # of the decision boundary, lost with int8 weights (VNNI CPUs) and kept with int7 ones
    model, (xtr, ytr), (xte, yte) = digits_cnn(width=32)
    calibration = [(xtr[i:i + 128], ytr[i:i + 128]) for i in range(0, 512, 128)]  # labels are dropped
    cm = autoglm.compile(model, (xte,), passes=passes, calibration=calibration)
    assert sum(type(m) is Int8Conv2d for m in cm.graph_module.modules()) == 2  # both convolutions, not only the fc
    with torch.no_grad():
        acc_fp32 = float((model(xte).argmax(1) == yte).float().mean()) * 100
        acc_int8 = float((cm(xte).argmax(1) == yte).float().mean()) * 100
    assert acc_fp32 > 90.0, acc_fp32
    assert acc_fp32 - acc_int8 <= 0.5, (acc_fp32, acc_int8)
    assert not math.isnan(acc_int8)


def test_per_layer_sqnr_floor_keeps_weak_layers_fp32():
    model, inputs = small_transformer()
    gm, ctx = capture_for_test(model, inputs)
    gm = PassManager([Quantize(progress=False, embeddings=False)]).run(gm, ctx)
    sqnrs = sorted(r["sqnr_db"] for r in _quantized_rows(ctx.notes["quantize"]))
    floor = (sqnrs[0] + sqnrs[-1]) / 2  # between the weakest and the strongest layer
    gm, ctx = capture_for_test(model, inputs)
    gm = PassManager([Quantize(progress=False, embeddings=False, min_layer_sqnr_db=floor)]).run(gm, ctx)
    rows = ctx.notes["quantize"]["layers"]
    kept = [r for r in rows if r["status"] == "fp32" and r.get("kind") == "linear"]
    assert kept and all("min_layer_sqnr_db" in r["reason"] for r in kept)
    assert all(r["sqnr_db"] >= floor for r in _quantized_rows(ctx.notes["quantize"]))
    assert len(_modules(gm, nn.Linear)) == len(kept)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False)
    model = transformers.GPT2Model(cfg).eval()
    ids = torch.randint(0, 128, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0  # right padding
    return model, {"input_ids": ids, "attention_mask": mask}


def test_addmm_linear_view_exposes_out_in_weight():
    from autoglm.ir.ops import get_attr_value, linear_view

    model, kwargs = _gpt2()
    gm = autoglm.compile(model, kwargs, passes="none").graph_module
    addmms = [n for n in gm.graph.nodes if n.target is torch.ops.aten.addmm.default]
    assert len(addmms) == 8  # 2 blocks x (c_attn, c_proj, c_fc, mlp.c_proj)
    assert all(linear_view(n, gm) is None for n in addmms)  # opt-in: other passes edit weights in place
    view = linear_view(addmms[0], gm, addmm=True)
    stored = get_attr_value(view.weight_node, gm)
    assert view.weight_transposed and view.weight.shape == (192, 64)  # (out, in), like nn.Linear
    assert stored.shape == (64, 192) and view.weight.data_ptr() == stored.data_ptr()  # a view, no copy
    x = torch.randn(5, 64)
    torch.testing.assert_close(F.linear(x, view.weight, view.bias),
                               torch.addmm(view.bias, x, view.weight.t()))


@pytest.mark.parametrize("lower", [False, True], ids=["qdq", "lowered"])
def test_gpt2_conv1d_layers_quantize(lower):
    model, kwargs = _gpt2()
    cm = autoglm.compile(model, kwargs, passes=f"quantize(progress=False,lower={lower})")
    rows = [r for r in cm.notes["quantize"]["layers"] if r.get("kind") == "linear"]
    assert len(rows) == 8 and all(r["status"] == "int8" for r in rows), rows
    assert min(r["sqnr_db"] for r in rows) >= 30.0, rows
    gm = cm.graph_module
    assert not any(n.target is torch.ops.aten.addmm.default for n in gm.graph.nodes)
    if lower:
        mods = _modules(gm, Int8Linear)
        assert len(mods) == 8
        c_attn = next(m for m in mods if m.out_features == 192)
        assert c_attn.in_features == 64  # Int8Linear keeps (out, in) weights
    else:
        assert sum(n.target is torch.ops.aten.linear.default for n in gm.graph.nodes) == 8
    with torch.no_grad():
        ref = model(**kwargs).last_hidden_state
        out = cm(**kwargs)
    out = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # Measured (random weights, this config): 38.9 dB SQNR, cosine 0.99994 vs fp32.
    assert sqnr_db([ref], [out]) >= 30.0
    assert F.cosine_similarity(ref.flatten(), out.flatten(), dim=0) >= 0.999


def test_default_weight_codes_keep_the_fast_kernel_exact_on_this_cpu():
    """Without VNNI, fbgemm's u8 x s8 kernels saturate int8 (+-127) weights, and the exact
    alternative (torch._int_mm) ran real MiniLM 27x slower than fp32 on such a CPU. The
    default then quantizes weights to int7 (+-64), for which fbgemm is exact: it must
    qualify for every Linear (it was rejected as inexact for all of them before)."""
    from autoglm.ir.int8 import INT7_QMAX, W_QMAX, weight_qmax_for_this_cpu

    qmax = weight_qmax_for_this_cpu()
    model, inputs = small_transformer()
    gm, ctx = capture_for_test(model, inputs)
    gm = PassManager([Quantize(progress=False)]).run(gm, ctx)
    notes = ctx.notes["quantize"]
    assert notes["weights"]["qmax"] == qmax and notes["weights"]["codes"] == ("int8" if qmax == W_QMAX else "int7")
    linears = _modules(gm, Int8Linear)
    assert linears and all(int(m.weight_int8.abs().max()) <= qmax for m in linears)
    rows = [r for r in notes["lowered"] if r["kernel"] != "gather_int8"]
    assert rows and all("fbgemm_dynamic" not in r.get("rejected", {}) for r in rows), rows
    if qmax == INT7_QMAX:
        assert all(kernel_exact(m, "fbgemm_dynamic") for m in linears)


@pytest.mark.parametrize("weights,qmax", [("int8", 127), ("int7", 64)])
def test_weight_codes_can_be_stated(weights, qmax):
    model, inputs = small_transformer()
    gm, ctx = capture_for_test(model, inputs)
    gm = PassManager([Quantize(progress=False, weights=weights)]).run(gm, ctx)
    widest = max(int(m.weight_int8.abs().max()) for m in _modules(gm, Int8Linear))
    assert widest == qmax  # per-channel scales: each row's largest weight takes the widest code
    assert ctx.notes["quantize"]["weights"]["why"] == f"weights='{weights}'"
    with pytest.raises(ValueError, match="weights='int4' is not one of"):
        Quantize(weights="int4")


def test_keyword_calibration_batches_are_flattened_like_the_example():
    """Hugging Face models are called, and their example given, with keyword inputs; calibration
    batches in that form were passed to the graph as their keys ('attention_mask'), a traceback."""
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 8)

        def forward(self, hidden: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.fc(hidden * scale)

    model = Keyword().eval()
    g = torch.Generator().manual_seed(0)

    def batch() -> dict:  # keys in another order than the example's: matched by name
        return {"scale": torch.rand(4, 1, generator=g) + 0.5, "hidden": torch.randn(4, 16, generator=g)}

    example = {"hidden": torch.randn(4, 16, generator=g), "scale": torch.ones(4, 1)}
    cm = autoglm.compile(model, example, passes="quantize(mode=static, progress=False)",
                         calibration=[batch(), batch()])
    assert cm.notes["quantize"]["calibration_batches"] == 2
    assert [r["status"] for r in cm.notes["quantize"]["layers"]] == ["int8"]
    with torch.no_grad():
        assert sqnr_db([model(**example)], [cm(**example)]) >= 25.0


def test_dynamic_default_keeps_convolutions_fp32_and_says_why():
    """The default (dynamic) quantize made the digits CNN 2.2x slower than fp32 (dynamic int8 convs
    are slower than fp32 on every shape measured, docs/quantize.md): convs now stay fp32 with the
    reason, the Linear is int8, and static mode still quantizes the convs."""
    model, inputs = small_cnn()
    cm = autoglm.compile(model, inputs, passes="quantize(progress=False)")
    assert sum(type(m) is Int8Conv2d for m in cm.graph_module.modules()) == 0
    assert sum(type(m) is Int8Linear for m in cm.graph_module.modules()) == 1
    rows = {r["layer"]: r for r in cm.notes["quantize"]["layers"]}
    convs = [r for name, r in rows.items() if "conv" in name]
    assert len(convs) == 2 and all(r["status"] == "fp32" and "mode=static" in r["reason"] for r in convs), convs
    static = autoglm.compile(model, inputs, passes="quantize(mode=static, progress=False)")
    assert sum(type(m) is Int8Conv2d for m in static.graph_module.modules()) == 2
