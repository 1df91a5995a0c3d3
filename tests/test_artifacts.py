"""Artifacts: save/load round trip, atomic writes, no code execution on load."""
import json
import os

import pytest
import torch

import autoglm
from autoglm.artifacts.directory import ArtifactError
from autoglm.artifacts.graph_json import UnsafeArtifactError
from examples.models import small_cnn, small_transformer


@pytest.mark.parametrize("factory", [small_transformer, small_cnn])
@pytest.mark.parametrize("frontend", ["symbolic", "export"])
def test_round_trip(tmp_path, factory, frontend):
    model, inputs = factory()
    cm = autoglm.compile(model, inputs, frontend=frontend)
    cm.save(tmp_path / "art")
    files = sorted(os.listdir(tmp_path / "art"))
    assert files == ["code.py", "config.json", "example_inputs.safetensors", "graph.json", "weights.safetensors"]
    loaded = autoglm.load(tmp_path / "art")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs))
    config = json.loads((tmp_path / "art" / "config.json").read_text())
    assert config["frontend"] == frontend and "torch" in config["versions"]
    assert [n.op for n in loaded.graph_module.graph.nodes] == [n.op for n in cm.graph_module.graph.nodes]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model, inputs = small_cnn()
    cm = autoglm.compile(model, inputs)
    import autoglm.artifacts.directory as art

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(art, "save_file", boom)
    with pytest.raises(OSError):
        cm.save(tmp_path / "art")
    assert os.listdir(tmp_path) == []


def test_load_refuses_non_allowlisted_targets(tmp_path):
    model, inputs = small_cnn()
    autoglm.compile(model, inputs).save(tmp_path / "art")
    path = tmp_path / "art" / "graph.json"
    doc = json.loads(path.read_text())
    node = next(n for n in doc["graph"]["nodes"] if n["op"] == "call_function")
    node["target"] = {"fn": "os.system"}
    path.write_text(json.dumps(doc))
    with pytest.raises(UnsafeArtifactError, match="os.system"):
        autoglm.load(tmp_path / "art")
    node["target"] = {"fn": "builtins.eval"}
    path.write_text(json.dumps(doc))
    with pytest.raises(UnsafeArtifactError, match="eval"):
        autoglm.load(tmp_path / "art")


def test_load_refuses_non_allowlisted_module_class(tmp_path):
    model, inputs = small_transformer()
    autoglm.compile(model, inputs).save(tmp_path / "art")
    path = tmp_path / "art" / "graph.json"
    text = path.read_text().replace("torch.nn.modules.linear.Linear", "subprocess.Popen", 1)
    path.write_text(text)
    with pytest.raises(UnsafeArtifactError, match="subprocess.Popen"):
        autoglm.load(tmp_path / "art")


def test_load_of_non_artifact_is_clear(tmp_path):
    with pytest.raises(ArtifactError, match="not an autoglm artifact"):
        autoglm.load(tmp_path)


def test_round_trip_of_layers_without_bias(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, bias=False), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3, bias=False)).eval()
    x = torch.randn(2, 1, 8, 8)
    autoglm.compile(model, (x,)).save(tmp_path / "art")
    loaded = autoglm.load(tmp_path / "art")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_plan_survives_save_and_load(tmp_path):
    from examples.graphs import resnet_cnn

    model, inputs = resnet_cnn()
    cm = autoglm.compile(model, inputs, passes="partition(k=2)", devices=["cpu", "cpu"])
    cm.save(tmp_path / "art")
    loaded = autoglm.load(tmp_path / "art")
    assert loaded.plan is not None and loaded.plan.to_json() == cm.plan.to_json()


def test_artifacts_naming_moved_functions_by_their_old_path_still_load(tmp_path):
    """check_guard moved from autoglm.runtime.replan to autoglm.ir.guards; saved graphs may name the old path."""
    import json

    from autoglm.ir.guards import check_guard

    model = torch.nn.Linear(4, 4).eval()
    autoglm.compile(model, (torch.randn(2, 4),), passes="none").save(tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "graph.json").read_text())
    nodes = doc["graph"]["nodes"]
    ph = next(n for n in nodes if n["op"] == "placeholder")["name"]
    nodes.insert(len(nodes) - 1, {"name": "guard", "op": "call_function",
                                  "target": {"fn": "autoglm.runtime.replan.check_guard"},
                                  "args": {"__tuple__": [{"__node__": ph}, True, "old.py:1"]},
                                  "kwargs": {"__dict__": []}, "ann": None, "stack_trace": None, "type": None})
    (tmp_path / "a" / "graph.json").write_text(json.dumps(doc))
    loaded = autoglm.load(tmp_path / "a")
    assert any(n.target is check_guard for n in loaded.graph_module.graph.nodes)
