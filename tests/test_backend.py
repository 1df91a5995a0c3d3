"""torch.compile(backend="autoglm") runs Dynamo subgraphs through the pipeline."""
import torch.nn as nn

from autoglm.backend import make_backend
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
