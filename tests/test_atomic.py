"""One atomic-write helper (autoglm.artifacts.atomic): outputs land whole or not at all."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoglm.artifacts import atomic


def _write(folder: Path, **files: str) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def test_move_into_replaces_a_model_and_its_data_together(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    _write(dest, **{"m.onnx": "old model", "m.onnx.data": "old data"})
    with atomic.staging_dir(dest, "m.onnx") as tmp:
        _write(tmp, **{"m.onnx": "new model", "m.onnx.data": "new data"})
        atomic.move_into(tmp, dest)
    assert (dest / "m.onnx").read_text() == "new model" and (dest / "m.onnx.data").read_text() == "new data"
    assert sorted(p.name for p in dest.iterdir()) == ["m.onnx", "m.onnx.data"]  # no staging folder left


def test_a_failed_move_leaves_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    _write(dest, **{"m.onnx": "old model", "m.onnx.data": "old data"})
    real = os.replace
    calls = []

    def flaky(src, dst):  # noqa: ANN001
        calls.append(dst)
        if len(calls) == 4:  # the second new file's move
            raise OSError("disk full")
        return real(src, dst)

    with pytest.raises(OSError, match="disk full"):
        with atomic.staging_dir(dest, "m.onnx") as tmp:
            _write(tmp, **{"m.onnx": "new model", "m.onnx.data": "new data"})
            monkeypatch.setattr(atomic.os, "replace", flaky)
            atomic.move_into(tmp, dest)
    monkeypatch.setattr(atomic.os, "replace", real)
    assert (dest / "m.onnx").read_text() == "old model" and (dest / "m.onnx.data").read_text() == "old data"
    assert sorted(p.name for p in dest.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_replace_dir_swaps_whole_trees(tmp_path: Path) -> None:
    final = tmp_path / "artifact"
    final.mkdir()
    _write(final, old="1")
    with atomic.staging_dir(tmp_path, "artifact") as tmp:
        staged = tmp / "artifact"
        staged.mkdir()
        _write(staged, new="2")
        atomic.replace_dir(staged, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
