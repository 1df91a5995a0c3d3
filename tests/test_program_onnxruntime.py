"""backend="onnxruntime" for models with data-dependent branches: each segment its own session."""
import copy

import pytest
import torch

import autoglm
from autoglm.program.program import Program
from autoglm.runtime.onnxruntime import OrtExecutor
from tests.test_branches import ContextMemory, Nested, TwoWay, _inputs, _seeded

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("factory", [TwoWay, Nested])
def test_every_segment_runs_in_onnxruntime_and_matches_eager(factory):
    model = _seeded(factory())
    xs = _inputs(40)
    cm = autoglm.compile(model, (xs[0],), backend="onnxruntime")
    assert isinstance(cm, Program) and cm.config["backend"] == "onnxruntime"
    for x in xs:
        torch.testing.assert_close(cm(x), model(x))
    assert cm.stats.paths >= 2
    assert all(isinstance(node.run, OrtExecutor) for node in cm._nodes())
    assert not cm.notes.get("onnxruntime_kept_fx")


def test_segments_touching_model_state_stay_on_fx_and_stay_correct():
    model = _seeded(ContextMemory())
    eager = copy.deepcopy(model)
    xs = _inputs(50)
    cm = autoglm.compile(model, (xs[0],), backend="onnxruntime")
    for x in xs:  # the memory advances call by call: a frozen buffer would diverge at once
        torch.testing.assert_close(cm(x), eager(x))
    reasons = " ".join(cm.notes["onnxruntime_kept_fx"])
    assert "buffer" in reasons
