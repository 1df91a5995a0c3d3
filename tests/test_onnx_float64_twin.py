"""The float64 reference of ONNX parity runs on Llama-family graphs (issue #17 item 6).

torch.export graphs of Llama/Mistral/Qwen2/Gemma/Phi spell ``float32`` in their
casts and metadata asserts; ``module.double()`` alone made the twin fail with
"Tensor dtype mismatch! Expected: Float, Got: double" the moment fp32 parity
needed it.
"""
from __future__ import annotations

import pytest
import torch

import autoglm
from autoglm.export.onnx.export import _float64_twin
from tests.zoo.models import ZOO

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["mistral", "llama", "qwen2", "gemma", "phi"])
def test_float64_twin_runs_llama_family_graphs(name: str) -> None:
    model, kwargs = ZOO[name].build()
    cm = autoglm.compile(model, kwargs)
    assert any("_assert_tensor_metadata" in str(n.target) or "_to_copy" in str(n.target)
               for n in cm.graph_module.graph.nodes)  # the graph spells float32 somewhere
    xs64 = [x.double() if x.is_floating_point() else x for x in cm.example_inputs]
    out = _float64_twin(cm.graph_module)(*xs64)[0]
    assert out.dtype == torch.float64
    with torch.no_grad():
        ref = model(**kwargs).last_hidden_state
    torch.testing.assert_close(out.float(), ref)  # the same function, computed more exactly
    assert cm.graph_module.graph is not None and next(cm.graph_module.parameters()).dtype == torch.float32
