"""``exclude=`` means the same in quantize and sparsify (one matcher: autoglm.ir.exclude)."""
from __future__ import annotations

import pytest

import autoglm
from autoglm.ir.exclude import excluded_by
from examples.models import small_transformer


@pytest.mark.parametrize("pattern", ["head", "layers.0.*", "model.layers.1.fc*", "*attn.q"])
def test_the_same_pattern_excludes_the_same_layers_in_both_passes(pattern: str) -> None:
    model, inputs = small_transformer()
    q = autoglm.compile(model, inputs, passes=f"quantize(mode=dynamic, exclude=[{pattern!r}], progress=False)")
    s = autoglm.compile(model, inputs, passes=f"sparsify(pattern='2:4', exclude=[{pattern!r}])")
    q_out = {r["layer"] for r in q.notes["quantize"]["layers"] if "excluded" in str(r.get("reason"))}
    s_out = {r["layer"] for r in s.notes["sparsify"]["skipped"] if "excluded" in r["reason"]}
    assert q_out and q_out == s_out


def test_matching_rules() -> None:
    assert excluded_by("model.head", "model_head", ["head"]) == "head"
    assert excluded_by("model.layers.0.attn.q", "model_layers_0_attn_q", ["layers.0.*"]) == "layers.0.*"
    assert excluded_by("model.layers.0.attn.q", "model_layers_0_attn_q", ["model_layers_0_*"]) == "model_layers_0_*"
    assert excluded_by("model.layers.0.attn.q", "n", ["layers.1.*", "ffn"]) is None
