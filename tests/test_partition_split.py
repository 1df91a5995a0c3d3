"""partition splits a heavy node when the parts cannot balance without it (partition_split.py)."""
import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.ir.meta import annotation
from autoglm.ir.pass_manager import PassManager
from autoglm.passes.partition.partition import Partition
from autoglm.runtime.local import LocalExecutor
from autoglm.ir.partitions import extract_stages
from examples.graphs import resnet_cnn
from tests.pass_check import capture_for_test
from tests.test_partition import _check_valid
from tests.test_split_merge import HeavyMiddle  # the middle Linear holds ~87% of the work


def _partition(model, inputs, **options):
    gm, ctx = capture_for_test(model, inputs)
    manager = PassManager([Partition(**options)])
    gm = manager.run(gm, ctx)  # re-annotates and verifies the rewritten graph against eager
    return gm, ctx, ctx.notes["partition"]["plan"]


def _close_to_eager(gm, ctx, model, inputs, k):
    with torch.no_grad():
        torch.testing.assert_close(LocalExecutor(gm, ["cpu"] * k)(*ctx.example_inputs)[0], model(*inputs))


def test_heavy_node_is_split_at_the_boundary_and_parts_balance():
    torch.manual_seed(0)
    model, inputs = HeavyMiddle(), (torch.randn(32, 32),)
    gm, ctx, unsplit = _partition(model, inputs, k=2, split=False)
    assert unsplit.imbalance > 1.3 and not unsplit.splits  # the reason to split
    gm, ctx, plan = _partition(model, inputs, k=2)
    _check_valid(gm, ctx, 2)
    assert plan.imbalance <= 1.10
    assert [s["node"] for s in plan.splits] and sum(plan.splits[0]["sizes"]) == 256
    shards = [n for n in gm.graph.nodes if "split" in annotation(n).tags and annotation(n).tags["split"]["role"] == "shard"]
    assert {annotation(n).partition for n in shards} == {0, 1}  # the cut runs between the pieces
    _close_to_eager(gm, ctx, model, inputs, 2)


def test_no_split_when_the_graph_already_balances():
    gm, ctx, plan = _partition(*resnet_cnn(), k=2)
    assert not plan.splits and plan.imbalance <= 1.10


@pytest.mark.parametrize("k", [4, 8])
def test_resnet_chain_reaches_chain_balance(k):
    model, inputs = resnet_cnn()
    gm, ctx, unsplit = _partition(model, inputs, k=k, split=False)
    assert unsplit.imbalance > 1.10  # 3x3 convs are ~6% of the model each: too coarse for k parts
    gm, ctx, plan = _partition(model, inputs, k=k)
    _check_valid(gm, ctx, k)
    assert plan.splits and plan.imbalance <= 1.10
    _close_to_eager(gm, ctx, model, inputs, k)
    again = PassManager([Partition(k=k)])
    again.run(gm, ctx)
    assert not again.records[-1].modified  # a second run finds the balance and splits nothing more


def test_split_graph_compiles_saves_loads_and_runs_as_a_pipeline_chain(tmp_path):
    model, inputs = resnet_cnn()
    cm = autoglm.compile(model, inputs, passes="partition(k=4,contiguous=True)", devices=["cpu"] * 4)
    assert cm.plan.splits and cm.plan.imbalance <= 1.10
    with torch.no_grad():
        ref = model(*inputs)
        torch.testing.assert_close(cm(*inputs), ref)
        values = list(inputs)
        for stage in extract_stages(cm.graph_module):
            values = list(stage.module(*values))
        torch.testing.assert_close(values[0], ref)
        cm.save(tmp_path / "art")
        torch.testing.assert_close(autoglm.load(tmp_path / "art")(*inputs), ref)



# ---------------------------------------------------------------- pipeline fill (partition_refine)


def test_fill_formulas_agree():
    from autoglm.passes.partition.refine import balanced_stage_cost, effective_costs, min_max_cap

    total, k, fill = 12.0, 3, 0.25
    t = balanced_stage_cost(total, k, fill)
    # stages costing T - fill * prefix each sum to the total and all have effective cost T
    stages, before = [], 0.0
    for _ in range(k):
        stages.append(t - fill * before)
        before += stages[-1]
    assert sum(stages) == pytest.approx(total)
    assert effective_costs(stages, fill) == pytest.approx([t] * k)
    assert balanced_stage_cost(total, k, 0.0) == total / k
    # on fine-grained units the min-max effective cap approaches T from above
    units = [total / 1200] * 1200
    assert t <= min_max_cap(units, k, fill) <= t * 1.01


class Layers(nn.Module):
    def __init__(self, n=16, width=256):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def test_pipeline_stages_balance_time_including_fill():
    torch.manual_seed(0)
    model, inputs = Layers(), (torch.randn(64, 256),)
    plain = _partition(model, inputs, k=2, contiguous=True)[2]
    gm, ctx, piped = _partition(model, inputs, k=2, contiguous=True, microbatches=4)
    _check_valid(gm, ctx, 2)
    assert plain.step_imbalance is None and piped.step_imbalance is not None and piped.step_imbalance <= 1.10
    first, last = (p.cost_s for p in piped.parts)
    # the last stage waits for the first one's first microbatch every step: it gets less work
    assert last < first and (last + first / 4) == pytest.approx(first, rel=0.15)
    first_plain, last_plain = (p.cost_s for p in plain.parts)
    assert last_plain / first_plain > last / first
    _close_to_eager(gm, ctx, model, inputs, 2)


def test_microbatches_only_matter_for_contiguous_pipelines():
    model, inputs = Layers(), (torch.randn(64, 256),)
    a = _partition(model, inputs, k=2)[2]
    b = _partition(model, inputs, k=2, microbatches=4)[2]
    assert b.step_imbalance is None and [p.nodes for p in a.parts] == [p.nodes for p in b.parts]
    with pytest.raises(Exception, match="microbatches must be a non-negative integer"):
        _partition(model, inputs, k=2, contiguous=True, microbatches=-1)


def test_a_split_that_moves_the_outputs_is_refused_and_the_graph_kept(monkeypatch):
    import autoglm.passes.partition.partition as partition_module

    real = partition_module._reannotate

    def drifting(gm, ctx):  # the split copy's outputs off by far more than fp32 rounding
        return tuple(o + 1.0 for o in real(gm, ctx))

    monkeypatch.setattr(partition_module, "_reannotate", drifting)
    torch.manual_seed(0)
    model, inputs = HeavyMiddle(), (torch.randn(32, 32),)
    gm, ctx = capture_for_test(model, inputs)
    names = [n.name for n in gm.graph.nodes]
    Partition(k=2).run(gm, ctx)
    plan = ctx.notes["partition"]["plan"]
    assert not plan.splits and "beyond fp32 tolerance" in plan.split_refused
    assert [n.name for n in gm.graph.nodes] == names  # the graph was not touched
    _close_to_eager(gm, ctx, model, inputs, 2)


def test_batched_matmul_balance_splits_use_contiguous_slices():
    from autoglm.passes.partition.refine import build_unit_graph
    from autoglm.passes.partition.split import balance_splits

    class Scores(nn.Module):
        def forward(self, a, b):
            return torch.relu(a) @ b

    a, b = torch.randn(6, 4, 64, 32), torch.randn(6, 4, 32, 64)
    gm, ctx = capture_for_test(Scores(), (a, b))
    splits = balance_splits(gm, build_unit_graph(gm, ctx.cost.node_cost), 2, 1.10, ctx.cost.node_cost)
    assert splits and all(c.how == "matmul_batch" and c.dim == 0 for _, c, _ in splits)
