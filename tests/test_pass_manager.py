"""Pass manager: contract enforcement, verification, provenance, records, specs."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.ir.meta import annotation
from autoglm.ir.pass_base import GraphPass, NodeError, PassError, PassResult
from autoglm.ir.pass_manager import PassManager
from autoglm.passes.pipeline import resolve_passes
from autoglm.passes.spec import SpecError, parse_spec
from tests.pass_check import capture_for_test


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)) + 1


def _setup():
    return capture_for_test(Model().eval(), (torch.randn(2, 8),))


class ReturnsNone(GraphPass):
    name = "returns_none"

    def run(self, gm, ctx):
        return None


class InsertNeg(GraphPass):
    """Wrong on purpose: negates the output (an exact pass must not)."""
    name = "insert_neg"

    def run(self, gm, ctx):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        val = out.args[0][0]
        with gm.graph.inserting_before(out):
            neg = gm.graph.call_function(torch.neg, (val,))
        out.args = ((neg,),)
        return PassResult(gm, True)


class LiesAboutModified(InsertNeg):
    name = "lies"

    def run(self, gm, ctx):
        return PassResult(super().run(gm, ctx).graph_module, False)


class ChangesShape(GraphPass):
    name = "changes_shape"

    def run(self, gm, ctx):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        val = out.args[0][0]
        with gm.graph.inserting_before(out):
            s = gm.graph.call_function(torch.sum, (val,))
        out.args = ((s,),)
        return PassResult(gm, True)


class FailsOnNode(GraphPass):
    name = "fails_on_node"

    def run(self, gm, ctx):
        node = next(n for n in gm.graph.nodes if n.op == "call_module")
        raise NodeError(node, "cannot handle this linear")


@dataclass
class NeedsOpts:
    k: int = 2


class NeedsPartitioned(GraphPass):
    name = "needs_partitioned"
    Options = NeedsOpts
    requires = ("partitioned",)

    def run(self, gm, ctx):
        return PassResult(gm, False)


def test_pass_must_return_pass_result():
    gm, ctx = _setup()
    with pytest.raises(PassError, match="returned NoneType, expected PassResult"):
        PassManager([ReturnsNone()]).run(gm, ctx)


def test_numerical_verify_names_pass():
    gm, ctx = _setup()
    with pytest.raises(PassError, match="pass 'insert_neg' failed: outputs differ"):
        PassManager([InsertNeg()], verify=True).run(gm, ctx)


def test_modified_flag_is_checked():
    gm, ctx = _setup()
    with pytest.raises(PassError, match="reported modified=False but created 1"):
        PassManager([LiesAboutModified()]).run(gm, ctx)


def test_verifier_catches_output_signature_change():
    gm, ctx = _setup()
    with pytest.raises(PassError, match="output signature changed"):
        PassManager([ChangesShape()]).run(gm, ctx)


def test_node_error_names_node_and_source_line():
    gm, ctx = _setup()
    with pytest.raises(PassError) as info:
        PassManager([autoglm.passes.REGISTRY["dce"](), FailsOnNode()]).run(gm, ctx)
    msg = str(info.value)
    assert "fails_on_node" in msg and "after passes: dce" in msg
    assert "model_fc" in msg and "test_pass_manager.py" in msg and "self.fc(x)" in msg


def test_requires_is_checked_before_running():
    gm, ctx = _setup()
    with pytest.raises(PassError, match="requires \\['partitioned'\\]"):
        PassManager([NeedsPartitioned()]).run(gm, ctx)


def test_records_and_provenance():
    gm, ctx = _setup()
    manager = PassManager([InsertNeg()])
    gm = manager.run(gm, ctx)
    rec = manager.records[0]
    assert rec.name == "insert_neg" and rec.created == 1 and rec.nodes_after == rec.nodes_before + 1
    neg = next(n for n in gm.graph.nodes if n.target is torch.neg)
    assert annotation(neg).created_by == "insert_neg"
    assert annotation(neg).outputs[0].shape == (2, 8)  # re-annotated after the pass
    relu = next(n for n in gm.graph.nodes if n.target is torch.relu)
    assert annotation(relu).created_by == "capture"


def test_spec_parsing_and_errors():
    assert parse_spec("dce, a(k=2, name=x, r=0.5, pattern=2:4, l=[1, 2])") == [
        ("dce", {}), ("a", {"k": 2, "name": "x", "r": 0.5, "pattern": "2:4", "l": [1, 2]})]
    with pytest.raises(SpecError, match="unknown pass 'nope'; valid passes: .*dce"):
        resolve_passes("dce,nope", ["cpu"])
    with pytest.raises(SpecError, match="has no option 'x'"):
        resolve_passes("dce(x=1)", ["cpu"])
    with pytest.raises(SpecError, match="unbalanced"):
        parse_spec("a(k=2")
    assert resolve_passes("none", ["cpu"]) == []
    assert [p.name for p in resolve_passes("default", ["cpu"])] == ["dce"]


def test_option_types_are_checked():
    from autoglm.passes.spec import build_pass

    reg = {"needs_partitioned": NeedsPartitioned}
    assert build_pass(reg, "needs_partitioned", {"k": 3}).options.k == 3
    with pytest.raises(SpecError, match="expected int, got str"):
        build_pass(reg, "needs_partitioned", {"k": "three"})


def test_default_pipeline_only_holds_exact_passes():
    for p in resolve_passes("default", ["cpu", "cpu"]):
        assert p.exact, p.name
