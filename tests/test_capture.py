"""Capture: both frontends, structured inputs/outputs, clear errors."""
import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.capture import CaptureError, capture
from autoglm.ir.ops import OpKind, conv_view, linear_view, op_kind
from examples.models import small_cnn, small_transformer


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, scale: float = 1.0, y=None):
        h = self.fc(x) * scale
        out = {"h": h, "pair": (h.relu(), x.sum())}
        if y is not None:
            out["y"] = y + 1
        return out


class Branchy(nn.Module):
    def forward(self, x):
        h = x * 2
        if h.sum() > 0:  # data-dependent
            return h
        return -h


class ItemAssign(nn.Module):
    """FX symbolic tracing cannot do in-place item assignment on a proxy; export can."""

    def forward(self, x):
        y = torch.zeros_like(x)
        y[:, 0] = x[:, 0] * 3
        return y + x


def test_symbolic_keeps_modules_and_structure():
    model = DictOut().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    cm = autoglm.compile(model, {"x": x, "scale": 2.0, "y": y}, passes="none")
    assert cm.frontend == "symbolic"
    assert any(n.op == "call_module" for n in cm.graph_module.graph.nodes)
    out = cm(x=x, scale=2.0, y=y)
    ref = model(x, 2.0, y)
    assert set(out) == {"h", "pair", "y"}
    torch.testing.assert_close(out, ref)


def test_non_tensor_argument_change_is_refused():
    model = DictOut().eval()
    x = torch.randn(2, 4)
    cm = autoglm.compile(model, {"x": x, "scale": 2.0}, passes="none")
    with pytest.raises(TypeError, match="non-tensor"):
        cm(x=x, scale=3.0)
    with pytest.raises(TypeError, match="input structure"):
        cm(x)


def test_export_fallback_for_item_assignment():
    model = ItemAssign().eval()
    x = torch.randn(3, 4)
    cm = autoglm.compile(model, (x,), passes="none")
    assert cm.frontend == "export"
    assert "symbolic" in cm.notes["frontend_reasons"]
    torch.testing.assert_close(cm(x), model(x))


def test_symbolic_refuses_data_dependent_branch_with_source_line():
    with pytest.raises(CaptureError) as info:
        capture(Branchy(), (torch.randn(3),), frontend="symbolic")
    msg = str(info.value)
    assert "symbolic" in msg and "data-dependent" in msg
    assert "test_capture.py" in msg and "h.sum() > 0" in msg


def test_all_frontends_fail_lists_each_reason():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.tensor([float(x.sum())]) if x.sum().item() > 0 else x  # .item() + branch

    with pytest.raises(CaptureError) as info:
        capture(Bad(), (torch.randn(3),), frontend="symbolic")
    assert "symbolic:" in str(info.value)


def test_op_views_in_both_spellings():
    model, (x,) = small_cnn()
    for frontend in ("symbolic", "export"):
        gm = capture(model, (x,), frontend=frontend).graph_module
        convs = [n for n in gm.graph.nodes if conv_view(n, gm) is not None]
        linears = [n for n in gm.graph.nodes if linear_view(n, gm) is not None]
        assert len(convs) == 2, frontend
        assert len(linears) == 1, frontend
        assert linear_view(linears[0], gm).weight.shape == (10, 32)
        kinds = {op_kind(n, gm) for n in gm.graph.nodes}
        assert OpKind.BATCH_NORM in kinds and OpKind.CONV2D in kinds, (frontend, kinds)


def test_example_inputs_validation():
    model, _ = small_transformer()
    with pytest.raises(TypeError, match="tuple of positional inputs or a dict"):
        autoglm.compile(model, 42)
