"""Self-contained HTML reports with a JSON twin.

    cm.report("build/report.html")        # also writes build/report.json; measures vs eager
    from autoglm.report import write_report
    write_report(cm, "report.html", model=model)   # against the eager model itself
    write_report(cm, "report.html", measure=False)  # no runs: facts from the compile only

Modules: ``data`` collects the facts (the JSON twin), ``views`` collapses the
graph by module path, ``layout`` places boxes (Graphviz ``dot`` or pure
Python), ``svg`` draws the views, ``charts`` the bar charts, ``html`` the page,
``measure`` the eager comparison (by default against the graph as captured),
``reproduce`` the command that rebuilds the artifact. See docs/report.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from autoglm.artifacts.atomic import move_into, staging_dir
from autoglm.report.data import build_report_data
from autoglm.report.measure import measure_against_eager, measure_default

__all__ = ["write_report", "build_report_data", "render_report", "measure_against_eager", "ReportError",
           "json_twin_path"]


class ReportError(ValueError):
    """The report cannot be written where it was asked to go."""


def json_twin_path(path: str | os.PathLike) -> Path:
    """``report.html`` -> ``report.json``."""
    return Path(path).with_suffix(".json")


def _with_measurements(cm: Any, extra: dict[str, Any] | None, measure: bool, model: Any) -> dict[str, Any] | None:
    """``extra`` plus the default accuracy/latency runs, unless the caller measured them already."""
    if not measure or (extra and "accuracy" in extra and "latency" in extra):
        return extra
    measured = measure_default(cm, model)
    return {**measured, **(extra or {})}  # what the caller passed wins


def render_report(cm: Any, extra: dict[str, Any] | None = None, layout: str = "auto", *, measure: bool = False,
                  model: Any = None) -> tuple[str, dict[str, Any]]:
    """The page's HTML text and its data dict, without writing anything (``measure``: see write_report)."""
    from autoglm.report.html import render_page
    from autoglm.report.svg import render_views

    data = build_report_data(cm, _with_measurements(cm, extra, measure, model))
    svgs, engine = render_views(data, layout)
    data["graph"]["layout_engine"] = engine
    if data.get("captured"):
        before, _ = render_views({"nodes": data["captured"]["nodes"], "graph": data["captured"]["graph"]}, layout,
                                 prefix="cap-")
        data["captured"]["layout_engine"] = engine
    else:
        before = {}
    return render_page(data, svgs, engine, before), data


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _write_shared(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, 0o666 & ~_umask())  # the staging folder is private (0700); a report is meant to be shared


def write_report(cm: Any, path: str | os.PathLike, extra: dict[str, Any] | None = None, *,
                 layout: str = "auto", measure: bool = True, model: Any = None) -> Path:
    """Write ``path`` (HTML) and its JSON twin beside it; returns the HTML path.

    ``measure`` (default True): run the compiled model and eager on the example
    inputs (a few interleaved repeats) for the accuracy and latency sections;
    eager is ``model`` when given, else the graph as captured (kept by the
    compile; an artifact loaded from disk has none and is not measured).
    ``measure=False`` runs nothing. ``extra``: measurements of your own (keys
    ``latency``, ``accuracy`` replace the default ones; any other key is shown
    under "Other measurements"). ``layout``: ``"auto"`` (Graphviz ``dot`` when
    installed, else pure Python), ``"dot"`` or ``"python"``.
    Both files are written into a staging folder and moved into place together.
    """
    if not hasattr(cm, "graph_module") or not hasattr(cm, "records"):
        raise TypeError(f"write_report needs a CompiledModel (from autoglm.compile/load), got {type(cm).__name__}")
    target = Path(path)
    if target.is_dir():
        raise ReportError(f"report path {target} is a directory; give a file name such as {target / 'report.html'}")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of measurements (e.g. from measure_against_eager), got "
                        f"{type(extra).__name__}")
    target.parent.mkdir(parents=True, exist_ok=True)
    page, data = render_report(cm, extra, layout, measure=measure, model=model)
    twin = json_twin_path(target)
    if twin == target:
        raise ReportError(f"report path {target} ends in .json; give an .html path (the JSON twin goes beside it)")
    with staging_dir(target.parent, target.name) as tmp:  # the page and its twin land together
        _write_shared(tmp / twin.name, json.dumps(data, indent=1, allow_nan=False))
        _write_shared(tmp / target.name, page)
        move_into(tmp, target.parent)
    return target
