"""int8 ONNX parity: the file must be as accurate as our int8 model, not equal to it.

A dynamic int8 model is discontinuous in its input (each activation scale comes
from one element), so two correct runs can differ by as much as each differs from
float. Real MiniLM's int8 file met its 25 dB budget against our int8 outputs on
real sentences but not on the check's random token ids (18.4 dB), and export
failed (#17 item 7). A set under the budget now passes when onnxruntime is as
close as our int8 graph to the same graph without activation rounding
(``int8_reference.unrounded_twin``), within ``int8_margin_db``.
"""
from __future__ import annotations

import pytest
import torch

import autoglm
from autoglm.export.onnx.check import OnnxParityError, run_parity
from autoglm.export.onnx.int8_reference import unrounded_twin
from autoglm.ir.int8 import Int8Linear
from autoglm.ir.metrics import sqnr_db
from examples.models import small_transformer


def _int8_model():
    model, inputs = small_transformer(batch=2, seq=16)
    cm = autoglm.compile(model, inputs, passes="quantize(progress=False)")
    return model, inputs, cm


def test_unrounded_twin_drops_activation_rounding_only():
    model, inputs, cm = _int8_model()
    twin = unrounded_twin(cm.graph_module)
    assert not any(isinstance(m, Int8Linear) for m in twin.modules())
    assert any(isinstance(m, Int8Linear) for m in cm.graph_module.modules())  # the original is untouched
    with torch.no_grad():
        ref, int8, smooth = model(*inputs), cm.graph_module(*inputs)[0], twin(*inputs)[0]
    # Weight rounding only: closer to fp32 than the int8 graph, yet neither fp32 nor the int8 graph.
    assert sqnr_db([ref], [smooth]) > sqnr_db([ref], [int8])
    assert sqnr_db([ref], [smooth]) < 80.0 and sqnr_db([smooth], [int8]) < 80.0


def _sets(inputs, n=3):
    g = torch.Generator().manual_seed(0)
    return [(f"set-{i}", [torch.randint(0, 1000, inputs[0].shape, generator=g)]) for i in range(n)]


def test_a_file_as_accurate_as_ours_passes_under_the_budget():
    _, inputs, cm = _int8_model()
    gm = cm.graph_module
    twin = unrounded_twin(gm)

    def candidate(*xs):  # our int8 graph, off by fp32 noise: far above any budget but 200 dB
        return [t + 1e-6 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1)) for t in gm(*xs)]

    records = run_parity(gm, candidate, _sets(inputs), 1e-3, 1e-5, min_sqnr_db=200.0, unrounded=twin,
                         int8_margin_db=1.0)
    assert all(r.ok and r.sqnr_db < 200.0 and r.unrounded_sqnr_db_onnx is not None for r in records)


def test_a_less_accurate_file_fails_with_what_to_do():
    _, inputs, cm = _int8_model()
    gm = cm.graph_module
    twin = unrounded_twin(gm)

    def candidate(*xs):  # noise 10x the int8 model's own: well below its accuracy
        outs = gm(*xs)
        smooth = twin(*xs)
        return [o + 10.0 * (o - s) for o, s in zip(outs, smooth)]

    with pytest.raises(OnnxParityError) as err:
        run_parity(gm, candidate, _sets(inputs), 1e-3, 1e-5, min_sqnr_db=25.0, unrounded=twin, int8_margin_db=1.0)
    message = str(err.value)
    assert "less accurate than the model it came from" in message and "int8_margin_db=" in message
    assert "\n" not in message


def test_without_a_margin_the_budget_alone_decides():
    _, inputs, cm = _int8_model()
    gm = cm.graph_module

    def candidate(*xs):
        return [t + 1e-6 for t in gm(*xs)]

    with pytest.raises(OnnxParityError, match="int8_min_sqnr_db="):
        run_parity(gm, candidate, _sets(inputs, 1), 1e-3, 1e-5, min_sqnr_db=200.0, unrounded=unrounded_twin(gm),
                   int8_margin_db=None)
