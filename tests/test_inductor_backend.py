"""backend="inductor": the rewritten graph under torch.compile, int8 layers as oneDNN int8 GEMMs."""
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoglm
from autoglm.ir.metrics import sqnr_db
from autoglm.runtime.inductor import InductorExecutor, QdqConv2d, QdqLinear, inductor_graph

# Inductor on CPU writes C++ and compiles it: without a compiler there is nothing to test.
pytestmark = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                                reason="no C++ compiler on PATH (Inductor's CPU backend needs one)")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def test_fp32_graph_is_a_drop_in_callable_at_any_batch():
    model, x = _mlp(), torch.randn(8, 64)
    cm = autoglm.compile(model, (x,), backend="inductor")
    assert isinstance(cm.executor, InductorExecutor) and cm.config["backend"] == "inductor"
    with torch.no_grad():
        for batch in (8, 1, 13):
            xb = torch.randn(batch, 64)
            torch.testing.assert_close(cm(xb), model(xb))
    checked = [r["inputs"] for r in cm.notes["inductor"]["parity"]]
    assert checked[0] == "example" and "dynamic-shape" in checked
    assert not cm.notes["inductor"]["int8_kernels"]  # nothing int8 to match in an fp32 graph


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_linears_run_as_onednn_int8_gemms_within_the_budget(mode):
    model, x = _mlp(), torch.randn(16, 64)
    passes = f"quantize(mode={mode}, progress=False)"
    ours = autoglm.compile(model, (x,), passes=passes)
    cm = autoglm.compile(model, (x,), passes=passes, backend="inductor")
    kernels = cm.notes["inductor"]["int8_kernels"]
    # both Linears pre-packed as int8 oneDNN weights, and the GELU fused into the first GEMM
    assert kernels.get("qlinear_weight_prepack_matcher") == 2, kernels
    assert kernels.get("qlinear_unary_matcher") == 1, kernels
    xs = torch.randn(16, 64)
    with torch.no_grad():
        assert sqnr_db([ours(xs)], [cm(xs)]) >= 25.0  # the parity budget against our int8 graph
        assert float(F.cosine_similarity(cm(xs), model(xs)).min()) > 0.99


def test_static_int8_convs_run_as_onednn_int8_convs():
    model, x = _cnn(), torch.randn(4, 3, 16, 16)
    cm = autoglm.compile(model, (x,), passes="quantize(mode=static, progress=False)", backend="inductor")
    kernels = cm.notes["inductor"]["int8_kernels"]
    assert kernels.get("qconv_weight_prepack_matcher") == 2, kernels
    with torch.no_grad():
        xs = torch.randn(4, 3, 16, 16)
        assert float(F.cosine_similarity(cm(xs), model(xs)).min()) > 0.98


def test_a_failed_symbolic_size_compile_falls_back_to_fixed_sizes():
    """torch 2.13's int8 conv lowering asserts on strides once the batch is symbolic (the digits
    CNN: Conv-BN-ReLU-MaxPool); the backend then compiles each shape on its own, and says so."""
    from examples.models import small_cnn

    model, (x,) = small_cnn(batch=4)
    cm = autoglm.compile(model, (x,), passes="quantize(mode=static, progress=False)", backend="inductor")
    notes = cm.notes["inductor"]
    if notes["dynamic_fallback"] is None:
        pytest.skip("this torch compiles the symbolic-size int8 conv graph: nothing to fall back from")
    assert notes["dynamic"] is False and "symbolic-size compile failed" in notes["dynamic_fallback"]
    with torch.no_grad():
        for batch in (3, 7):
            xb = torch.randn(batch, 1, 8, 8)
            assert float(F.cosine_similarity(cm(xb), model(xb)).min()) > 0.99


def test_twins_compute_the_int8_modules_numbers():
    """Run eagerly, the q/dq twins are the lowered modules' math (fx kernels are exact on this
    CPU or fall back to exact ones), so any difference under Inductor is Inductor's."""
    for model, x in ((_mlp(), torch.randn(16, 64)), (_cnn(), torch.randn(2, 3, 16, 16))):
        cm = autoglm.compile(model, (x,), passes="quantize(mode=static, progress=False)")
        twin = inductor_graph(cm.graph_module)
        assert any(isinstance(m, (QdqLinear, QdqConv2d)) for m in twin.modules())
        with torch.no_grad():
            assert sqnr_db([cm.graph_module(x)[0]], [twin(x)[0]]) > 60.0


def test_threads_and_unknown_options_are_refused_in_one_line():
    model, x = _mlp(), torch.randn(4, 64)
    with pytest.raises(ValueError, match="torch.set_num_threads"):
        autoglm.compile(model, (x,), backend="inductor", backend_options={"threads": 1})
    with pytest.raises(TypeError, match="unknown inductor backend option"):
        autoglm.compile(model, (x,), backend="inductor", backend_options={"precision": "bf16"})
    with pytest.raises(ValueError, match="mode must be one of"):
        autoglm.compile(model, (x,), backend="inductor", backend_options={"mode": "fast"})
    from tests.test_branches import TwoWay, _inputs, _seeded

    with pytest.raises(ValueError, match="without data-dependent branches"):
        autoglm.compile(_seeded(TwoWay()), (_inputs(1)[0],), backend="inductor")


def test_cli_runs_a_saved_int8_artifact_on_inductor(tmp_path):
    """As a user would: a .pt2 compiled by the installed command, then `autoglm run --backend inductor`
    in a fresh process; the outputs file matches the fx run of the same artifact."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    autoglm_cmd = shutil.which("autoglm", path=str(Path(sys.executable).parent)) or shutil.which("autoglm")
    if autoglm_cmd is None:
        pytest.skip("autoglm console script not installed")
    model, x = _mlp(), torch.randn(8, 64)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "mlp.pt2")
    torch.save((x,), tmp_path / "x.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([autoglm_cmd, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    done = cli("compile", "mlp.pt2", "--example-inputs", "x.pt", "--passes", "quantize(progress=False)",
               "--out", "art", "--no-measure", "-q")
    assert done.returncode == 0, done.stderr
    outs = {}
    for backend in ("fx", "inductor"):
        done = cli("run", "art", "--inputs", "x.pt", "--backend", backend, "--output", f"{backend}.pt",
                   "--benchmark", "--repeats", "3", "--threads", "1")
        assert done.returncode == 0, done.stderr
        assert f"(backend {backend})" in done.stdout
        outs[backend] = torch.load(tmp_path / f"{backend}.pt", weights_only=True)
    fx_out, ind_out = (next(iter(o.values())) if isinstance(o, dict) else o for o in (outs["fx"], outs["inductor"]))
    assert sqnr_db([fx_out], [ind_out]) >= 25.0
    bad = cli("run", "art", "--inputs", "x.pt", "--backend", "inductor", "--nproc", "2")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--nproc" in bad.stderr


def test_an_inductor_failure_is_one_line(monkeypatch):
    """Inductor's own errors run to pages (generated code, stacks): the backend says what failed."""
    from autoglm.export.inductor import InductorCompileError

    def broken(self, inputs):
        raise RuntimeError("C++ compile error\n" + "long generated source\n" * 50)

    monkeypatch.setattr(InductorExecutor, "compile", broken)
    with pytest.raises(InductorCompileError, match="Inductor could not compile this graph") as info:
        autoglm.compile(_mlp(), (torch.randn(4, 64),), backend="inductor")
    assert "\n" not in str(info.value) and "backend='fx'" in str(info.value)
