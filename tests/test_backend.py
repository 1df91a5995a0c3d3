"""torch.compile(backend="autoglm") runs Dynamo subgraphs through the pipeline."""
import torch.nn as nn

from autoglm.api.backend import make_backend
from autoglm.ir.pass_base import GraphPass, PassResult
from examples.models import small_transformer


def test_registered_backend_matches_eager():
    import torch._dynamo

    torch._dynamo.reset()
    model, inputs = small_transformer()
    assert "autoglm" in torch._dynamo.list_backends()
    compiled = torch.compile(model, backend="autoglm")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))


def test_every_subgraph_goes_through_the_pipeline():
    import torch._dynamo

    torch._dynamo.reset()
    seen = []

    class Spy(GraphPass):
        name = "spy"

        def run(self, gm, ctx):
            seen.append(len(gm.graph.nodes))
            return PassResult(gm, False)

    class GraphBreak(nn.Module):
        def forward(self, x):
            y = torch.relu(x)
            print("", end="")  # forces a graph break: two subgraphs
            return y * 2

    model = GraphBreak()
    compiled = torch.compile(model, backend=make_backend([Spy()]))
    x = torch.randn(4)
    torch.testing.assert_close(compiled(x), model(x))
    assert len(seen) == 2


def test_backend_runs_a_partitioned_subgraph_on_its_devices():
    """The plan is executed: a partition(k=2) subgraph runs on the multi-device executor."""
    import torch._dynamo
    from autoglm.runtime.local import LocalExecutor

    torch._dynamo.reset()
    executors = []
    real = LocalExecutor.__call__

    def spy(self, *args):  # noqa: ANN001
        executors.append(self)
        return real(self, *args)

    model, inputs = small_transformer()
    LocalExecutor.__call__ = spy
    try:
        compiled = torch.compile(model, backend="autoglm", options={"passes": "partition(k=2)",
                                                                    "devices": ["cpu", "cpu"]})
        with torch.no_grad():
            torch.testing.assert_close(compiled(*inputs), model(*inputs))
    finally:
        LocalExecutor.__call__ = real
    assert executors and len(executors[0].devices) == 2


def test_backend_options_are_checked():
    import pytest
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(nn.Linear(4, 4), backend="autoglm", options={"pases": "dce"})
    with pytest.raises(Exception, match="unknown option"):
        compiled(torch.randn(2, 4))


def test_backend_annotates_on_the_real_example_values():
    """Ops that need valid values (a Cholesky of an SPD matrix) annotate on Dynamo's real inputs."""
    import torch._dynamo

    torch._dynamo.reset()

    class Chol(nn.Module):
        def forward(self, a):
            return torch.linalg.cholesky(a @ a.mT + 4 * torch.eye(a.shape[-1]))

    seen = []

    class Spy(GraphPass):
        name = "spy"

        def run(self, gm, ctx):
            seen.append(ctx.example_inputs[0])
            return PassResult(gm, False)

    a = torch.randn(3, 3)
    compiled = torch.compile(Chol(), backend=make_backend([Spy()]))
    torch.testing.assert_close(compiled(a), Chol()(a))
    assert seen and torch.equal(seen[0], a)


def test_backend_option_inductor_runs_int8_subgraphs_as_onednn_gemms():
    """options={"backend": "inductor"}: the quantized subgraph is compiled by Inductor (its int8
    weight pre-packing fires) and stays within int8 noise of the fx-run subgraph."""
    import shutil

    import pytest
    import torch._dynamo
    from torch._dynamo.utils import counters

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler on PATH (Inductor's CPU backend needs one)")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()
    x = torch.randn(16, 64)
    outs = {}
    for runtime in ("fx", "inductor"):
        torch._dynamo.reset()
        before = counters["inductor"]["qlinear_weight_prepack_matcher_count"]
        compiled = torch.compile(model, backend="autoglm",
                                 options={"passes": "quantize(progress=False)", "backend": runtime})
        with torch.no_grad():
            outs[runtime] = compiled(x)
        packed = counters["inductor"]["qlinear_weight_prepack_matcher_count"] - before
        assert packed == (2 if runtime == "inductor" else 0), (runtime, packed)
    from autoglm.ir.metrics import sqnr_db

    assert sqnr_db([outs["fx"]], [outs["inductor"]]) >= 25.0  # the int8 parity budget of the backends
    with pytest.raises(ValueError, match="options\\['backend'\\] must be one of"):
        make_backend("quantize", backend="openvino")
