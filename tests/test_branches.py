"""Branch-aware capture and run-time re-planning (issue 3).

Every model here branches on tensor values (or shapes). For each: >= 200 random
inputs that between them take every path give outputs ``assert_close`` to eager,
and the number of re-plans equals the number of distinct paths taken (the
paths eager took, recorded independently of the compiler).
"""
from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.program.program import Program
from autoglm.runtime.replan import GuardFailure, PlanLimitError
from examples.branching import TopKExperts

D = 8
N_INPUTS = 200


def _taken(cond, log: list):
    """Eager: record the branch outcome. Traced: cond is a Proxy, pass it through."""
    if isinstance(cond, torch.Tensor):
        log.append(bool(cond))
    return cond


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    return model.eval()


class TwoWay(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.a, self.b = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.log: list = []

    def forward(self, x):
        h = torch.relu(self.fc(x)) - 0.3
        if _taken(h.sum() > 0, self.log):
            h = self.a(h)
        else:
            h = self.b(h) * 2
        return h


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, D)
        self.heads = nn.ModuleList(nn.Linear(D, D) for _ in range(4))
        self.log: list = []

    def forward(self, x):
        h = self.fc(x)
        if _taken(h.sum() > 0, self.log):
            if _taken(h.max() > 2.0, self.log):
                return self.heads[0](h)
            return self.heads[1](h)
        if _taken(h.min() < -2.0, self.log):
            return self.heads[2](h)
        return self.heads[3](h)


class LoopBranch(nn.Module):
    """A branch inside a loop of fixed trip count (3): up to 8 paths."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(D, D), nn.Linear(D, D)
        self.log: list = []

    def forward(self, x):
        h = x
        for i in range(3):
            if _taken((h[:, i] + x[:, i]).sum() > 0, self.log):
                h = torch.tanh(self.up(h))
            else:
                h = torch.tanh(self.down(h)) + 0.1
        return h


class EarlyReturn(nn.Module):
    """Returns early (a different output structure) on one path."""

    def __init__(self):
        super().__init__()
        self.fc, self.extra = nn.Linear(D, D), nn.Linear(D, D)
        self.log: list = []

    def forward(self, x):
        h = self.fc(x)
        if _taken(h.mean() > 0, self.log):
            return h
        g = self.extra(h)
        return {"h": h, "g": g}


class ShapeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.small, self.big = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x):
        if x.shape[0] > 8:
            return self.big(x).mean(0)
        return self.small(x).sum(0)


class ContextMemory(nn.Module):
    """Keeps the last 3 hidden states in a buffer and fuses them into the next input."""

    def __init__(self):
        super().__init__()
        self.fuse, self.pos, self.neg = nn.Linear(2 * D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.register_buffer("memory", torch.zeros(3, D))

    def forward(self, x):
        context = self.memory.mean(0, keepdim=True).expand_as(x)
        h = torch.tanh(self.fuse(torch.cat([x, context], dim=-1)))
        if h.sum() > 0:
            h = self.pos(h)
        else:
            h = self.neg(h)
        self.memory.copy_(torch.cat([self.memory[1:], h.mean(0, keepdim=True)], dim=0))
        return h


class CondModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: torch.relu(self.a(t)), lambda t: self.b(t) - 1.0, (x,))


def _inputs(n: int = N_INPUTS, batch: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, D, generator=g) * (0.5 + 2.0 * torch.rand(1, generator=g)) for _ in range(n)]


def _parity_with_logged_paths(model: nn.Module, n_paths: int) -> Program:
    """Compile, run N_INPUTS inputs, check outputs, every path taken, one re-plan per path."""
    xs = _inputs()
    cm = autoglm.compile(model, (xs[0],))
    assert isinstance(cm, Program)
    taken = set()
    for x in [xs[0]] + xs:
        model.log.clear()
        want = model(x)
        taken.add(tuple(model.log))
        torch.testing.assert_close(cm(x), want)
    assert len(taken) == n_paths, f"inputs took {sorted(taken)}; the test must exercise every path"
    assert set(cm.paths()) == taken
    assert cm.stats.replans == len(taken) == cm.stats.paths
    return cm


def test_two_way_branch():
    cm = _parity_with_logged_paths(_seeded(TwoWay()), 2)
    (bp,) = cm.stats.branch_points.values()
    assert "if _taken(h.sum() > 0" in bp.source and "test_branches.py" in bp.source
    assert bp.predicate.startswith("gt(")
    assert sum(bp.outcomes.values()) + bp.misses == N_INPUTS + 2  # + the compile-time example call
    assert bp.misses == 2 and bp.replans == 1 and bp.replan_s > 0
    assert "hits" in str(cm.stats) and "re-plans" in cm.summary()


def test_prefix_runs_once_and_is_shared():
    model = _seeded(TwoWay())
    cm = autoglm.compile(model, (torch.randn(4, D),))
    for x in _inputs(40):
        cm(x)
    root = cm.cache.root
    assert len(root.children) == 2
    root_targets = [n.target for n in root.payload.graph_module.graph.nodes if n.op == "call_module"]
    assert root_targets == ["model.fc"]
    for child in root.children.values():  # the paths read fc's output, they never call fc again
        targets = [n.target for n in child.payload.graph_module.graph.nodes if n.op == "call_module"]
        assert "model.fc" not in targets
        assert child.imports


def test_nested_branches():
    _parity_with_logged_paths(_seeded(Nested(), seed=3), 4)


def test_branch_inside_fixed_loop():
    cm = _parity_with_logged_paths(_seeded(LoopBranch(), seed=2), 8)
    (bp,) = cm.stats.branch_points.values()  # one source line, three dynamic branch points per call
    assert sum(bp.outcomes.values()) + bp.misses == 3 * (N_INPUTS + 2)


def test_early_return_changes_output_structure():
    model = _seeded(EarlyReturn())
    cm = _parity_with_logged_paths(model, 2)
    outs = {type(cm(x)).__name__ for x in _inputs(30)}
    assert outs == {"Tensor", "dict"}


def test_top2_of_4_experts_membership():
    model = _seeded(TopKExperts(D), seed=4)
    xs = _inputs()
    cm = autoglm.compile(model, (xs[0],))
    chosen = set()
    for x in [xs[0]] + xs:
        with torch.no_grad():
            top = torch.topk(torch.softmax(model.gate(x).mean(0), -1), 2).indices.tolist()
        chosen.add(frozenset(top))
        torch.testing.assert_close(cm(x), model(x))
    assert len(chosen) == 6, f"inputs chose only {chosen}; need every pair of 4 experts"
    assert cm.stats.replans == len(chosen)
    assert {frozenset(i for i, b in enumerate(p[1:]) if b) for p in cm.paths()} == chosen
    kinds = sorted(b.kind for b in cm.stats.branch_points.values())
    assert kinds == ["bool", "len"]  # `i in top_k_indices` (one guard each) and enumerate(scores)


def test_shape_branch_is_a_guard_on_the_input_signature():
    model = _seeded(ShapeBranch())
    g = torch.Generator().manual_seed(5)
    cm = autoglm.compile(model, (torch.randn(4, D),))
    sizes = [int(torch.randint(1, 17, (1,), generator=g)) for _ in range(N_INPUTS)]
    for b in sizes:
        x = torch.randn(b, D, generator=g)
        torch.testing.assert_close(cm(x), model(x))
    (bp,) = cm.stats.branch_points.values()
    assert bp.kind == "shape" and "shape" in bp.predicate
    assert cm.stats.replans == 2 == len({b > 8 for b in sizes + [4]})


def test_stateful_buffer_update_matches_eager_sequence():
    model = _seeded(ContextMemory(), seed=6)
    cm = autoglm.compile(model, (torch.randn(4, D),))
    reference = copy.deepcopy(model)  # same weights, same memory as after compile
    assert torch.equal(reference.memory, model.memory)
    for x in _inputs(seed=7):
        torch.testing.assert_close(cm(x), reference(x))
    torch.testing.assert_close(model.memory, reference.memory)
    assert cm.stats.replans == 2


@pytest.fixture(scope="module")
def cond_compiled():
    model = _seeded(CondModel())
    return model, autoglm.compile(model, (torch.randn(4, D),))  # export (dynamo) takes seconds: once


def test_torch_cond_through_export(cond_compiled):
    model, cm = cond_compiled
    assert cm.frontend == "export" and not isinstance(cm, Program)
    assert "Expected pred to be bool or tensor" in cm.notes["frontend_reasons"]["symbolic"]
    assert any("cond" in str(n.target) for n in cm.graph_module.graph.nodes)
    signs = set()
    # no_grad: with grad on, torch 2.13 runs cond's autograd path (~60 ms a call, eager alike)
    with torch.no_grad():
        for x in _inputs():
            signs.add(bool(x.sum() > 0))
            torch.testing.assert_close(cm(x), model(x))
    assert signs == {True, False}
    cond_node = next(n for n in cm.graph_module.graph.nodes if "cond" in str(n.target))
    assert cond_node.meta["autoglm"].flops > 0  # annotated through the branch it took


def test_torch_cond_save_and_load(cond_compiled, tmp_path):
    model, cm = cond_compiled
    cm.save(tmp_path / "cond")
    loaded = autoglm.load(tmp_path / "cond")
    with torch.no_grad():
        for x in _inputs(20):
            torch.testing.assert_close(loaded(x), model(x))


def test_concurrent_calls_compile_each_path_once():
    model = _seeded(TopKExperts(D), seed=4)
    xs = _inputs(120, seed=8)
    with torch.no_grad():
        wants = [model(x) for x in xs]  # eager before the threads: tracing patches nn.Module globally
        paths = {frozenset(torch.topk(torch.softmax(model.gate(x).mean(0), -1), 2).indices.tolist()) for x in xs}
    cm = autoglm.compile(model, (xs[0],))
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(offset, len(xs), 4):
                torch.testing.assert_close(cm(xs[i]), wants[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cm.stats.replans == cm.stats.paths == len(paths)  # xs[0], the compile example, is in xs
    assert cm.stats.calls == len(xs) + 1


def test_plan_limit_error_is_raised_and_counted():
    model = _seeded(LoopBranch(), seed=2)
    cm = autoglm.compile(model, (torch.randn(4, D),), max_plans=2, on_limit="error")
    with pytest.raises(PlanLimitError, match="max_plans=2"):
        for x in _inputs(100):
            cm(x)
    assert cm.stats.paths == 2 and cm.stats.limit_events == 1


def test_plan_limit_eager_runs_uncompiled_and_says_so():
    model = _seeded(LoopBranch(), seed=2)
    cm = autoglm.compile(model, (torch.randn(4, D),), max_plans=2, on_limit="eager")
    with pytest.warns(RuntimeWarning, match="plan cache full"):
        for x in _inputs(60):
            torch.testing.assert_close(cm(x), model(x))
    assert cm.stats.paths == 2
    assert cm.stats.limit_events == cm.stats.uncached_calls > 0
    assert "limit events" in str(cm.stats)


def test_bad_limit_options_are_clear_errors():
    with pytest.raises(ValueError, match="on_limit"):
        autoglm.compile(_seeded(TwoWay()), (torch.randn(4, D),), on_limit="ignore")
    with pytest.raises(ValueError, match="max_plans"):
        autoglm.compile(_seeded(TwoWay()), (torch.randn(4, D),), max_plans=0)


def test_path_graph_guards_its_path():
    model = _seeded(TwoWay())
    x = torch.randn(4, D)
    cm = autoglm.compile(model, (x,))
    gm = cm.graph_module
    torch.testing.assert_close(gm(x)[0], model(x))
    model.log.clear()
    model(x)
    first = model.log[-1]
    for other in _inputs(50):
        model(other)
        if model.log[-1] != first:
            break
    with pytest.raises(GuardFailure, match="leaves this path"):
        gm(other)


def test_partitioned_paths_each_get_their_own_plan():
    from autoglm.passes import REGISTRY

    if "partition" not in REGISTRY:
        pytest.skip("partition pass not registered in this build")
    model = _seeded(LoopBranch(), seed=2)
    cm = autoglm.compile(model, (torch.randn(4, D),), devices=["cpu", "cpu"])
    for x in _inputs(60):
        torch.testing.assert_close(cm(x), model(x))
    assert cm.stats.paths >= 2
    for leaf in cm.cache.leaves():  # each path's last segment got its own partition plan
        assert "partition" in [r.name for r in leaf.payload.records]


def test_calibration_reaches_every_segment_of_a_branching_model():
    """Static int8 of a branching model is calibrated on the user's data, segment by segment."""
    from examples.branching import TopKExperts

    torch.manual_seed(0)
    model = TopKExperts(16, k=4, top=2).eval()
    x = torch.randn(8, 16)
    calibration = [(torch.randn(8, 16),) for _ in range(6)] + [(x,)]
    cm = autoglm.compile(model, (x,), passes="quantize(mode=static, progress=False)", calibration=calibration)
    seen = [r.notes.get("calibration_batches") for r in cm.records if r.name == "quantize"]
    counts = cm.notes["segment_calibration_samples"]
    assert seen and len(counts) == len(seen)
    assert counts[0] == len(calibration)  # the root segment sees every sample
    assert all(c >= 1 for c in counts)  # x itself takes the compiled path, so every segment sees it
    # segments with a Linear to quantize were calibrated on exactly the samples that reached them
    assert [c for s, c in zip(seen, counts) if s is not None] == [s for s in seen if s is not None]
    assert sum(s is not None for s in seen) >= 2


def test_every_compiled_object_is_a_compiled_without_name_only_inheritance(tmp_path):
    from autoglm.driver.compiled import Compiled, CompiledModel
    from autoglm.program.program import Program

    class Sign(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    x = torch.randn(4, 8)
    program = autoglm.compile(Sign(), (x,), passes="none")
    assert isinstance(program, Program) and not isinstance(program, CompiledModel)
    program.save(tmp_path / "p")
    for obj in (program, autoglm.load(tmp_path / "p"), autoglm.compile(torch.nn.Linear(8, 8), (x,))):
        assert isinstance(obj, Compiled)
        assert obj.summary() and obj.records is not None
