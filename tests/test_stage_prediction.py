"""Stage-time prediction (autoglm.cost.stage_time): what a prediction is built from, not how fast anything runs."""
import copy
import math

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.cost.model import CostModel
from autoglm.ir.meta import annotation, iter_compute_nodes
import autoglm.cost.stage_time as stage_time
from autoglm.cost.stage_time import DispatchCalibration, calibrate_dispatch, predict_stage_times, time_in_context


def _partitioned(batch: int = 4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    x = torch.randn(batch, 16)
    cm = autoglm.compile(model, (x,), passes="partition(k=2,contiguous=True)", devices=["cpu", "cpu"])
    return cm.graph_module, x


def _stage_nodes(gm, prediction):
    return [n for n in iter_compute_nodes(gm.graph) if annotation(n).partition == prediction.partition]


def test_measured_prediction_is_the_sum_of_node_latencies_plus_calibrated_overhead():
    gm, _ = _partitioned()
    nodes = list(iter_compute_nodes(gm.graph))
    for i, n in enumerate(nodes):  # distinct known latencies: the prediction must add exactly these
        annotation(n).latency_s = (i + 1) * 1e-3
    cal = DispatchCalibration(per_op_s=2e-6, per_call_s=5e-6, per_module_s=7e-6)
    preds = predict_stage_times(gm, None, microbatches=3, cost="measured", calibration=cal)
    assert [p.stage for p in preds] == [0, 1]
    assert sum(p.nodes for p in preds) == len(nodes)
    for p in preds:
        mine = _stage_nodes(gm, p)
        assert p.nodes == len(mine) > 0
        assert math.isclose(p.node_s, sum(annotation(n).latency_s for n in mine), rel_tol=1e-12)
        modules = sum(n.op == "call_module" for n in mine)
        assert math.isclose(p.overhead_s, 5e-6 + 2e-6 * len(mine) + 7e-6 * modules, rel_tol=1e-12)
        assert math.isclose(p.per_step_s, 3 * (p.node_s + p.overhead_s), rel_tol=1e-12)


def test_analytic_prediction_ignores_measured_latencies():
    gm, _ = _partitioned()
    for n in iter_compute_nodes(gm.graph):
        annotation(n).latency_s = 1.0  # absurd: must not leak into an analytic prediction
    analytic = CostModel("analytic")
    for p in predict_stage_times(gm, None, microbatches=1, cost="analytic"):
        expected = sum(analytic.analytic(n) for n in _stage_nodes(gm, p))
        assert math.isclose(p.node_s, expected, rel_tol=1e-12)
        assert p.node_s < p.nodes * 1.0
        assert p.overhead_s == 0.0  # no calibration given


def test_microbatch_inputs_are_timed_on_a_copy_at_microbatch_shape():
    gm, x = _partitioned(batch=4)
    before = {n.name: (annotation(n).latency_s, [s.shape for s in annotation(n).outputs])
              for n in iter_compute_nodes(gm.graph)}
    mb = x[:2]
    session = CostModel("measured")
    preds = predict_stage_times(gm, [mb], microbatches=2, cost=session, timing="isolated")
    # the caller's graph keeps its own annotations (shapes at the compile batch)
    after = {n.name: (annotation(n).latency_s, [s.shape for s in annotation(n).outputs])
             for n in iter_compute_nodes(gm.graph)}
    assert after == before
    # timings are cached by op and shape on the cost model: timing a fresh copy at the same
    # shape with it gives the very latencies the prediction was built from
    again = copy.deepcopy(gm)
    session.measure(again, [mb])
    first = next(iter_compute_nodes(again.graph)).name
    assert [n for n in iter_compute_nodes(again.graph)][0].meta["autoglm"].outputs[0].shape[0] == 2
    assert before[first][1][0][0] == 4
    for p in preds:
        mine = [n for n in iter_compute_nodes(again.graph) if annotation(n).partition == p.partition]
        assert p.node_s > 0
        assert math.isclose(p.node_s, sum(annotation(n).latency_s for n in mine), rel_tol=1e-12)


def test_calibration_is_finite_and_checks_its_arguments():
    cal = calibrate_dispatch(short=6, long=60, repeats=3, rounds=5)
    assert all(math.isfinite(v) for v in (cal.per_op_s, cal.per_call_s, cal.per_module_s))
    # a correction of a millisecond per op would be a broken fit
    assert abs(cal.per_op_s) < 1e-3 and abs(cal.per_module_s) < 1e-3
    with pytest.raises(ValueError, match="short"):
        calibrate_dispatch(short=10, long=5)


def test_bad_microbatches_is_a_clear_error():
    gm, _ = _partitioned()
    with pytest.raises(ValueError, match="microbatches"):
        predict_stage_times(gm, None, microbatches=0)


def test_in_context_timing_times_every_compute_node_and_feeds_the_prediction(monkeypatch):
    gm, x = _partitioned(batch=4)
    timed = time_in_context(gm, [x[:2]], runs=3, warmup=1)
    assert set(timed) == set(iter_compute_nodes(gm.graph)) and all(t > 0 for t in timed.values())
    # the prediction adds exactly what in-context timing measured (distinct values per node)
    names = [n.name for n in iter_compute_nodes(gm.graph)]
    fake = {name: (i + 1) * 1e-3 for i, name in enumerate(names)}
    monkeypatch.setattr(stage_time, "time_in_context", lambda g, inputs, runs: {n: fake[n.name] for n in iter_compute_nodes(g.graph)})
    preds = predict_stage_times(gm, [x[:2]], microbatches=1)
    assert sum(p.node_s for p in preds) == pytest.approx(sum(fake.values()), rel=1e-12)
    for p in preds:
        assert p.node_s == pytest.approx(sum(fake[n.name] for n in _stage_nodes(gm, p)), rel=1e-12)


def test_calibration_must_match_the_timing_method():
    gm, x = _partitioned()
    cal = DispatchCalibration(0.0, 0.0, 0.0, timing="isolated")
    with pytest.raises(ValueError, match="corrects 'isolated' timings"):
        predict_stage_times(gm, [x[:2]], calibration=cal)
    with pytest.raises(ValueError, match="timing must be one of"):
        predict_stage_times(gm, [x[:2]], timing="sometimes")
