"""ONNX export of attention rows that see no key (left padding under a causal mask).

torch's ``scaled_dot_product_attention`` returns 0 for a query row whose mask
hides every key; the ONNX translation filled the mask with the dtype's finite
minimum, so such a row came out as the mean of the values (1.35 max abs error on
a 2-layer Mistral, far outside fp32 tolerance). ``export/onnx/attention.py``
makes the file compute torch's zeros.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoglm
from autoglm.export.onnx.attention import zero_unattended_rows
from autoglm.runtime.onnxruntime import OrtExecutor, OrtOptions

pytest.importorskip("onnxruntime")


class MaskedAttention(nn.Module):
    """One attention layer with a boolean mask: causal and left padding."""

    def __init__(self, dim: int = 16, float_mask: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.float_mask = float_mask

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        mask = causal & keep[:, None, None, :].bool()
        if self.float_mask:
            mask = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _left_padded(batch: int = 2, seq: int = 8, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, seq, 16, generator=torch.Generator().manual_seed(0))
    keep = torch.ones(batch, seq, dtype=torch.long)
    keep[1, :pad] = 0  # row 0..pad-1 of sample 1 see no key at all
    return x, keep


def _ort_outputs(path, inputs):
    return OrtExecutor(path, OrtOptions(threads=1))(*inputs)


@pytest.mark.parametrize("float_mask", [False, True], ids=["bool-mask", "float-mask"])
def test_fully_masked_rows_export_as_torch_computes_them(tmp_path, float_mask):
    model = MaskedAttention(float_mask=float_mask).eval()
    x, keep = _left_padded()
    with torch.no_grad():
        expected = model(x, keep)
    assert float(expected[1, :, :3].abs().max()) == 0.0  # torch: the rows with no key are zero
    cm = autoglm.compile(model, (x, keep), passes="none", dynamic=False)
    cm.export_onnx(tmp_path / "m.onnx")  # runs its parity check: raised before
    got = _ort_outputs(tmp_path / "m.onnx", (x, keep))[0]
    torch.testing.assert_close(torch.as_tensor(got), expected)


def test_rewrite_changes_nothing_in_torch():
    model = MaskedAttention().eval()
    x, keep = _left_padded()
    cm = autoglm.compile(model, (x, keep), passes="none", dynamic=False)
    import copy

    gm = copy.deepcopy(cm.graph_module)
    assert zero_unattended_rows(gm) == 1
    with torch.no_grad():
        torch.testing.assert_close(gm(x, keep)[0], cm.graph_module(x, keep)[0], rtol=0, atol=0)


def test_attention_without_a_mask_is_left_alone():
    class Plain(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q, is_causal=True)

    q = torch.randn(1, 2, 4, 8)
    cm = autoglm.compile(Plain().eval(), (q,), passes="none", dynamic=False)
    import copy

    assert zero_unattended_rows(copy.deepcopy(cm.graph_module)) == 0


def test_left_padded_mistral_exports_within_fp32_parity(tmp_path):
    pytest.importorskip("transformers")
    from tests.zoo.models import ZOO

    model, kwargs = ZOO["mistral"].build()
    kwargs["attention_mask"] = torch.ones_like(kwargs["attention_mask"])
    kwargs["attention_mask"][1, :4] = 0  # left padding, as a batched generate() pads
    with torch.no_grad():
        expected = model(**kwargs).last_hidden_state
    cm = autoglm.compile(model, kwargs, passes="none")
    result = cm.export_onnx(tmp_path / "m.onnx")
    assert all(r.ok for r in result.parity)
    got = _ort_outputs(tmp_path / "m.onnx", [kwargs[k] for k in result.input_names])[0]
    torch.testing.assert_close(torch.as_tensor(got), expected)
