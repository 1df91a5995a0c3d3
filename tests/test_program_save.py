"""Saving and loading a Program (data-dependent branches): compiled paths round-trip, new paths say so."""
import json

import pytest
import torch

import autoglm
from autoglm.artifacts.directory import ArtifactError
from autoglm.program.program import Program
from autoglm.program.io import LoadedProgram, PathNotSavedError
from tests.test_branches import EarlyReturn, LoopBranch, Nested, TwoWay, _inputs, _seeded


def _compile_and_cover(model, inputs):
    cm = autoglm.compile(model, (inputs[0],))
    assert isinstance(cm, Program)
    for x in inputs:
        cm(x)
    return cm


@pytest.mark.parametrize("factory, seed", [(TwoWay, 0), (Nested, 0), (LoopBranch, 2), (EarlyReturn, 0)])
def test_saved_program_runs_every_compiled_path_like_eager(factory, seed, tmp_path):
    model = _seeded(factory(), seed)
    xs = _inputs(60)
    cm = _compile_and_cover(model, xs)
    cm.save(tmp_path / "prog")
    assert not (tmp_path / "prog" / "code.py").exists()  # a program, not one graph
    loaded = autoglm.load(tmp_path / "prog")
    assert isinstance(loaded, LoadedProgram)
    assert sorted(map(repr, loaded.paths())) == sorted(map(repr, cm.paths()))
    for x in xs:  # every input takes a compiled path: outputs (and their structure) as eager
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.stats.replans == 0 and loaded.stats.calls == len(xs)
    # the per-branch statistics work on the loaded tree too
    assert sum(sum(bp.outcomes.values()) for bp in loaded.stats.branch_points.values()) > 0


def test_a_path_not_compiled_before_saving_is_a_clear_error(tmp_path):
    model = _seeded(TwoWay())
    xs = _inputs(60)
    taken = {}
    for x in xs:
        model.log.clear()
        model(x)
        taken.setdefault(tuple(model.log), x)
    assert len(taken) == 2
    (first, x_first), (_, x_other) = taken.items()
    cm = autoglm.compile(model, (x_first,))  # only the first path is compiled
    cm.save(tmp_path / "prog")
    loaded = autoglm.load(tmp_path / "prog")
    torch.testing.assert_close(loaded(x_first), model(x_first))
    with pytest.raises(PathNotSavedError, match="not compiled before the program was saved"):
        loaded(x_other)


def test_saving_is_atomic_and_a_broken_program_file_is_refused(tmp_path):
    model = _seeded(TwoWay())
    cm = _compile_and_cover(model, _inputs(20))
    target = tmp_path / "prog"
    cm.save(target)
    cm.save(target)  # replaces the directory as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog"]
    doc = json.loads((target / "program.json").read_text())
    doc["segments"][1]["parent"] = 99
    (target / "program.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="segment 1 is malformed"):
        autoglm.load(target)
    (target / "program.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid autoglm program"):
        autoglm.load(target)


def test_partitioned_program_round_trips(tmp_path):
    model = _seeded(LoopBranch(), seed=2)
    xs = _inputs(40)
    cm = autoglm.compile(model, (xs[0],), devices=["cpu", "cpu"])
    for x in xs:
        cm(x)
    cm.save(tmp_path / "prog")
    loaded = autoglm.load(tmp_path / "prog")
    for x in xs:
        torch.testing.assert_close(loaded(x), model(x))
    for leaf in loaded.cache.leaves():
        assert "partition" in [r["name"] for r in leaf.payload.records]


class SizeAcrossBranch(torch.nn.Module):
    """A size read before a data-dependent branch and used after it (mobilevit-style resizing):
    the segment after the branch takes a Python int as an input (issue #17 item 5)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h = x.shape[-1]
        y = self.conv(x)
        y = y * 2 if y.mean() > 0 else y - 1
        return torch.nn.functional.interpolate(y, size=(h * 2, h * 2))


def test_a_segment_taking_a_size_saves_and_reloads_in_a_fresh_process(tmp_path):
    from tests.fresh_process import assert_loads_like_eager

    model = _seeded(SizeAcrossBranch())
    xs = [torch.randn(1, 3, 8, 8), -torch.ones(1, 3, 8, 8)]
    cm = _compile_and_cover(model, xs)
    cm.save(tmp_path / "prog")
    assert_loads_like_eager(tmp_path, "prog", model, xs)
