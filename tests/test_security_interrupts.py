"""Trust boundary: signals and hostile file names, through the installed ``autoglm`` command.

* SIGINT/SIGTERM at any step of ``autoglm compile`` leaves no output and no staging
  folder, exits 130/143 and prints one line (a second signal during the clean-up too).
* ``autoglm run --nproc 2`` takes torchrun and its stages down with it and removes its
  ``$TMPDIR/autoglm-pipe-*`` scratch folder, after a normal run and after SIGTERM.
* A stage killed at start-up is the one named, not a stage torchrun then stopped.
* A file name holding a newline cannot forge an ``autoglm: error:`` line.

Each test runs the command in a fresh process, as a user would; waits poll rather than
sleep, with timeouts generous enough for a loaded 2-core machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
AUTOGLM = shutil.which("autoglm", path=str(Path(sys.executable).parent)) or shutil.which("autoglm")

pytestmark = [pytest.mark.skipif(AUTOGLM is None, reason="autoglm console script not installed"),
              pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")]

FORGED = "\nautoglm: error: forged"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _sigint_default() -> None:
    # A suite started in the background by a non-interactive shell (`nohup ... &`) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the CLI would
    # rightly keep ignoring it. The test is about a CLI a user can interrupt, so it starts it so.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([AUTOGLM, *argv], cwd=cwd, env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)


def _cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([AUTOGLM, *argv], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=300)


def _poll(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command exited ({proc.returncode}) before {what}; stderr: {err}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _catches_sigterm(pid: int) -> bool:
    """True once main() has installed its handlers (SIGTERM is caught): before that the process
    is still starting Python and importing torch, and has neither staged nor written anything."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


def _processes_mentioning(*needles: str) -> list[str]:
    """Live processes (zombies have no command line) whose command line names one of ``needles``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _send(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- 1: signals during compile

def _staging(work: Path) -> list[Path]:
    return list(work.glob(".demo.autoglm-tmp-*"))


def _writing(work: Path) -> list[Path]:
    # save_artifact's own staging folder inside the CLI's one, with a file written in it
    try:
        return [p for p in work.glob(".demo.autoglm-tmp-*/.demo.*/**/*") if p.is_file()]
    except FileNotFoundError:  # a folder vanished while we looked: the next poll sees the new state
        return []


@pytest.mark.parametrize("sig, when", [
    (signal.SIGINT, 0.0), (signal.SIGTERM, 0.5), (signal.SIGINT, 1.5), (signal.SIGTERM, "staging"),
    (signal.SIGINT, "writing"), (signal.SIGTERM, "writing"),
], ids=["int-0s", "term-0.5s", "int-1.5s", "term-staging", "int-writing", "term-writing"])
def test_signal_during_compile_leaves_nothing(tmp_path, sig, when):
    work = tmp_path / "work"
    work.mkdir()
    proc = _start("demo", "--out", "demo", "-q", cwd=work)
    try:
        # main() has started: it catches SIGTERM (or, without that, it is already staging)
        _poll(lambda: _catches_sigterm(proc.pid) or _staging(work), 120, "main() to start", proc)
        if isinstance(when, float):
            time.sleep(when)
        else:
            _poll(lambda: (_staging if when == "staging" else _writing)(work), 120, f"the {when} step", proc,
                  every=0.005)
        assert proc.poll() is None, "the compile finished before the signal; nothing was tested"
        _send(proc, sig)
        if when == "writing":  # a second signal, of the other kind, while the first one's clean-up runs
            time.sleep(0.02)
            _send(proc, signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert err.splitlines() == ["autoglm: error: interrupted; nothing was written"], err
    assert out == ""
    assert sorted(p.name for p in work.iterdir()) == [], "a staging folder or partial output was left"


# ---------------------------------------------------------------- 2, 3: pipeline runs

@pytest.fixture(scope="module")
def pipe_artifact(tmp_path_factory):
    import autoglm
    from autoglm.api.demo_models import small_transformer

    model, inputs = small_transformer(batch=8)
    cm = autoglm.compile(model, inputs, passes="partition(k=2,contiguous=True)", devices=["cpu", "cpu"])
    path = tmp_path_factory.mktemp("pipe") / "art"
    cm.save(path)
    return path


def _pipe_env(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    return tmpdir, _env(TMPDIR=str(tmpdir), **extra)


def _run_pipeline_cli(art: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return _start("run", str(art), "--inputs", str(art / "example_inputs.safetensors"), "--nproc", "2", "-q",
                  cwd=cwd, env=env)


def _assert_nothing_left(tmpdir: Path, art: Path) -> None:
    assert list(tmpdir.glob("autoglm-pipe-*")) == [], "the pipeline's scratch folder was left in $TMPDIR"
    # torchrun and stages die asynchronously after SIGKILL; give a loaded machine a moment
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(tmpdir), str(art)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(tmpdir), str(art)) == [], "torchrun or a stage outlived autoglm run"


def test_pipeline_run_removes_its_scratch_and_processes(pipe_artifact, tmp_path):
    tmpdir, env = _pipe_env(tmp_path)
    proc = _run_pipeline_cli(pipe_artifact, tmp_path, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "output_0" in out
    _assert_nothing_left(tmpdir, pipe_artifact)


def test_sigterm_to_pipeline_run_takes_torchrun_and_stages_down(pipe_artifact, tmp_path):
    tmpdir, env = _pipe_env(tmp_path)
    proc = _run_pipeline_cli(pipe_artifact, tmp_path, env)
    try:
        # both stage processes started (their command lines name the scratch folder in $TMPDIR)
        _poll(lambda: len([p for p in _processes_mentioning(str(tmpdir)) if "pipeline.worker" in p
                           and "torch.distributed.run" not in p]) >= 2, 240, "two stage processes", proc,
              every=0.02)
        _send(proc, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.splitlines() == ["autoglm: error: interrupted; nothing was written"], err
    _assert_nothing_left(tmpdir, pipe_artifact)


def test_stage_killed_at_startup_is_the_one_named(pipe_artifact, tmp_path):
    """Stage 1 dies from SIGKILL before its first status record; torchrun then stops stage 0
    with SIGTERM. The error names stage 1, never stage 0."""
    tmpdir, env = _pipe_env(tmp_path, AUTOGLM_TEST_KILL_STAGE="1")
    proc = _run_pipeline_cli(pipe_artifact, tmp_path, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoglm: error: pipeline run on 2 processes failed"), err
    assert "stage 1" in err and "SIGKILL" in err, err
    assert "stage 0" not in err and "SIGTERM" not in err, err
    _assert_nothing_left(tmpdir, pipe_artifact)


# ---------------------------------------------------------------- 4: hostile file names

@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "x.pt"
    torch.save((torch.zeros(2, 3),), path)
    return path


def _forging_target(tmp_path: Path, command: str) -> Path:
    if command == "run":  # a missing artifact folder
        return tmp_path / f"art{FORGED}"
    path = tmp_path / f"model{FORGED}.pt2"  # a file that is there but is no model
    path.write_bytes(b"not a zip archive")
    return path


@pytest.mark.parametrize("command", ["inspect", "run", "compile"])
def test_file_name_cannot_forge_an_error_line(tmp_path, inputs_file, command):
    target = str(_forging_target(tmp_path, command))
    argv = {"inspect": ["inspect", target],
            "run": ["run", target, "--inputs", str(inputs_file)],
            "compile": ["compile", target, "--passes", "dce", "--out", str(tmp_path / "o")]}[command]
    r = _cli(*argv, cwd=tmp_path)  # not --quiet: progress lines name the file too
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("autoglm: error:")] != []
    assert len([ln for ln in lines if ln.startswith("autoglm: error:")]) == 1, r.stderr
    assert all(ln.startswith("autoglm: ") for ln in lines), r.stderr
    assert not any(ln.startswith(("forged", "autoglm: error: forged")) for ln in lines), r.stderr
    assert "\\nautoglm: error: forged" in r.stderr, r.stderr  # the newline is shown, escaped
    assert not (tmp_path / "o").exists()


def test_quote_path_and_console_escape_control_characters():
    import io

    from autoglm.cli.common import Console, quote_path

    assert quote_path("build/model.pt2") == "build/model.pt2"  # nothing to escape: unchanged
    assert quote_path(Path("a\nb")) == repr("a\nb")
    err = io.StringIO()
    console = Console(err=err)
    console.info("loading a\rb\x1b[2Kc\u2028d")
    console.warn("w\x00")
    console.error("e\tf")
    assert err.getvalue().splitlines() == ["autoglm: loading a\\rb\\x1b[2Kc\\u2028d", "autoglm: warning: w\\x00",
                                           "autoglm: error: e\\tf"]
