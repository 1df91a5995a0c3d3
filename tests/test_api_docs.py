"""docs/api.md is generated from the docstrings and must match the code (issue 20: an API
reference in which every public function and CompiledModel method is documented)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gen_api_docs  # noqa: E402


def test_every_public_function_and_method_has_a_docstring():
    assert gen_api_docs.missing_docstrings() == []


def test_api_reference_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_reference_covers_the_compiled_model_and_the_backend():
    text = (ROOT / "docs" / "api.md").read_text()
    for name in ("CompiledModel.summary", "CompiledModel.save", "CompiledModel.export_onnx", "make_backend",
                 "compile_pretrained", "write_report"):
        assert name in text
