"""HTML report and its JSON twin: content, structure, layout, and rendering in real headless Chromium."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import autoglm
from autoglm.ir.meta import annotation
from autoglm.passes import REGISTRY
from autoglm.report import ReportError, build_report_data, measure_against_eager, write_report
from autoglm.report.layout import LayoutItem, dot_available, layout_many, python_layout
from autoglm.report.views import MAX_DIRECT_NODES, build_views
from examples.models import bert_base_encoder, small_transformer


class _Page(HTMLParser):
    """Collects the graph's node/group elements (id, classes, hover title) and table rows by table class."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: dict[str, dict] = {}
        self.duplicates: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.urls: list[str] = []
        self._stack: list[tuple[str, str | None]] = []  # (tag, element id whose title we are in)
        self._title_for: str | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._badge_for: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("#"):
                self.urls.append(a[key])
        classes = (a.get("class") or "").split()
        if tag == "g" and "node" in classes:
            if a["id"] in self.elements:
                self.duplicates.append(a["id"])
            self.elements[a["id"]] = {"classes": classes, "title": "", "badges": []}
            self._stack.append((tag, a["id"]))
            return
        if tag == "text" and "badge" in classes:
            self._badge_for = next((i for _, i in reversed(self._stack) if i), None)
        if tag == "title" and self._stack and self._stack[-1][1]:
            self._title_for = self._stack[-1][1]
        if tag == "table" and classes:
            self._table = classes[0]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag in ("td", "th") and self._table:
            self._cell = []
        self._stack.append((tag, None))

    def handle_endtag(self, tag):
        if tag == "title":
            self._title_for = None
        if tag == "text":
            self._badge_for = None
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        if tag == "table":
            self._table = None
        while self._stack:
            top, _ = self._stack.pop()
            if top == tag:
                break

    def handle_data(self, data):
        if self._title_for:
            self.elements[self._title_for]["title"] += data
        if self._cell is not None:
            self._cell.append(data)
        if self._badge_for:
            self.elements[self._badge_for]["badges"].append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _devices_and_spec(*wanted: str) -> tuple[list[str], str, list[str]]:
    """The passes among ``wanted`` that are registered now (other engineers add them concurrently)."""
    from autoglm.passes.pipeline import resolve_passes
    from autoglm.passes.spec import SpecError

    used = []
    for w in wanted:
        if w.split("(")[0] not in REGISTRY:
            continue
        try:
            resolve_passes(w, ["cpu", "cpu"])
            used.append(w)
        except SpecError:  # the pass exists but spells its options differently: use its defaults
            used.append(w.split("(")[0])
    devices = ["cpu", "cpu"] if any(u.startswith("partition") for u in used) else ["cpu"]
    return devices, ",".join(used) or "none", used


@pytest.fixture(scope="module")
def small_cm():
    model, inputs = small_transformer()
    devices, spec, _ = _devices_and_spec("partition(k=2)")
    return autoglm.compile(model, inputs, passes=spec, devices=devices), model


def test_json_twin_has_the_facts_the_page_shows(small_cm, tmp_path):
    cm, _ = small_cm
    out = write_report(cm, tmp_path / "r" / "report.html")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    page = _parse(out)
    assert not page.duplicates
    assert not page.urls, f"report must not load anything: {page.urls}"
    # The twin is the same dict the page was drawn from.
    fresh = build_report_data(cm)
    for key in ("nodes", "passes", "partitions", "provenance", "summary"):
        assert data[key] == json.loads(json.dumps(fresh[key])), key
    # One element per node or collapsed group, and each node's hover shows its facts.
    groups = data["graph"]["groups"]
    after = {k: v for k, v in page.elements.items() if not k.startswith("cap-")}  # cap-: the graph as captured
    assert len(after) == len(data["nodes"]) + len(groups)
    for n in data["nodes"]:
        el = page.elements[f"n-{n['id']}"]
        assert n["id"] in el["title"] and f"created by: {n['created_by']}" in el["title"]
        if n["shape"]:
            assert f"shape: {n['shape']}" in el["title"] and f"dtype: {n['dtype']}" in el["title"]
    assert sum("group" in e["classes"] for e in after.values()) == len(groups) > 0
    assert len(page.elements) - len(after) == len(data["captured"]["nodes"]) + len(data["captured"]["graph"]["groups"])
    # Graph facts match the live graph.
    live = {n.name: annotation(n) for n in cm.graph_module.graph.nodes}
    assert {n["id"] for n in data["nodes"]} == set(live)
    for n in data["nodes"]:
        assert (n["flops"], n["partition"], n["created_by"]) == (live[n["id"]].flops, live[n["id"]].partition,
                                                                 live[n["id"]].created_by)
    # Passes table: one row per record, in order.
    rows = page.tables["passes"][1:] if "passes" in page.tables else []
    assert [r[0] for r in rows] == [r.name for r in cm.records]
    assert data["header"]["frontend"] == cm.frontend and data["header"]["command"].startswith("cm = autoglm.compile(")


@pytest.mark.skipif("partition" not in REGISTRY, reason="partition pass not registered yet")
def test_partition_table_matches_annotations(small_cm, tmp_path):
    cm, _ = small_cm
    out = write_report(cm, tmp_path / "report.html")
    data = json.loads(out.with_suffix(".json").read_text())
    cost: dict[int, float] = {}
    for n in cm.graph_module.graph.nodes:
        ann = annotation(n)
        if ann.partition is not None:
            cost[ann.partition] = cost.get(ann.partition, 0.0) + (ann.cost_s or 0.0)
    assert [r["partition"] for r in data["partitions"]["rows"]] == sorted(cost) == [0, 1]
    for r in data["partitions"]["rows"]:
        assert r["cost_s"] == pytest.approx(cost[r["partition"]])
    assert data["partitions"]["imbalance"] == pytest.approx(max(cost.values()) / (sum(cost.values()) / 2))
    assert data["partitions"]["cut_bytes"] > 0
    table = _parse(out).tables["partitions"]
    assert len(table) == 1 + len(cost)
    assert data["plan"] is not None


def test_views_place_every_node_group_and_edge_once(small_cm):
    cm, _ = small_cm
    data = build_report_data(cm)
    views, groups = data["graph"]["views"], {g["id"] for g in data["graph"]["groups"]}
    items = [i for v in views for i in v["items"]]
    assert sorted(items) == sorted([f"n:{n['id']}" for n in data["nodes"]] + list(groups))
    for v in views:
        own = set(v["items"])
        for e in v["edges"]:
            assert e["src"] in own and e["dst"] in own and e["src"] != e["dst"]
    # The encoder's layers collapse: the top view is small although the graph is not.
    root = next(v for v in views if v["id"] == "root")
    assert len(root["items"]) < len(data["nodes"]) / 3
    assert {g["path"] for g in data["graph"]["groups"]} >= {"layers.0", "layers.1", "layers.0.attn"}
    # An opened group shows where its values come from and go to (boundary ports).
    attn = next(g["id"] for g in data["graph"]["groups"] if g["path"] == "layers.0.attn")
    view = next(v for v in views if v["id"] == attn)
    assert view["inputs"] and view["outputs"]
    assert all(p["dst"] in view["items"] for p in view["inputs"])


def test_flat_graph_without_modules_is_chunked():
    nodes = [{"id": f"v{i}", "index": i, "op": "call_function", "module": "", "inputs": [f"v{i - 1}"] if i else [],
              "flops": 1, "cost_s": 1e-6, "param_bytes": 0, "out_bytes": 4, "partition": None, "marks": [],
              "created_by": "capture"} for i in range(500)]
    graph = build_views(nodes, {})
    root = next(v for v in graph["views"] if v["id"] == "root")
    assert len(root["items"]) <= MAX_DIRECT_NODES
    assert all(len(v["items"]) <= MAX_DIRECT_NODES for v in graph["views"])
    assert sum(len(v["edges"]) for v in graph["views"]) >= 499 - 0  # chain edges kept (some between chunks)


def _assert_no_overlap(layout, items):
    assert set(layout["nodes"]) == {it.id for it in items}
    rows: dict[float, list[dict]] = {}
    for box in layout["nodes"].values():
        rows.setdefault(round(box["y"], 3), []).append(box)
    for boxes in rows.values():
        boxes.sort(key=lambda b: b["x"])
        for a, b in zip(boxes, boxes[1:]):
            assert a["x"] + a["w"] / 2 <= b["x"] - b["w"] / 2 + 1e-6, (a, b)


def test_python_layout_has_no_overlaps_in_a_layer():
    rng = random.Random(0)
    items = [LayoutItem(f"v{i}", rng.choice([64.0, 120.0, 200.0]), 32.0) for i in range(300)]
    edges = [(f"v{rng.randrange(i)}", f"v{i}") for i in range(1, 300) for _ in range(rng.choice([1, 1, 2]))]
    edges.append(("v250", "v10"))  # a back edge (cycle through a re-used group) must not break it
    layout = python_layout(items, edges)
    _assert_no_overlap(layout, items)
    assert len({round(b["y"], 3) for b in layout["nodes"].values()}) > 5
    for e in layout["edges"]:  # edges start at the source box and end at the target box
        src, dst = layout["nodes"][e["src"]], layout["nodes"][e["dst"]]
        assert abs(e["points"][0][0] - src["x"]) < 1e-6 and abs(e["points"][-1][0] - dst["x"]) < 1e-6


def test_report_layout_of_encoder_views_has_no_overlaps(small_cm):
    cm, _ = small_cm
    data = build_report_data(cm)
    for view in data["graph"]["views"]:
        items = [LayoutItem(i, 90.0, 32.0) for i in view["items"]]
        _assert_no_overlap(python_layout(items, [(e["src"], e["dst"]) for e in view["edges"]]), items)


@pytest.mark.skipif(not dot_available(), reason="Graphviz dot not installed (apt-get install graphviz)")
def test_dot_and_python_layouts_have_the_same_structure(small_cm, tmp_path):
    items = [LayoutItem(f"v{i}", 80.0, 30.0) for i in range(6)]
    edges = [("v0", "v1"), ("v0", "v2"), ("v1", "v3"), ("v2", "v3"), ("v3", "v4"), ("v0", "v5")]
    dot, py = layout_many([(items, edges)], "dot")[0], layout_many([(items, edges)], "python")[0]
    assert (dot["engine"], py["engine"]) == ("dot", "python")
    for key in ("width", "height", "nodes", "edges"):
        assert key in dot and key in py
    assert set(dot["nodes"]) == set(py["nodes"])
    assert {(e["src"], e["dst"]) for e in dot["edges"]} == {(e["src"], e["dst"]) for e in py["edges"]} == set(edges)
    cm, _ = small_cm
    a = _parse(write_report(cm, tmp_path / "dot.html", layout="dot"))
    b = _parse(write_report(cm, tmp_path / "py.html", layout="python"))
    assert set(a.elements) == set(b.elements)


def test_marks_partition_colours_and_provenance_are_drawn(tmp_path):
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="none")
    linear = next(n for n in cm.graph_module.graph.nodes if n.op == "call_module" and "fc1" in str(n.target))
    ann = annotation(linear)
    ann.tags["int8"] = {"scheme": "dynamic"}
    ann.tags["split"] = {"shards": 2}
    ann.created_by = "quantize"
    ann.partition = 1
    out = write_report(cm, tmp_path / "marks.html", layout="python")
    el = _parse(out).elements[f"n-{linear.name}"]
    assert "created" in el["classes"] and el["badges"] == ["S", "8"]
    assert "partition: 1" in el["title"] and "created by: quantize" in el["title"]
    text = out.read_text()
    assert 'fill="#E69F00"' in text  # partition 1's colour
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["provenance"]["quantize"] == 1
    group = next(g for g in data["graph"]["groups"] if g["path"] == "layers.0")
    assert group["marks"] == {"split": 1, "int8": 1} and group["created_by"] == {"quantize": 1}


def test_eager_comparison_fills_accuracy_and_latency(tmp_path):
    model, inputs = small_transformer()
    cm = autoglm.compile(model, inputs, passes="none")
    extra = measure_against_eager(cm, model, repeats=3, warmup=1)
    assert {r["variant"] for r in extra["latency"]["rows"]} == {"eager", "autoglm"}
    assert all(r["median_s"] > 0 for r in extra["latency"]["rows"])
    (acc,) = extra["accuracy"]["outputs"]
    assert acc["assert_close"] is True and acc["max_abs_error"] < 1e-4
    out = write_report(cm, tmp_path / "m.html", extra={**extra, "note": {"dataset": "synthetic"}})
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["latency"]["rows"][0]["variant"] == "eager"
    assert data["accuracy"]["outputs"][0]["sqnr_db"] in ("inf",) or data["accuracy"]["outputs"][0]["sqnr_db"] > 60
    text = out.read_text()
    assert "median latency" in text and "autoglm" in text and "synthetic" in text


def test_bad_paths_and_failed_renders_leave_nothing(small_cm, tmp_path, monkeypatch):
    cm, _ = small_cm
    with pytest.raises(ReportError, match="is a directory"):
        write_report(cm, tmp_path)
    with pytest.raises(TypeError, match="CompiledModel"):
        write_report(object(), tmp_path / "x.html")
    with pytest.raises(TypeError, match="extra must be a dict"):
        write_report(cm, tmp_path / "x.html", extra=[1])

    import autoglm.report.html as page_mod

    def boom(*_a, **_k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(page_mod, "render_page", boom)
    with pytest.raises(RuntimeError):
        write_report(cm, tmp_path / "sub" / "broken.html")
    assert not list((tmp_path / "sub").iterdir())


def test_report_of_a_loaded_artifact(small_cm, tmp_path):
    cm, _ = small_cm
    cm.save(tmp_path / "art")
    loaded = autoglm.load(tmp_path / "art")
    out = loaded.report(tmp_path / "loaded.html")
    data = json.loads((tmp_path / "loaded.json").read_text())
    assert [p["name"] for p in data["passes"]] == [r.name for r in cm.records]
    assert len(data["nodes"]) == len(loaded.graph_module.graph.nodes)
    # No nn_module_stack after loading: groups come from submodule and attribute paths.
    assert {"layers.0", "layers.1"} <= {g["path"] for g in data["graph"]["groups"]}
    assert Path(out).exists() and out.suffix == ".html"


# --------------------------------------------------------------------------- headless Chromium

_CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _find_chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; the test is skipped (never installs anything) where it is missing."""
    found = _find_chromium()
    if not found:
        pytest.skip("chromium not found: run scripts/setup-venv.sh --browser")
    return found


def _run_chromium(binary: str, url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{time.monotonic_ns()}"  # a new empty profile every run
    profile.mkdir()
    return subprocess.run([binary, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
                           "--v=0", *extra, url], capture_output=True, text=True, timeout=120)


def _console_lines(stderr: str) -> list[str]:
    # Chromium logs every console message and uncaught exception as INFO:CONSOLE; the page
    # itself never writes to the console, so any such line is a failure.
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_check_catches_a_broken_page(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>notDefined();</script></body></html>")
    proc = _run_chromium(chromium, bad.as_uri(), tmp_path, "--dump-dom")
    assert any("notDefined" in line for line in _console_lines(proc.stderr))


@pytest.fixture(scope="module")
def bert_report(tmp_path_factory):
    torch.set_num_threads(1)
    model, inputs = bert_base_encoder(seq=32)
    devices, spec, used = _devices_and_spec("partition(k=2)", "quantize(mode=dynamic)")
    assert {u.split("(")[0] for u in used} == {"partition", "quantize"}, used  # acceptance: both passes
    cm = autoglm.compile(model, inputs, passes=spec, devices=devices)
    out = tmp_path_factory.mktemp("bert") / "report.html"
    t0 = time.perf_counter()
    write_report(cm, out)
    seconds = time.perf_counter() - t0
    print(f"\nBERT-base report ({spec}): {seconds:.2f} s, {out.stat().st_size / 1e6:.2f} MB, "
          f"{len(cm.graph_module.graph.nodes)} nodes")
    return out, json.loads(out.with_suffix(".json").read_text()), used, seconds


def test_bert_base_report_renders_in_headless_chromium(chromium, bert_report, tmp_path):
    out, data, used, seconds = bert_report
    assert seconds < 10  # goal 3 s (benchmarks/report.py); generous here for a loaded CI machine
    proc = _run_chromium(chromium, out.as_uri(), tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    dom = proc.stdout
    assert 'data-ready="1"' in dom, "the page's script did not finish"
    expected = len(data["nodes"]) + len(data["graph"]["groups"])
    assert f'data-graph-elements="{expected}"' in dom, "graph SVG must have one element per node or group"
    assert len(data["graph"]["groups"]) >= 12  # the 12 encoder layers are collapsible
    assert len(data["partitions"]["rows"]) == 2
    assert any("int8" in n["marks"] for n in data["nodes"])


def test_clicking_a_group_opens_its_view_in_chromium(chromium, bert_report, tmp_path):
    out = bert_report[0]
    probe = tmp_path / "probe.html"
    click = ("<script>var g=document.querySelector('#view-root g.group');"
             "g.dispatchEvent(new MouseEvent('click',{bubbles:true}));"
             "var v=document.getElementById('view-'+g.getAttribute('data-group'));"
             "document.body.setAttribute('data-opened',(!v.hidden)+','+g.getAttribute('aria-expanded'));"
             "g.dispatchEvent(new MouseEvent('click',{bubbles:true}));"
             "document.body.setAttribute('data-closed',String(v.hidden));</script></body>")
    probe.write_text(out.read_text(encoding="utf-8").replace("</body>", click), encoding="utf-8")
    proc = _run_chromium(chromium, probe.as_uri(), tmp_path, "--dump-dom")
    assert _console_lines(proc.stderr) == []
    assert 'data-opened="true,true"' in proc.stdout and 'data-closed="true"' in proc.stdout


def test_bert_base_report_screenshot_is_not_blank(chromium, bert_report, tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="pillow (a dev dependency) decodes the screenshot")
    from PIL import ImageStat

    out = bert_report[0]
    shot = tmp_path / "shot.png"
    proc = _run_chromium(chromium, out.as_uri(), tmp_path, "--window-size=1280,2400", f"--screenshot={shot}")
    assert shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    stat = ImageStat.Stat(image)
    assert min(stat.var) > 100, f"screenshot looks blank: per-channel variance {stat.var}"
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50  # text, boxes in partition colours, charts


# --------------------------------------------------------------------------- screenshots and layout checks

# Run inside the page after its own script: open every grouped view and <details>, then count SVG texts
# whose box leaves their drawing (charts: the viewBox; graphs: the drawing's own size) and panels
# with nothing drawn. The result goes into <body data-...>, which --dump-dom prints.
_LAYOUT_PROBE = """<script>(function(){
  document.querySelectorAll('details').forEach(function(d){d.open=true;});
  document.querySelectorAll('section.view[hidden]').forEach(function(s){s.hidden=false;});
  var clipped=[];
  document.querySelectorAll('svg').forEach(function(svg){
    var w=+svg.dataset.w||svg.viewBox.baseVal.width, h=+svg.dataset.h||svg.viewBox.baseVal.height;
    svg.querySelectorAll('text').forEach(function(t){
      var b=t.getBBox(); if(!b.width) return;
      if(b.x<-0.5||b.y<-0.5||b.x+b.width>w+0.5||b.y+b.height>h+0.5) clipped.push((svg.id||svg.className.baseVal)+': '+t.textContent);
    });
  });
  var empty=[];
  document.querySelectorAll('section.panel').forEach(function(p){if(p.getBoundingClientRect().height<40) empty.push(p.id);});
  var svg=document.querySelector('#graph-views svg.graph'), before=svg.getAttribute('viewBox');
  svg.dispatchEvent(new WheelEvent('wheel',{deltaY:-300,clientX:50,clientY:50,bubbles:true,cancelable:true}));
  document.body.setAttribute('data-zoomed',String(svg.getAttribute('viewBox')!==before));
  document.body.setAttribute('data-clipped',String(clipped.length));
  document.body.setAttribute('data-clipped-list',clipped.slice(0,10).join(' | '));
  document.body.setAttribute('data-empty-panels',empty.join(','));
})();</script></body>"""

SHOT_PANELS = ("overview", "graph", "partitions", "quantization")


def _artifact_dir() -> Path:
    """Where screenshots are kept for a person to look at: $AUTOGLM_TEST_ARTIFACTS/report, else build/."""
    base = os.environ.get("AUTOGLM_TEST_ARTIFACTS")
    root = Path(base) if base else Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_no_text_is_clipped_and_no_panel_is_empty_in_chromium(chromium, bert_report, tmp_path):
    out = bert_report[0]
    probe = tmp_path / "layout.html"
    probe.write_text(out.read_text(encoding="utf-8").replace("</body>", _LAYOUT_PROBE), encoding="utf-8")
    proc = _run_chromium(chromium, probe.as_uri(), tmp_path, "--window-size=1280,1600", "--dump-dom")
    assert _console_lines(proc.stderr) == []
    dom = proc.stdout
    clipped = dom.split('data-clipped-list="', 1)[1].split('"', 1)[0] if "data-clipped-list" in dom else "?"
    assert 'data-clipped="0"' in dom, f"SVG text outside its drawing: {clipped}"
    assert 'data-empty-panels=""' in dom
    assert 'data-zoomed="true"' in dom, "the mouse wheel does not zoom the graph"


def test_probe_catches_a_clipped_label(chromium, tmp_path):
    bad = tmp_path / "clipped.html"
    bad.write_text('<!DOCTYPE html><html><body><section class="panel" style="height:50px">x</section>'
                   '<div id="graph-views"><svg class="graph" viewBox="0 0 50 20" width="50" height="20">'
                   '<text x="40" y="15">a label far too long</text></svg></div></body></html>')
    probe = tmp_path / "probe.html"
    probe.write_text(bad.read_text().replace("</body>", _LAYOUT_PROBE))
    proc = _run_chromium(chromium, probe.as_uri(), tmp_path, "--dump-dom")
    assert 'data-clipped="1"' in proc.stdout


def test_section_screenshots_are_not_blank(chromium, bert_report, tmp_path):
    """One screenshot per panel (the others hidden), kept under _artifact_dir() for a person to look at."""
    Image = pytest.importorskip("PIL.Image", reason="pillow (a dev dependency) decodes the screenshot")
    from PIL import ImageStat

    out, keep = bert_report[0], _artifact_dir()
    page = out.read_text(encoding="utf-8")
    for panel in SHOT_PANELS:
        only = tmp_path / f"{panel}.html"
        hide = f"<style>body>section.panel:not(#sec-{panel}){{display:none}}</style></head>"
        only.write_text(page.replace("</head>", hide, 1), encoding="utf-8")
        shot = keep / f"{panel}.png"
        shot.unlink(missing_ok=True)
        proc = _run_chromium(chromium, only.as_uri(), tmp_path, "--window-size=1280,1400", f"--screenshot={shot}")
        assert shot.exists(), proc.stderr[-2000:]
        image = Image.open(shot).convert("RGB")
        grey = image.convert("L").histogram()
        ink = sum(grey[:200]) / sum(grey)  # share of pixels darker than the page's light greys
        assert min(ImageStat.Stat(image).var) > 50 and ink > 0.01, f"{panel} screenshot looks empty ({ink:.3%} ink)"
        assert len(image.getcolors(maxcolors=1 << 20) or []) > 20, panel
