"""Safe loading of models and inputs, and the CLI's bad-input corpus.

Every corpus entry goes through ``autoglm compile``/``run`` (``main(argv)``) and
must give exit status != 0, exactly one ``autoglm: error:`` line on stderr, no
traceback, nothing written, within 5 s; malicious payloads must never run.
"""
from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autoglm.cli.main import main
from autoglm.loading.pt2_checks import check_guard as _check_guard, check_sympy_expr as _check_sympy_expr
from autoglm.loading.model_files import (ModelLoadError, UnsafeFileError,
                                   load_example_inputs, load_model)
from examples.models import small_cnn

FACTORY = "examples.models:small_cnn"


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    return buf.getvalue()


def _rewrite_zip(src: Path, dst: Path, replace: dict | None = None, add: dict | None = None) -> Path:
    """Copy a zip archive, replacing entries (by suffix match; bytes or callable(old) -> bytes)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            data = zin.read(name)
            for suffix, new in replace.items():
                if name.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(name, data)
        for rel, data in add.items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def _edit_model_json(edit):
    def apply(raw: bytes) -> bytes:
        doc = json.loads(raw)
        edit(doc)
        return json.dumps(doc).encode()
    return apply


def _set_first_target(doc):
    doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def _add_guard(marker):
    def edit(doc):
        doc["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    return edit


def _add_sym_expr(marker):
    def edit(doc):
        tensor_values = doc["graph_module"]["graph"]["tensor_values"]
        meta = next(iter(tensor_values.values()))
        meta["sizes"][0] = {"as_expr": {"expr_str": f"__import__('os').system('touch {marker}')",
                                        "hint": {"as_int": 4}}}
    return edit


def _add_opaque_constant(raw: bytes) -> bytes:
    doc = json.loads(raw)
    doc.setdefault("config", {})["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                            "tensor_meta": None}
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    marker = d / "PWNED"
    model, (x,) = small_cnn()
    torch.export.save(torch.export.export(model, (x,)), d / "good.pt2")
    torch.save((x,), d / "x.pt")
    save_file(model.state_dict(), str(d / "good.safetensors"))
    torch.save(model.state_dict(), d / "good.pt")
    evil = _evil_bytes(marker)
    (d / "evil.pt").write_bytes(evil)
    torch.save(model, d / "module.pth")  # a whole-module pickle
    torch.jit.save(torch.jit.trace(model, (x,)), str(d / "scripted.pt"))
    rng = np.random.default_rng(0)
    for ext in (".pt2", ".pt", ".pth", ".safetensors", ".npz"):
        (d / f"random{ext}").write_bytes(rng.bytes(4096))
    for ext in (".pt2", ".pt"):
        (d / f"empty{ext}").write_bytes(b"")
    good = (d / "good.pt2").read_bytes()
    (d / "truncated.pt2").write_bytes(good[: len(good) // 2])
    _rewrite_zip(d / "good.pt2", d / "badjson.pt2", {"models/model.json": b"{not json"})
    _rewrite_zip(d / "good.pt2", d / "badschema.pt2",
                 {"models/model.json": _edit_model_json(lambda doc: doc["graph_module"]["graph"].pop("nodes"))})
    _rewrite_zip(d / "good.pt2", d / "evil_inputs.pt2", {"data/sample_inputs/model.pt": evil})
    _rewrite_zip(d / "good.pt2", d / "evil_target.pt2", {"models/model.json": _edit_model_json(_set_first_target)})
    _rewrite_zip(d / "good.pt2", d / "evil_guard.pt2", {"models/model.json": _edit_model_json(_add_guard(marker))})
    _rewrite_zip(d / "good.pt2", d / "evil_sympy.pt2",
                 {"models/model.json": _edit_model_json(_add_sym_expr(marker))})
    _rewrite_zip(d / "good.pt2", d / "evil_opaque.pt2", {"model_constants_config.json": _add_opaque_constant},
                 add={"data/constants/opaque_obj_0": evil})
    _rewrite_zip(d / "good.pt2", d / "aoti.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF"})
    _rewrite_zip(d / "good.pt2", d / "legacy_extra.pt2", add={"serialized_state_dict.pt": evil})
    sd = model.state_dict()
    save_file({k: v for k, v in sd.items() if k != "fc.bias"}, str(d / "missing.safetensors"))
    torch.save({**sd, "extra.weight": torch.zeros(2)}, d / "extra.pt")
    torch.save({**sd, "fc.weight": torch.zeros(3, 3)}, d / "shape.pt")
    save_file({**sd, "fc.weight": sd["fc.weight"].clone().fill_(float("nan"))}, str(d / "nan.safetensors"))
    torch.save((torch.randn(4, 3, 8, 8),), d / "wrong_shape.pt")
    torch.save((torch.ones(4, 1, 8, 8, dtype=torch.int64),), d / "wrong_dtype.pt")
    with open(d / "objects.npz", "wb") as fh:
        np.savez(fh, x=np.array([{"a": 1}], dtype=object))
    torch.save({"x": "not a tensor", "y": object.__new__(torch.nn.Identity)}, d / "odd.pt")
    (d / "bad.toml").write_text("passes = [\n")
    (d / "bad.yaml").write_text("passes: [dce\n  - x: :\n")
    (d / "unknown.yaml").write_text("passes: [dce]\nwhatever: 1\n")
    (d / "a_file").write_text("I am a file")
    (d / "notempty").mkdir()
    (d / "notempty" / "keep.txt").write_text("user data")
    art = d / "evil_artifact"
    art.mkdir()
    (art / "graph.json").write_text(json.dumps({"artifact_version": 1, "graph": {
        "nodes": [{"name": "x", "op": "call_function", "target": {"fn": "os.system"}, "args": {"__tuple__": []},
                   "kwargs": {"__dict__": []}}], "root": {"children": {}}}, "signature": {}, "num_inputs": 0}))
    from safetensors.torch import save_file as sf
    sf({"z": torch.zeros(1)}, str(art / "weights.safetensors"))
    return d


def _case(d: Path, out: Path) -> dict[str, list[str]]:
    m, x = str(d / "good.pt2"), str(d / "x.pt")
    o = str(out / "out")
    c = ["compile"]
    return {
        "pickle_payload_model": c + [str(d / "evil.pt"), "--model", FACTORY, "--example-inputs", x, "--out", o],
        "pickle_payload_inputs": c + [m, "--example-inputs", str(d / "evil.pt"), "--out", o],
        "whole_module_pickle": c + [str(d / "module.pth"), "--example-inputs", x, "--out", o],
        "torchscript": c + [str(d / "scripted.pt"), "--example-inputs", x, "--out", o],
        "empty_pt2": c + [str(d / "empty.pt2"), "--example-inputs", x, "--out", o],
        "truncated_pt2": c + [str(d / "truncated.pt2"), "--example-inputs", x, "--out", o],
        "random_pt2": c + [str(d / "random.pt2"), "--example-inputs", x, "--out", o],
        "random_pt": c + [str(d / "random.pt"), "--model", FACTORY, "--example-inputs", x, "--out", o],
        "random_pth": c + [str(d / "random.pth"), "--model", FACTORY, "--example-inputs", x, "--out", o],
        "random_safetensors": c + [str(d / "random.safetensors"), "--model", FACTORY, "--out", o],
        "random_npz_inputs": c + [m, "--example-inputs", str(d / "random.npz"), "--out", o],
        "random_pt_inputs": c + [m, "--example-inputs", str(d / "random.pt"), "--out", o],
        "random_safetensors_inputs": c + [m, "--example-inputs", str(d / "random.safetensors"), "--out", o],
        "empty_inputs": c + [m, "--example-inputs", str(d / "empty.pt"), "--out", o],
        "pt2_graph_not_json": c + [str(d / "badjson.pt2"), "--out", o],
        "pt2_graph_bad_schema": c + [str(d / "badschema.pt2"), "--example-inputs", x, "--out", o],
        "pt2_pickled_sample_inputs": c + [str(d / "evil_inputs.pt2"), "--example-inputs", x, "--out", o],
        "pt2_target_os_system": c + [str(d / "evil_target.pt2"), "--example-inputs", x, "--out", o],
        "pt2_guard_code": c + [str(d / "evil_guard.pt2"), "--example-inputs", x, "--out", o],
        "pt2_sympy_eval": c + [str(d / "evil_sympy.pt2"), "--example-inputs", x, "--out", o],
        "pt2_opaque_constant": c + [str(d / "evil_opaque.pt2"), "--example-inputs", x, "--out", o],
        "pt2_aoti_library": c + [str(d / "aoti.pt2"), "--example-inputs", x, "--out", o],
        "pt2_unexpected_entry": c + [str(d / "legacy_extra.pt2"), "--example-inputs", x, "--out", o],
        "state_dict_missing_key": c + [str(d / "missing.safetensors"), "--model", FACTORY, "--out", o],
        "state_dict_extra_key": c + [str(d / "extra.pt"), "--model", FACTORY, "--out", o],
        "state_dict_wrong_shape": c + [str(d / "shape.pt"), "--model", FACTORY, "--out", o],
        "state_dict_nan": c + [str(d / "nan.safetensors"), "--model", FACTORY, "--out", o],
        "state_dict_without_factory": c + [str(d / "good.safetensors"), "--example-inputs", x, "--out", o],
        "factory_not_importable": c + [str(d / "good.pt"), "--model", "no_such_pkg.models:build", "--out", o],
        "factory_missing_attr": c + [str(d / "good.pt"), "--model", "examples.models:nope", "--out", o],
        "inputs_wrong_shape": c + [m, "--example-inputs", str(d / "wrong_shape.pt"), "--out", o],
        "inputs_wrong_dtype": c + [m, "--example-inputs", str(d / "wrong_dtype.pt"), "--out", o],
        "inputs_object_npz": c + [m, "--example-inputs", str(d / "objects.npz"), "--out", o],
        "inputs_not_tensors": c + [m, "--example-inputs", str(d / "odd.pt"), "--out", o],
        "unknown_pass": c + [m, "--passes", "dce,no_such_pass", "--out", o],
        "unknown_option": c + [m, "--passes", "dce(speed=11)", "--out", o],
        "bad_option_value": c + [m, "--passes", "partition(k=[1, 2])", "--out", o],
        "bad_spec_syntax": c + [m, "--passes", "partition(k=2", "--out", o],
        "config_toml_syntax": c + [m, "--config", str(d / "bad.toml"), "--out", o],
        "config_yaml_syntax": c + [m, "--config", str(d / "bad.yaml"), "--out", o],
        "config_unknown_key": c + [m, "--config", str(d / "unknown.yaml"), "--out", o],
        "set_pass_not_in_pipeline": c + [m, "--passes", "dce", "--set", "partition.k=2", "--out", o],
        "out_under_a_file": c + [m, "--out", str(d / "a_file" / "out")],
        "out_is_user_folder": c + [m, "--out", str(d / "notempty")],
        "model_missing": c + [str(d / "missing.pt2"), "--out", o],
        "model_unknown_extension": c + [str(d / "bad.toml"), "--out", o],
        "inputs_missing": c + [m, "--example-inputs", str(d / "nope.pt"), "--out", o],
        "run_not_an_artifact": ["run", str(d / "notempty"), "--inputs", x, "--output", str(out / "y.pt")],
        "run_unsafe_artifact": ["run", str(d / "evil_artifact"), "--inputs", x, "--output", str(out / "y.pt")],
    }


CASES = sorted(_case(Path("/c"), Path("/o")))
SLOW_OK = {"inputs_wrong_shape", "inputs_wrong_dtype"}  # these load and run the model once


@pytest.mark.parametrize("name", CASES)
def test_bad_input_corpus(corpus, tmp_path, capsys, name):
    if name == "bad_option_value":
        from autoglm.passes import REGISTRY

        if "partition" not in REGISTRY:
            pytest.skip("partition pass not registered")
    argv = _case(corpus, tmp_path)[name]
    before = sorted(p.name for p in corpus.iterdir())
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("autoglm: error: ")]
    assert code != 0, f"{name}: exit 0"
    assert "Traceback" not in err, err
    # one error line, last; anything before it is a progress line of ours
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert all(ln.startswith("autoglm: ") and "warning" not in ln for ln in lines), err
    lines = errors
    assert list(tmp_path.iterdir()) == [], f"{name} left output behind: {list(tmp_path.iterdir())}"
    assert sorted(p.name for p in corpus.iterdir()) == before, f"{name} wrote into the corpus folder"
    assert not (corpus / "PWNED").exists(), f"{name}: the payload ran"
    assert elapsed < 5.0, f"{name} took {elapsed:.1f} s"
    if name == "out_is_user_folder":
        assert (corpus / "notempty" / "keep.txt").read_text() == "user data"
    if name.startswith(("pickle_payload", "pt2_pickled", "whole_module")):
        assert "refused" in lines[0]


def test_corpus_size():
    assert len(CASES) >= 30


def test_payload_is_live(tmp_path):
    """The corpus pickle really does run code when unpickled unsafely (so the refusals mean something)."""
    marker = tmp_path / "ran"
    torch.load(io.BytesIO(_evil_bytes(marker)), weights_only=False)
    assert marker.exists()


def test_whole_module_pickle_needs_trust(corpus):
    with pytest.raises(UnsafeFileError, match="--trust-remote-code"):
        load_model(corpus / "module.pth")
    loaded = load_model(corpus / "module.pth", trust_remote_code=True)
    model, (x,) = small_cnn()
    torch.testing.assert_close(loaded.module(x), model(x))


def test_pt2_round_trip(corpus):
    loaded = load_model(corpus / "good.pt2")
    model, (x,) = small_cnn()
    assert loaded.kind == "pt2" and loaded.example_inputs is not None
    torch.testing.assert_close(loaded.example_inputs.args[0], x)
    loaded.module.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_dynamic_shape_pt2_is_accepted(tmp_path):
    """Legitimate symbolic shapes and guards pass the checks."""
    class Dot(torch.nn.Module):
        def forward(self, x, y):
            return x.reshape(-1) @ y.reshape(-1)

    x, y = torch.randn(4, 3), torch.randn(6, 2)
    ep = torch.export.export(Dot(), (x, y), strict=False, dynamic_shapes={
        "x": {0: torch.export.Dim("B", min=2, max=64)}, "y": {0: torch.export.Dim.AUTO}})
    torch.export.save(ep, tmp_path / "dyn.pt2")
    loaded = load_model(tmp_path / "dyn.pt2")
    a, b = torch.randn(6, 3), torch.randn(9, 2)
    torch.testing.assert_close(loaded.module(a, b), Dot()(a, b))


@pytest.mark.parametrize("name", ["good.safetensors", "good.pt"])
def test_state_dict_with_factory(corpus, name):
    loaded = load_model(corpus / name, factory=FACTORY)
    model, (x,) = small_cnn()
    assert loaded.kind == "state_dict"
    torch.testing.assert_close(loaded.module(x), model(x))


def test_training_checkpoint_layout(tmp_path):
    model, (x,) = small_cnn()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    torch.testing.assert_close(load_model(tmp_path / "ckpt.pt", factory=FACTORY).module(x), model(x))


def test_nonfinite_weights_allowed_with_flag(corpus):
    with pytest.raises(ModelLoadError, match="NaN/Inf"):
        load_model(corpus / "nan.safetensors", factory=FACTORY)
    loaded = load_model(corpus / "nan.safetensors", factory=FACTORY, allow_nonfinite=True)
    assert loaded.warnings and "NaN" in loaded.warnings[0]


def test_input_formats(tmp_path):
    a, b = torch.randn(2, 3), torch.arange(4)
    torch.save(a, tmp_path / "one.pt")
    torch.save({"ids": b}, tmp_path / "kw.pt")
    with open(tmp_path / "pos.npz", "wb") as fh:
        np.savez(fh, a.numpy(), b.numpy())
    with open(tmp_path / "named.npz", "wb") as fh:
        np.savez(fh, ids=b.numpy())
    save_file({"input_1": b, "input_0": a}, str(tmp_path / "pos.safetensors"))
    assert torch.equal(load_example_inputs(tmp_path / "one.pt").args[0], a)
    assert set(load_example_inputs(tmp_path / "kw.pt").kwargs) == {"ids"}
    pos = load_example_inputs(tmp_path / "pos.npz").args
    assert torch.equal(pos[0], a) and torch.equal(pos[1], b)
    assert torch.equal(load_example_inputs(tmp_path / "named.npz").kwargs["ids"], b)
    st = load_example_inputs(tmp_path / "pos.safetensors").args
    assert torch.equal(st[0], a) and torch.equal(st[1], b)


def test_guard_and_expression_checks():
    _check_guard("(3*L['x'].size()[0]) == (2*L['y'].size()[0])")
    _check_sympy_expr("Mul(Integer(3), Symbol('s77', positive=True, integer=True))")
    for bad in ["__import__('os').system('x')", "L['x'].__class__", "exec(chr(112))", 'L["a"] == 1']:
        with pytest.raises(UnsafeFileError):
            _check_guard(bad)
    for bad in ["__import__('os').system('x')", "Symbol('x').__class__", "exec(chr(112))", "(lambda: 1)()"]:
        with pytest.raises(UnsafeFileError):
            _check_sympy_expr(bad)
