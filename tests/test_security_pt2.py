"""Hostile ``.pt2`` archives: torch never reads a byte we did not check (tests/hostile/pt2.py).

Per class, one fresh process runs ``autoglm inspect FILE`` and ``autoglm
compile FILE`` on every case: each must be refused with one error line and
exit 1, write nothing, and never run the canary payload.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.hostile import pt2
from tests.hostile.run import assert_refused, run_driver

CLASSES = sorted({c for c, *_ in pt2.CASES})


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    d = tmp_path_factory.mktemp("bases")
    return {False: pt2.base_archive(d / "static.pt2"), True: pt2.base_archive(d / "dynamic.pt2", dynamic=True)}


@pytest.mark.parametrize("cls", CLASSES)
def test_hostile_archives_are_refused(cls: str, bases: dict[bool, Path], tmp_path: Path) -> None:
    cases = [(name, edit, dyn) for c, name, edit, dyn in pt2.CASES if c == cls]
    canaries = [tmp_path / f"CANARY_{i}" for i in range(len(cases))]
    paths = [pt2.build(edit, bases[dyn], tmp_path / f"case_{i}.pt2", str(canaries[i]))
             for i, (_, edit, dyn) in enumerate(cases)]
    results, elapsed = run_driver("model", paths, tmp_path / "out")
    for i, ((name, _, _), per_reader) in enumerate(zip(cases, results)):
        assert_refused(per_reader, canaries[i], tmp_path / "out" / str(i)), name
    assert elapsed < 60 + 10 * len(cases), elapsed


def test_bombs_and_disguised_pickles_are_refused(bases: dict[bool, Path], tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    paths = [pt2.zip_bomb(tmp_path / "bomb.pt2", bases[False]), pt2.pickle_as_pt2(tmp_path / "p.pt2", str(canary)),
             pt2.build(pt2._truncated, bases[False], tmp_path / "cut.pt2", str(canary)),
             pt2.torch_save_module(tmp_path / "module.pt2")]
    results, _ = run_driver("model", paths, tmp_path / "out")
    for i, per_reader in enumerate(results):
        assert_refused(per_reader, canary, tmp_path / "out" / str(i))


def test_legitimate_archives_still_load(bases: dict[bool, Path], tmp_path: Path) -> None:
    """torch.export.save files (static and dynamic), and the same members re-zipped by Python's zipfile."""
    rezipped = pt2.write_members(pt2.read_members(bases[False]), tmp_path / "rezipped.pt2")
    results, _ = run_driver("model", [bases[False], bases[True], rezipped], tmp_path / "out")
    for per_reader in results:
        assert [r["code"] for r in per_reader] == [0, 0], per_reader


def test_loaded_archive_matches_eager(bases: dict[bool, Path]) -> None:
    from autoglm.loading.model_files import load_model

    loaded = load_model(bases[False])
    torch.manual_seed(0)
    torch.randn(3, 4)  # base_archive draws its example input first
    ref = pt2.Tiny().eval()
    x = loaded.example_inputs.args[0]
    torch.testing.assert_close(loaded.module(x), ref(x))
