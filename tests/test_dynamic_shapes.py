"""Dynamic shapes (issue #18): compile once, call at any batch size and sequence length in range."""
from __future__ import annotations

import pytest
import torch

import autoglm
from autoglm.capture.dynamic import DimRange, check_call, dims_from_json, dims_to_json, infer_dims

transformers = pytest.importorskip("transformers")


def _bert(max_positions: int = 64):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 vocab_size=100, max_position_embeddings=max_positions)).eval()
    return model


def _text(batch: int, seq: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2 + 1:] = 0
    return {"input_ids": torch.randint(0, 100, (batch, seq), generator=g), "attention_mask": mask}


def test_inferred_batch_and_sequence_dims_run_at_any_shape_without_recompiling():
    model = _bert()
    cm = autoglm.compile(model, _text(2, 12))
    assert cm.frontend == "export"
    assert {d: r.name for d, r in cm.signature.dynamic[0].items()} == {0: "batch", 1: "seq"}
    assert cm.signature.dynamic[0][1].max == 64  # torch proved the position table's bound
    graph = cm.graph_module
    for batch, seq in [(1, 1), (1, 64), (7, 5), (32, 33)]:
        x = _text(batch, seq, seed=batch * seq)
        with torch.no_grad():
            torch.testing.assert_close(cm(**x).last_hidden_state, model(**x).last_hidden_state)
    assert cm.graph_module is graph  # one graph served every shape


def test_calls_outside_the_range_or_with_mismatched_dims_fail_in_one_line():
    cm = autoglm.compile(_bert(), _text(2, 12))
    with pytest.raises(ValueError, match=r"input_ids dim 1 is 65, outside the compiled range seq in \[1, 64\]"):
        cm(**_text(2, 65))
    x = _text(2, 12)
    x["attention_mask"] = x["attention_mask"][:, :10]
    with pytest.raises(ValueError, match=r"attention_mask dim 1 is 10 but input_ids dim 1 is 12; both are 'seq'"):
        cm(**x)


def test_stated_dims_with_a_range_and_false_for_static():
    model = _bert()
    cm = autoglm.compile(model, _text(2, 12), dynamic={"input_ids": {1: ("seq", 1, 32)},
                                                       "attention_mask": {1: ("seq", 1, 32)}})
    assert set(cm.signature.dynamic[0]) == {1}
    with torch.no_grad():
        torch.testing.assert_close(cm(**_text(2, 30)).last_hidden_state, model(**_text(2, 30)).last_hidden_state)
    with pytest.raises(ValueError, match="dim 0 is 3; it was compiled static at 2"):
        cm(**_text(3, 12))
    with pytest.raises(ValueError, match="dynamic: no input 'pixels'"):
        autoglm.compile(model, _text(2, 12), dynamic={"pixels": {0: "batch"}})
    static = autoglm.compile(model, _text(2, 12), dynamic=False)
    assert static.signature.dynamic == {}


def test_dims_from_several_examples():
    model = _bert()
    cm = autoglm.compile(model, _text(2, 12), dynamic=[_text(2, 20)])
    assert set(cm.signature.dynamic[0]) == {1}  # only the length differed


def test_a_decoder_runs_the_decode_step_shape():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=100, use_cache=False)).eval()
    cm = autoglm.compile(model, _text(2, 8))
    for batch, seq in [(1, 1), (4, 1), (3, 40)]:
        x = _text(batch, seq)
        with torch.no_grad():
            torch.testing.assert_close(cm(**x).last_hidden_state, model(**x).last_hidden_state)


def test_a_batch_of_one_example_still_gives_a_dynamic_batch():
    model = _bert()
    cm = autoglm.compile(model, _text(1, 1))  # captured on a grown copy: torch fixes size-1 examples
    assert cm.signature.dynamic[0][0] == DimRange("batch", 1, None)
    with torch.no_grad():
        torch.testing.assert_close(cm(**_text(6, 9)).last_hidden_state, model(**_text(6, 9)).last_hidden_state)


def test_dims_survive_save_and_load(tmp_path):
    model = _bert()
    cm = autoglm.compile(model, _text(2, 12))
    cm.save(tmp_path / "a")
    loaded = autoglm.load(tmp_path / "a")
    assert loaded.signature.dynamic == cm.signature.dynamic
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_text(5, 20)).last_hidden_state, model(**_text(5, 20)).last_hidden_state)
    with pytest.raises(ValueError, match="outside the compiled range"):
        loaded(**_text(2, 100))


def test_dims_json_is_checked_as_untrusted_data():
    dims = infer_dims([torch.zeros(2, 3, dtype=torch.long)])
    assert dims_from_json(dims_to_json(dims), 1) == dims
    for bad in ({"0": {"0": ["__import__('os')", 1, None]}}, {"9": {"0": ["b", 1, None]}}, {"0": {"0": ["b", "1", 2]}}):
        with pytest.raises(ValueError):
            dims_from_json(bad, 1)


def test_check_call_names_the_input_and_the_rule():
    ex = [torch.zeros(2, 3)]
    with pytest.raises(ValueError, match="x has 3 dimensions"):
        check_call([torch.zeros(2, 3, 1)], ex, {}, ["x"])


def _cli(*argv: str):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([str(Path(sys.executable).with_name("autoglm")), *argv, "-q"], capture_output=True,
                          text=True, timeout=300)


def test_cli_compiles_a_dynamic_pt2_and_runs_other_shapes(tmp_path):
    from safetensors.torch import load_file, save_file
    from torch.export import Dim

    model = _bert()
    x = _text(2, 12)
    b, s = Dim("batch", min=1, max=64), Dim("seq", min=1, max=64)
    ep = torch.export.export(model, (), kwargs=x, strict=False,
                             dynamic_shapes={"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}})
    torch.export.save(ep, tmp_path / "m.pt2")
    save_file(x, tmp_path / "example.safetensors")
    other = _text(5, 30)
    save_file(other, tmp_path / "other.safetensors")
    spec = "input_ids:0=batch,1=seq[1:64];attention_mask:0=batch,1=seq[1:64]"
    for flag, out in ((["--dynamic", spec], "stated"), ([], "auto"), (["--dynamic", "static"], "static")):
        proc = _cli("compile", str(tmp_path / "m.pt2"), "--example-inputs", str(tmp_path / "example.safetensors"),
                    *flag, "--out", str(tmp_path / out))
        assert proc.returncode == 0, proc.stderr
    for out in ("stated", "auto"):
        proc = _cli("run", str(tmp_path / out), "--inputs", str(tmp_path / "other.safetensors"), "--output",
                    str(tmp_path / f"{out}.safetensors"))
        assert proc.returncode == 0, proc.stderr
        with torch.no_grad():
            ref = model(**other).last_hidden_state
        got = load_file(tmp_path / f"{out}.safetensors")
        torch.testing.assert_close(next(v for k, v in got.items() if "last_hidden_state" in k or k == "output_0"),
                                   ref)
    proc = _cli("run", str(tmp_path / "static"), "--inputs", str(tmp_path / "other.safetensors"))
    assert proc.returncode == 1 and "compiled static at 2" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _cli("compile", str(tmp_path / "m.pt2"), "--dynamic", "input_ids:0=batch,x", "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "1=seq[1:512]" in proc.stderr
