"""What a new user met in the report (issue #20), one test per finding: each fails on the old report."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn as nn

import autoglm
from autoglm.ir.meta import annotation, has_annotation, iter_compute_nodes
from autoglm.passes import REGISTRY
from autoglm.report import build_report_data, write_report
from autoglm.report.charts import CHAR_W, bar_chart
from autoglm.report.fmt import fmt_value
from autoglm.report.reproduce import reproduce
from autoglm.report.views import build_views
from examples.models import small_transformer

needs = pytest.mark.skipif(not {"partition", "quantize"} <= set(REGISTRY), reason="partition/quantize not registered")


@pytest.fixture(scope="module")
def partitioned_int8():
    torch.set_num_threads(1)
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="partition(k=2),quantize(mode=dynamic,progress=False)",
                         devices=["cpu", "cpu"])
    return cm, model, inputs


@needs
def test_partitions_survive_quantize(partitioned_int8):
    cm, _, _ = partitioned_int8
    compute = list(iter_compute_nodes(cm.graph_module.graph))
    assert all(annotation(n).partition is not None for n in compute), "int8 nodes lost their partition"
    assert "invalidated" not in cm.notes and cm.plan is not None  # the plan still describes the graph
    planned = {name for part in cm.plan.parts for name in part.nodes}
    assert {n.name for n in compute} == planned
    data = build_report_data(cm)
    # The partition table covers the whole graph: its costs add up to the graph's.
    assert sum(r["cost_s"] for r in data["partitions"]["rows"]) == pytest.approx(data["summary"]["cost_s"])
    assert all(n["partition"] is not None for n in data["nodes"] if "int8" in n["marks"])


@needs
def test_int8_nodes_count_their_multiply_adds(partitioned_int8):
    cm, _, _ = partitioned_int8
    data = build_report_data(cm, {})
    int8 = [n for n in data["nodes"] if n["op"] == "call_module" and (n["tags"].get("int8") or {}).get("kind") in
            ("linear", "conv2d") and n["tags"]["int8"].get("status") == "int8"]
    assert int8 and all(n["flops"] > 0 for n in int8), [(n["id"], n["flops"]) for n in int8]
    # Same work as the fp32 graph: quantizing changes the arithmetic's type, not its amount.
    assert data["summary"]["flops"] == data["captured"]["summary"]["flops"] > 0


def test_grouped_nodes_show_summed_flops_and_a_readable_label(tmp_path):
    nodes = [{"id": f"v{i}", "index": i, "op": "call_function", "target": "aten.linear.default" if i % 3 else
              "aten.add.Tensor", "module": "", "inputs": [f"v{i - 1}"] if i else [], "flops": 10, "bytes_read": 4,
              "bytes_written": 4, "cost_s": 1e-6, "param_bytes": 0, "out_bytes": 4, "partition": None, "marks": [],
              "created_by": "capture"} for i in range(200)]
    groups = build_views(nodes, {})["groups"]
    assert groups and all("linear×" in g["label"] and not g["label"].startswith("ops ") for g in groups)
    assert sum(g["flops"] for g in groups) == 2000 and all(g["bytes"] > 0 for g in groups)


@pytest.mark.skipif("split_merge" not in REGISTRY, reason="split_merge not registered")
def test_after_split_merge_fused_nodes_stay_in_their_blocks(tmp_path):
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="split_merge")
    out = write_report(cm, tmp_path / "r.html", measure=False)
    data = json.loads(out.with_suffix(".json").read_text())
    fused = [n for n in data["nodes"] if n["target"].startswith("fused_")]
    assert fused and any(n["module"].startswith("layers.") for n in fused)
    root = next(v for v in data["graph"]["views"] if v["id"] == "root")
    assert len(root["items"]) < 30  # the blocks still collapse; no "ops 1-47" chunks at the top
    text = out.read_text()
    assert "0FLOP" not in text and "FLOPs" in text
    for g in data["graph"]["groups"]:
        assert g["flops"] == sum(n["flops"] for n in data["nodes"] if n["id"] in _members(data, g["id"]))


def _members(data, gid):
    groups = {g["id"]: g for g in data["graph"]["groups"]}
    out = set()
    for view in data["graph"]["views"]:
        chain, g = [], view["id"]
        while g != "root":
            chain.append(g)
            g = groups[g]["parent"]
        if gid in chain or view["id"] == gid:
            out |= {i[2:] for i in view["items"] if i.startswith("n:")}
    return out


def test_chart_labels_fit_their_chart():
    labels = [f"model.encoder.layer.{i}.attention.self.query_with_a_long_name" for i in range(12)]
    svg = bar_chart([(label, 30.0 + i) for i, label in enumerate(labels)], lambda v: f"{v:.1f} dB",
                    title="SQNR per layer, int8 vs fp32 (dB, higher is better)")
    width = float(re.search(r'viewBox="0 0 ([\d.]+)', svg).group(1))
    for m in re.finditer(r'<text class="bar-label" x="([\d.]+)"[^>]*>([^<]*)</text>', svg):
        assert float(m.group(1)) - len(m.group(2)) * CHAR_W >= 0, m.group(2)  # right-aligned at x
    assert "…layer.11.attention.self.query_with_a_long_name"[-20:] in svg  # the tail tells bars apart
    for m in re.finditer(r'<text class="bar-value" x="([\d.]+)"[^>]*>([^<]*)</text>', svg):
        assert float(m.group(1)) + len(m.group(2)) * CHAR_W <= width


class _Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        h = self.fc(x)
        return {"last_hidden_state": h, "pooler_output": h.mean(1)}


def test_outputs_are_named_by_the_model_output_structure(tmp_path):
    model = _Named().eval()
    cm = autoglm.compile(model, (torch.randn(2, 8),), passes="none")
    data = json.loads(write_report(cm, tmp_path / "r.html").with_suffix(".json").read_text())
    assert [r["output"] for r in data["accuracy"]["outputs"]] == ["last_hidden_state", "pooler_output"]


def test_times_are_never_in_scientific_notation(partitioned_int8, tmp_path):
    assert fmt_value("timings_us", {"fbgemm": 12345.6, "int_mm": 21.5}) == "{fbgemm: 12.3 ms, int_mm: 21.5 µs}"
    assert fmt_value("timed_at_rows", {"1": {"fbgemm": 21.5}}) == "{1: {fbgemm: 21.5 µs}}"
    assert "e-" not in fmt_value("x", 1.2e-5) and "e+" not in fmt_value("x", 12345.6)
    cm, _, _ = partitioned_int8
    text = write_report(cm, tmp_path / "r.html", measure=False).read_text()
    visible = re.sub(r"<(script|style)>.*?</\1>", "", text, flags=re.S)
    visible = re.sub(r"<[^>]+>", " ", visible)  # attributes (SVG coordinates) are not read by anyone
    assert not re.search(r"\d[eE][-+]\d", visible), re.search(r".{40}\d[eE][-+]\d.{20}", visible)


def test_reproduce_is_the_command_that_built_the_artifact():
    demo = reproduce({"source": {"kind": "demo"}, "effective_config": {"devices": ["cpu", "cpu"]}})
    assert demo["command"] == "autoglm demo --out autoglm-demo"
    effective = {"passes": [{"partition": {"k": 2}}], "devices": ["cpu", "cpu"], "frontend": "auto"}
    cli = reproduce({"source": {"kind": "hf", "model": "bert dir", "example_inputs": "in.json", "overrides": ["a=1"]},
                     "effective_config": effective, "passes": ["partition"]})
    assert cli["command"].startswith("autoglm compile 'bert dir' --example-inputs in.json --config autoglm-config.json")
    assert cli["config_file"] == effective and "--set" not in cli["command"]  # the config holds the overrides
    api = reproduce({"passes": ["partition(k=2)", "quantize"], "devices": ["cpu", "cpu"], "frontend": "export"})
    assert api["command"] == ("cm = autoglm.compile(model, example_inputs, passes='partition(k=2),quantize', "
                              "devices=['cpu', 'cpu'], frontend='export')")


@needs
def test_accuracy_latency_and_size_are_measured_by_default(partitioned_int8, tmp_path):
    cm, _, _ = partitioned_int8
    out = write_report(cm, tmp_path / "m.html")
    data = json.loads(out.with_suffix(".json").read_text())
    assert {r["variant"] for r in data["latency"]["rows"]} == {"eager", "autoglm"}
    assert data["latency"]["speedup_vs_eager"] > 0
    (acc,) = data["accuracy"]["outputs"]
    assert acc["output"] == "output" and acc["cosine"] > 0.99  # int8 vs the graph as captured
    text = out.read_text()
    assert "Not measured" not in text and "x eager" in text
    was = data["captured"]["summary"]["param_bytes"]
    assert data["summary"]["param_bytes"] < was and f"(was " in text  # int8 weights are smaller
    quiet = write_report(cm, tmp_path / "q.html", measure=False)
    assert json.loads(quiet.with_suffix(".json").read_text())["latency"] is None
    assert "Not measured" in quiet.read_text()


@needs
def test_the_page_has_navigation_and_a_before_after_view(partitioned_int8, tmp_path):
    cm, _, _ = partitioned_int8
    text = write_report(cm, tmp_path / "n.html", measure=False).read_text()
    for needle in ('data-action="zoom-in"', 'data-action="fit"', "addEventListener('wheel'", "pointermove",
                   'id="captured-views"', 'id="graph-views"', 'data-action="compare"', 'class="viewport"'):
        assert needle in text, needle
    assert 'id="cap-n-' in text and 'id="sec-quantization"' in text
    assert "http://" not in text and "https://" not in text  # self-contained
