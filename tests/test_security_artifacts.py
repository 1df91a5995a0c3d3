"""Hostile artifact directories: nothing in graph.json can run code (tests/hostile/artifacts.py).

Per class, one fresh process runs ``autoglm.load`` and ``autoglm inspect/run/
export/report`` on every case; each case must be refused by every reader with
one error line, exit 1, no output and no canary.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.hostile.artifacts import CASES, SANITISED, base_artifact, build
from tests.hostile.run import assert_refused, run_driver

CLASSES = sorted({c for c, _, _ in CASES})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return base_artifact(tmp_path_factory.mktemp("base") / "artifact")


@pytest.mark.parametrize("cls", CLASSES)
def test_hostile_artifacts_are_refused(cls: str, base: Path, tmp_path: Path) -> None:
    cases = [(name, edit) for c, name, edit in CASES if c == cls]
    canaries = [tmp_path / f"CANARY_{i}" for i in range(len(cases))]
    paths = [build(edit, base, tmp_path / f"case_{i}", str(canaries[i])) for i, (_, edit) in enumerate(cases)]
    results, elapsed = run_driver("artifact", paths, tmp_path / "out")
    for i, ((name, _), per_reader) in enumerate(zip(cases, results)):
        assert_refused(per_reader, canaries[i], tmp_path / "out" / str(i)), name
    assert elapsed < 60 + 10 * len(cases), elapsed


def test_the_base_artifact_loads_and_runs(base: Path, tmp_path: Path) -> None:
    """The corpus edits a legitimate artifact: untouched, every reader accepts it."""
    results, _ = run_driver("artifact", [base], tmp_path / "out")
    assert [r["code"] for r in results[0]] == [0, 0, 0, 0, 0], results


def test_stack_traces_lose_line_breaks_other_than_newline(base: Path, tmp_path: Path) -> None:
    import autoglm

    (_, _, edit), = SANITISED
    canary = tmp_path / "CANARY"
    path = build(edit, base, tmp_path / "case", str(canary))
    cm = autoglm.load(path)
    traces = [n.meta["stack_trace"] for n in cm.graph_module.graph.nodes if "stack_trace" in n.meta]
    assert traces and all("\r" not in t for t in traces)
    cm.graph_module.print_readable(print_output=False)  # generated code with the trace as a comment
    assert not canary.exists()


def test_load_does_not_run_the_graph(base: Path) -> None:
    """Shapes come from the file: loading dispatches none of the graph's operators."""
    import autoglm
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        cm = autoglm.load(base)
    assert not [op for op in seen if any(k in op for k in ("addmm", "linear", "relu", "add.Tensor"))], seen
    shapes = [a.outputs[0].shape for a in (n.meta.get("autoglm") for n in cm.graph_module.graph.nodes) if a and a.outputs]
    assert (2, 4) in shapes  # read from the file, not measured
    torch.testing.assert_close(cm(torch.ones(2, 4)), cm.graph_module(torch.ones(2, 4))[0])


def _keep_wrapped_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture now inlines fx.wrap-ed functions; artifacts saved before (or with inlining off)
    still hold the call, and that is what these tests load."""
    from autoglm.capture.symbolic import AutoglmTracer

    monkeypatch.setattr(AutoglmTracer, "inline_wrapped_functions", False)


def test_fx_wrapped_functions_need_trust_remote_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user function in the graph is user code: refused by default, loadable when the user vouches for it."""
    import autoglm
    from autoglm.loading.op_table import UnsafeArtifactError
    from tests.hostile.wrapped import UsesWrapped

    _keep_wrapped_calls(monkeypatch)

    model, x = UsesWrapped().eval(), torch.randn(2, 4)
    cm = autoglm.compile(model, (x,), passes="none", frontend="symbolic")
    assert any(getattr(n.target, "__name__", "") == "scaled_gelu" for n in cm.graph_module.graph.nodes)
    cm.save(tmp_path / "a")
    with pytest.raises(UnsafeArtifactError, match="--trust-remote-code"):
        autoglm.load(tmp_path / "a")
    trusted = autoglm.load(tmp_path / "a", trust_remote_code=True)
    torch.testing.assert_close(trusted(x), model(x))


def test_cli_trust_remote_code_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``autoglm inspect DIR`` refuses a graph calling a user function; ``--trust-remote-code`` loads it."""
    import os
    import subprocess
    import sys

    import autoglm
    from tests.hostile.wrapped import UsesWrapped

    _keep_wrapped_calls(monkeypatch)

    autoglm.compile(UsesWrapped().eval(), (torch.randn(2, 4),), passes="none", frontend="symbolic").save(tmp_path / "a")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}  # where the user's own module lives
    cli = Path(sys.executable).parent / "autoglm"
    refused = subprocess.run([str(cli), "inspect", str(tmp_path / "a")], capture_output=True, text=True, env=env,
                             timeout=120)
    assert refused.returncode == 1 and "--trust-remote-code" in refused.stderr
    trusted = subprocess.run([str(cli), "inspect", str(tmp_path / "a"), "--trust-remote-code"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert trusted.returncode == 0, trusted.stderr
    assert "scaled_gelu" in trusted.stdout
