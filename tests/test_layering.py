"""The import graph goes one way: layers from autoglm.ir up to autoglm.cli, no cycles.

Every ``import`` in every module counts, function-local ones included (they are
how cycles used to hide). A module may import its own package (folder) and any
lower layer; the table is the architecture (docs/architecture.md).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"compiler": "autoglm", "passes": "autoglm.passes", "runtime": "autoglm.runtime"}

# lowest first; a module in layer i may import layers <= i (same layer: its own package only)
LAYERS = [
    ["autoglm._version", "autoglm.ir"],
    ["autoglm.capture", "autoglm.cost"],
    ["autoglm.loading"],
    ["autoglm.artifacts"],
    ["autoglm.passes"],
    ["autoglm.runtime"],
    ["autoglm.export"],
    ["autoglm.report"],
    ["autoglm.driver"],
    ["autoglm.program"],
    ["autoglm.api"],
    ["autoglm.cli"],
    ["autoglm"],  # the package itself: lazy re-exports of the API
]


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def _layer(module: str) -> tuple[int, str]:
    best = (-1, "", "")
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (i, prefix, prefix)
    assert best[0] >= 0, f"{module} is in no layer; add its package to LAYERS"
    return best[0], best[1]


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_imports_go_down_the_layers() -> None:
    upward = []
    for module, targets in GRAPH.items():
        layer, package = _layer(module)
        for target in targets:
            t_layer, t_package = _layer(target)
            if t_layer > layer or (t_layer == layer and t_package != package and package != "autoglm"):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    g = nx.DiGraph()
    g.add_nodes_from(GRAPH)
    g.add_edges_from((a, b) for a, targets in GRAPH.items() for b in targets)
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_runtime_loads_no_pass_and_no_api() -> None:
    code = ("import sys, time; t = time.perf_counter(); import autoglm.runtime.direct; "
            "print(time.perf_counter() - t); print(' '.join(m for m in sys.modules if m.startswith('autoglm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    seconds, loaded = out.stdout.splitlines()
    loaded = loaded.split()
    assert not [m for m in loaded if m.startswith(("autoglm.passes", "autoglm.api", "autoglm.driver",
                                                    "autoglm.program", "autoglm.cli"))], loaded
    assert len(loaded) <= 4, loaded  # autoglm, autoglm._version, autoglm.runtime, autoglm.runtime.direct
