import json

import pytest
import torch
import torch.nn as nn

from autoglm.cost import model as cost_mod
from autoglm.cost.model import CostModel, MachineProfile, machine_profile, measure_machine
from autoglm.ir.annotate import AnnotatingInterpreter
from autoglm.ir.meta import annotation, iter_compute_nodes
from autoglm.ir.pass_manager import PassManager
from autoglm.passes.split_merge.split_merge import SplitMerge
from examples.models import small_transformer
from tests.pass_check import capture_for_test

FIXED = MachineProfile(peak_flops=1e10, bandwidth=1e9, dispatch_s=1e-6, threads=1, python_op_s=1e-7)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5000, 64)
        self.small = nn.Linear(64, 64)
        self.big = nn.Linear(64, 1024)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        b, s, d = h.shape
        h = self.small(h).view(b, s, 8, 8).transpose(1, 2).reshape(b, s, d)
        return self.big(h)


def _graph(model=None, inputs=None, profile=FIXED, kind="analytic"):
    model = model or Mixed().eval()
    inputs = inputs or (torch.randint(0, 5000, (2, 32)),)
    gm, ctx = capture_for_test(model, inputs)
    return gm, ctx, CostModel(kind, profile=profile)


def _node(gm, predicate):
    return next(n for n in iter_compute_nodes(gm.graph) if predicate(n))


def test_roofline_of_a_linear_matches_its_annotation():
    gm, _, cm = _graph()
    big = _node(gm, lambda n: n.target == "model.big")
    ann = annotation(big)
    assert ann.flops == 2 * 2 * 32 * 64 * 1024
    expected = max(ann.flops / FIXED.peak_flops, ann.bytes_moved / FIXED.bandwidth) + FIXED.dispatch_s
    assert cm.analytic(big) == pytest.approx(expected)


def test_views_shape_ops_and_embeddings_are_not_charged_for_bytes_they_do_not_move():
    gm, _, cm = _graph()
    view = _node(gm, lambda n: n.target == "view")
    assert cm.analytic(view) == FIXED.dispatch_s
    shape = _node(gm, lambda n: n.op == "call_function" and "getattr" in str(n.target))
    assert cm.analytic(shape) == FIXED.python_op_s
    embed = _node(gm, lambda n: n.target == "model.embed")
    table_read = 5000 * 64 * 4 / FIXED.bandwidth
    assert cm.analytic(embed) < table_read / 10  # gathers 64 rows, not the 5000-row table
    reshape = _node(gm, lambda n: n.target == "reshape")  # copies after a transpose: keeps its bytes
    assert cm.analytic(reshape) > FIXED.dispatch_s


def test_measured_costs_are_cached_by_op_and_shape(monkeypatch):
    gm, ctx, cm = _graph(kind="measured")
    calls = []
    real = AnnotatingInterpreter._time
    monkeypatch.setattr(AnnotatingInterpreter, "_time", lambda self, *a: calls.append(1) or real(self, *a))
    cm.annotate_costs(gm, ctx.example_inputs)
    first = len(calls)
    assert first > 0
    for n in iter_compute_nodes(gm.graph):
        ann = annotation(n)
        assert ann.latency_s is not None and ann.cost_s == ann.latency_s
    cm.annotate_costs(gm, ctx.example_inputs)
    assert len(calls) == first  # every node was timed once; the second pass hits the cache


def test_measured_without_inputs_uses_latencies_already_there():
    gm, ctx, cm = _graph(kind="measured")
    node = _node(gm, lambda n: n.target == "model.big")
    annotation(node).latency_s = 0.5
    cm.annotate_costs(gm)  # no inputs: no timing, no error
    assert annotation(node).cost_s == 0.5
    other = _node(gm, lambda n: n.target == "model.small")
    assert annotation(other).cost_s == cm.analytic(other)


def test_measured_and_analytic_agree_on_the_largest_node():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1024), nn.ReLU(), nn.Linear(1024, 1024)).eval()
    gm, ctx, cm = _graph(model, (torch.randn(64, 16),), profile=None, kind="measured")
    cm.annotate_costs(gm, ctx.example_inputs)
    nodes = list(iter_compute_nodes(gm.graph))
    by_measured = max(nodes, key=lambda n: annotation(n).latency_s)
    by_analytic = max(nodes, key=cm.analytic)
    assert by_measured is by_analytic


def test_fused_module_costs_the_sum_of_its_nodes():
    model, inputs = small_transformer()
    gm, ctx = capture_for_test(model, inputs, ["cpu", "cpu"])
    cm = CostModel("analytic", profile=FIXED)
    gm = PassManager([SplitMerge(split=False)]).run(gm, ctx)
    fused = [n for n in gm.graph.nodes if "merged" in annotation(n).tags]
    assert fused
    for n in fused:
        inner = gm.get_submodule(str(n.target))
        parts = sum(cm.analytic(m) for m in iter_compute_nodes(inner.graph))
        assert cm.analytic(n) == pytest.approx(parts + FIXED.dispatch_s)


def test_machine_profile_is_measured_once_and_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_CACHE", str(tmp_path))
    monkeypatch.setattr(cost_mod, "_PROFILE", None)
    monkeypatch.setattr(cost_mod, "measure_machine", lambda repeats=5: FIXED)
    assert machine_profile() == FIXED
    files = list(tmp_path.glob("machine-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["peak_flops"] == FIXED.peak_flops
    monkeypatch.setattr(cost_mod, "_PROFILE", None)
    monkeypatch.setattr(cost_mod, "measure_machine", lambda repeats=5: pytest.fail("re-measured"))
    assert machine_profile() == FIXED  # read back from disk


def test_measure_machine_gives_positive_rates():
    p = measure_machine(repeats=1)
    assert p.peak_flops > 1e8 and p.bandwidth > 1e8 and 0 < p.dispatch_s < 1e-3 and 0 < p.python_op_s < 1e-5


def test_unknown_cost_kind_is_refused():
    with pytest.raises(ValueError, match="analytic"):
        CostModel("guess")  # type: ignore[arg-type]


def test_analytic_plans_do_not_depend_on_the_machine_profile_cache(tmp_path, monkeypatch):
    """The default analytic model uses the fixed reference profile, never a measured or cached one."""
    from autoglm.cost.model import REFERENCE_PROFILE

    monkeypatch.setenv("AUTOGLM_CACHE", str(tmp_path))
    monkeypatch.setattr(cost_mod, "_PROFILE", FIXED)  # a profile measured earlier in this process
    assert CostModel("analytic").profile == REFERENCE_PROFILE
    assert not list(tmp_path.iterdir())  # nothing measured, nothing cached


def test_measured_timings_belong_to_one_cost_model():
    gm, ctx, cm = _graph(kind="measured")
    cm.annotate_costs(gm, ctx.example_inputs)
    assert cm.timings and not CostModel("measured").timings  # no process-wide cache
