"""The ``autoglm`` command: end to end through the installed script, and behaviours via ``main(argv)``."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from autoglm.cli.main import main
from examples.models import small_cnn

ROOT = Path(__file__).resolve().parent.parent
AUTOGLM = shutil.which("autoglm", path=str(Path(sys.executable).parent)) or shutil.which("autoglm")


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([AUTOGLM, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model, (x,) = small_cnn()
    torch.export.save(torch.export.export(model, (x,)), d / "cnn.pt2")
    torch.save((x,), d / "x.pt")
    save_file(model.state_dict(), str(d / "cnn.safetensors"))
    return d


def _ops(artifact: Path) -> list[str]:
    nodes = json.loads((artifact / "graph.json").read_text())["graph"]["nodes"]
    return [f"{n['op']}:{n['target']['fn'] if isinstance(n['target'], dict) else n['target']}" for n in nodes]


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.skipif(AUTOGLM is None, reason="autoglm console script not installed")
def test_end_to_end_installed_command(saved, tmp_path):
    """torch.export.save -> compile (spec and config) -> run -> export ONNX -> report."""
    model, (x,) = small_cnn()
    spec = "dce,partition(k=2)"
    r = _cli("compile", str(saved / "cnn.pt2"), "--passes", spec, "--devices", "cpu,cpu", "--out", "a",
             "--report", "a/report.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "c.yaml").write_text("devices: [cpu, cpu]\npasses:\n  - dce\n  - partition: {k: 2}\n")
    r = _cli("compile", str(saved / "cnn.pt2"), "--config", "c.yaml", "--out", "b", "--json", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [p["name"] for p in result["passes"]] == ["dce", "partition"]
    conf_a = json.loads((tmp_path / "a" / "config.json").read_text())
    conf_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert conf_a["effective_config"] == conf_b["effective_config"]
    assert _ops(tmp_path / "a") == _ops(tmp_path / "b")
    r = _cli("run", "a", "--inputs", str(saved / "x.pt"), "--output", "y.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    y = torch.load(tmp_path / "y.pt", weights_only=True)["output_0"]
    with torch.no_grad():
        torch.testing.assert_close(y, model(x))
    html = (tmp_path / "a" / "report.html").read_text()
    assert "<html" in html.lower() and "partition" in html
    assert json.loads((tmp_path / "a" / "report.json").read_text())
    r = _cli("export", "a", "--onnx", "m.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x).detach(), rtol=1e-4, atol=1e-5)
    leftovers = [p.name for p in tmp_path.iterdir() if "autoglm-tmp" in p.name]
    assert leftovers == []


def test_toml_and_set_overrides(saved, tmp_path, capsys):
    (tmp_path / "c.toml").write_text('devices = ["cpu", "cpu"]\npasses = ["dce", {partition = {k = 2}}]\n')
    code = main(["compile", str(saved / "cnn.pt2"), "--config", str(tmp_path / "c.toml"), "--set",
                 "partition.seed=3", "--out", str(tmp_path / "o"), "-q"])
    assert code == 0, capsys.readouterr().err
    eff = json.loads((tmp_path / "o" / "config.json").read_text())["effective_config"]
    assert eff["passes"][1]["partition"]["k"] == 2 and eff["passes"][1]["partition"]["seed"] == 3
    assert eff["devices"] == ["cpu", "cpu"]
    # the written config reproduces the build
    code = main(["compile", str(saved / "cnn.pt2"), "--config", str(tmp_path / "o" / "config.json"),
                 "--out", str(tmp_path / "o2"), "-q"])
    assert code == 0
    assert json.loads((tmp_path / "o2" / "config.json").read_text())["effective_config"] == eff


def test_state_dict_with_factory_compiles(saved, tmp_path, capsys):
    code = main(["compile", str(saved / "cnn.safetensors"), "--model", "examples.models:small_cnn",
                 "--passes", "dce", "--out", str(tmp_path / "o"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["max_abs_diff_vs_eager"] == 0.0
    assert any("loading" in ln for ln in captured.err.splitlines())  # progress on stderr


def test_quiet_success_prints_nothing_on_stderr(saved, tmp_path, capsys):
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "none", "--out", str(tmp_path / "o"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_passes_lists_registry(capsys):
    from autoglm.passes import REGISTRY

    assert main(["passes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["passes"]
    assert [p["name"] for p in listed] == list(REGISTRY)
    for p in listed:
        for opt in p["options"]:
            assert set(opt) == {"name", "type", "default", "allowed", "help"}


@pytest.mark.parametrize("argv", [[], ["compile"], ["compile", "m.pt2", "--passes", "dce", "--config", "c.toml",
                                                    "--out", "o"], ["run", "d"], ["frobnicate"]])
def test_usage_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("usage:")]
    assert len(err) == 1 and err[0].startswith("autoglm: error:")


def test_failed_report_leaves_nothing(saved, tmp_path, capsys, monkeypatch):
    import autoglm.report

    def broken(cm, path, **kwargs):
        Path(path).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(autoglm.report, "write_report", broken)
    code = main(["compile", str(saved / "cnn.pt2"), "--passes", "dce", "--out", str(tmp_path / "o"),
                 "--report", str(tmp_path / "r.html")])
    assert code == 1
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_replacing_an_artifact_keeps_the_old_one_on_failure(saved, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "dce", "--out", str(out), "-q"]) == 0
    before = (out / "graph.json").read_text()
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "nope", "--out", str(out), "-q"]) == 1
    assert (out / "graph.json").read_text() == before


def test_run_checks_input_shape_and_nproc(saved, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "dce", "--out", str(out), "-q"]) == 0
    torch.save((torch.randn(2, 1, 8, 8),), tmp_path / "small.pt")
    assert main(["run", str(out), "--inputs", str(tmp_path / "small.pt")]) == 1
    # cnn.pt2 was exported static: the artifact keeps its fixed batch and says so
    assert "input_0 dim 0 is 2; it was compiled static at 4" in capsys.readouterr().err


def test_pipeline_run_checks_shapes_per_microbatch(saved, tmp_path, capsys, monkeypatch):
    """Pipelines are compiled at microbatch size and fed the whole batch: the check is per microbatch."""
    pipe = pytest.importorskip("autoglm.runtime.pipeline.driver")
    out = tmp_path / "o"
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "dce", "--out", str(out), "-q"]) == 0
    monkeypatch.setattr(pipe, "run_pipeline", lambda artifact_dir, inputs, nproc, schedule, microbatches:
                        tuple(torch.zeros(t.shape[0], 10) for t in inputs))  # the CLI's checks only
    torch.save((torch.randn(8, 1, 8, 8),), tmp_path / "big.pt")  # compiled at 4: two microbatches of 4
    assert main(["run", str(out), "--inputs", str(tmp_path / "big.pt"), "--nproc", "2", "--microbatches", "2",
                 "-q"]) == 0, capsys.readouterr().err
    assert main(["run", str(out), "--inputs", str(tmp_path / "big.pt"), "--nproc", "2", "--microbatches", "3"]) == 1
    assert "does not split into --microbatches 3" in capsys.readouterr().err
    assert main(["run", str(out), "--inputs", str(tmp_path / "big.pt"), "--nproc", "2", "--microbatches", "4"]) == 1
    assert "per microbatch: input_0 dim 0 is 2; it was compiled static at 4" in capsys.readouterr().err


def test_run_nproc_calls_the_pipeline_runner(saved, tmp_path, capsys, monkeypatch):
    """The CLI wiring only (flat inputs in, structured outputs out); the runner has its own tests."""
    pipe = pytest.importorskip("autoglm.runtime.pipeline.driver")
    out = tmp_path / "o"
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "dce", "--out", str(out), "-q"]) == 0
    calls = {}

    def fake_run_pipeline(artifact_dir, inputs, nproc, schedule, microbatches):
        calls.update(artifact=artifact_dir, inputs=inputs, nproc=nproc, schedule=schedule, mb=microbatches)
        import autoglm

        return autoglm.load(artifact_dir).graph_module(*inputs)

    monkeypatch.setattr(pipe, "run_pipeline", fake_run_pipeline)
    assert main(["run", str(out), "--inputs", str(saved / "x.pt"), "--nproc", "2", "--output",
                 str(tmp_path / "y.safetensors"), "-q"]) == 0, capsys.readouterr().err
    assert calls["nproc"] == 2 and calls["mb"] == 1 and calls["schedule"] == "gpipe"
    model, (x,) = small_cnn()
    torch.testing.assert_close(calls["inputs"][0], x)
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(str(tmp_path / "y.safetensors"))["output_0"], model(x).detach())


def test_inspect_model_and_artifact(saved, tmp_path, capsys):
    assert main(["inspect", str(saved / "cnn.pt2"), "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["nodes"] == len(data["nodes"]) > 5 and data["totals"]["flops"] > 0
    assert main(["compile", str(saved / "cnn.pt2"), "--passes", "dce", "--out", str(tmp_path / "o"), "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "o"), "-q"]) == 0
    text = capsys.readouterr().out
    assert "FLOPs" in text and "estimated time" in text


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (out / "graph.json").exists() and result["max_abs_diff_vs_eager"] is not None
    assert result["max_abs_diff_vs_eager"] < 1e-4
    from autoglm.passes import REGISTRY

    if "partition" in REGISTRY:
        assert "partition" in [p["name"] for p in result["passes"]]
    if result["report"]:
        assert Path(result["report"]).exists()
