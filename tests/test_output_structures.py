"""Saved input/output structures come back in a fresh process, read as data (issue #17 item 2).

A Hugging Face artifact saved with ``cm.save`` used to fail to reopen in a new
process (``Deserializing transformers.modeling_outputs.... in pytree is not
registered``), and so did ``autoglm compile`` of a ``torch.export.save`` file
of it. Reading a structure must also never import what the file names
(``autoglm.ir.treespec``): an enum in a context, or a defaultdict factory,
made torch's reader import any module on the path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import autoglm
from autoglm.ir.treespec import OutputRecord, UnsafeTreeSpecError, load_treespec
from torch.utils._pytree import tree_flatten, treespec_dumps

transformers = pytest.importorskip("transformers")
AUTOGLM = str(Path(sys.executable).with_name("autoglm"))
LEAF = {"type": None, "context": None, "children_spec": []}


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                 vocab_size=100, max_position_embeddings=32)).eval()
    inputs = {"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    return model, inputs


def _fresh(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_hf_artifact_reloads_in_a_fresh_process_with_its_output_class(tmp_path: Path) -> None:
    model, inputs = _bert()
    cm = autoglm.compile(model, inputs)
    cm.save(tmp_path / "art")
    with torch.no_grad():
        ref = model(**inputs)
    torch.save({"inputs": inputs, "ref": [ref.last_hidden_state, ref.pooler_output]}, tmp_path / "data.pt")
    proc = _fresh("""
        import sys, torch, autoglm
        assert "transformers" not in sys.modules
        data = torch.load(sys.argv[2], weights_only=True)
        out = autoglm.load(sys.argv[1])(**data["inputs"])
        print(type(out).__module__ + "." + type(out).__name__)
        torch.testing.assert_close(out.last_hidden_state, data["ref"][0])
        torch.testing.assert_close(out["pooler_output"], data["ref"][1])
        torch.testing.assert_close(out[0], data["ref"][0])
    """, str(tmp_path / "art"), str(tmp_path / "data.pt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions"


def test_hf_pt2_compiles_inspects_and_runs_from_the_cli(tmp_path: Path) -> None:
    model, inputs = _bert()
    torch.export.save(torch.export.export(model, (), kwargs=inputs, strict=False), tmp_path / "m.pt2")
    from safetensors.torch import save_file

    save_file(inputs, tmp_path / "in.safetensors")
    for argv in (["inspect", str(tmp_path / "m.pt2")],
                 ["compile", str(tmp_path / "m.pt2"), "--passes", "split_merge,partition(k=2)",
                  "--devices", "cpu,cpu", "--out", str(tmp_path / "build")],
                 ["run", str(tmp_path / "build"), "--inputs", str(tmp_path / "in.safetensors")]):
        proc = subprocess.run([AUTOGLM, *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])


def test_an_output_class_that_is_not_here_comes_back_as_a_record() -> None:
    schema = {"type": "somewhere_else.Output", "context": json.dumps(["logits", "hidden"]),
              "children_spec": [LEAF, LEAF]}
    spec = load_treespec(json.dumps([1, schema]))
    from torch.utils._pytree import tree_unflatten

    out = tree_unflatten([torch.ones(1), torch.zeros(1)], spec)
    assert isinstance(out, OutputRecord)
    assert out.logits is out["logits"] is out[0]
    assert [t.item() for t in tree_flatten(out)[0]] == [1.0, 0.0]
    assert load_treespec(treespec_dumps(spec)) == spec  # a record saves and loads as itself


EVIL_MODULE = "autoglm_canary_mod"


def _evil_path(tmp_path: Path) -> tuple[Path, Path]:
    """A module on the path that, if ever imported, creates the canary."""
    canary = tmp_path / "CANARY"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{EVIL_MODULE}.py").write_text(
        f"open({str(canary)!r}, 'w').close()\nimport enum\nclass E(enum.Enum):\n    A = 1\ndef f():\n    return 0\n")
    return tmp_path / "mods", canary


_HOSTILE_SPECS = {
    "enum key": {"type": "builtins.dict",
                 "context": json.dumps([{"__enum__": True, "fqn": f"{EVIL_MODULE}:E", "name": "A"}]),
                 "children_spec": [LEAF]},
    "defaultdict factory": {"type": "collections.defaultdict",
                            "context": {"default_factory_module": EVIL_MODULE,  # torch keeps this one a dict
                                        "default_factory_name": "f", "dict_context": ["a"]},
                            "children_spec": [LEAF]},
    "transformers look-alike": {"type": f"transformers.models.{EVIL_MODULE}.x.Output",
                                "context": json.dumps([1]), "children_spec": [LEAF]},
}


@pytest.mark.parametrize("case", sorted(_HOSTILE_SPECS))
def test_reading_a_structure_never_imports_what_it_names(case: str) -> None:
    with pytest.raises(UnsafeTreeSpecError):
        load_treespec(json.dumps([1, _HOSTILE_SPECS[case]]))
    assert EVIL_MODULE not in sys.modules


def _edit_artifact_out_spec(art: Path, schema: dict) -> None:
    doc = json.loads((art / "graph.json").read_text())
    doc["signature"]["out_spec"] = json.dumps([1, schema])
    (art / "graph.json").write_text(json.dumps(doc))


def _edit_pt2_out_spec(src: Path, dest: Path, schema: dict) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            blob = zin.read(info)
            if "/models/" in f"/{info.filename}" and info.filename.endswith(".json"):
                doc = json.loads(blob)
                for entry in doc["graph_module"]["module_call_graph"]:
                    if entry.get("signature"):
                        entry["signature"]["out_spec"] = json.dumps([1, schema])
                blob = json.dumps(doc).encode()
            zout.writestr(info, blob)


@pytest.mark.parametrize("case", ["enum key", "defaultdict factory"])
def test_hostile_structures_in_files_are_refused_by_every_reader(case: str, tmp_path: Path) -> None:
    mods, canary = _evil_path(tmp_path)
    model = torch.nn.Linear(4, 4).eval()
    x = torch.randn(2, 4)
    autoglm.compile(model, (x,), passes="none").save(tmp_path / "art")
    _edit_artifact_out_spec(tmp_path / "art", _HOSTILE_SPECS[case])
    torch.export.save(torch.export.export(model, (x,), strict=False), tmp_path / "ok.pt2")
    _edit_pt2_out_spec(tmp_path / "ok.pt2", tmp_path / "m.pt2", _HOSTILE_SPECS[case])
    env = {**os.environ, "PYTHONPATH": f"{mods}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    torch.save(x, tmp_path / "x.pt")
    for argv in (["inspect", str(tmp_path / "art")], ["run", str(tmp_path / "art"), "--inputs", str(tmp_path / "x.pt")],
                 ["inspect", str(tmp_path / "m.pt2")],
                 ["compile", str(tmp_path / "m.pt2"), "--out", str(tmp_path / "build")]):
        proc = subprocess.run([AUTOGLM, *argv, "-q"], capture_output=True, text=True, timeout=300, env=env, cwd=mods)
        assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "refused" in proc.stderr, proc.stderr
        assert not canary.exists(), argv
    assert not (tmp_path / "build").exists()
