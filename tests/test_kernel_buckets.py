"""Measured kernel choices on dynamic graphs specialise by row-count bucket (issue #18).

Before: a dynamic graph's int8 linears were timed at the example's shape only and
that one choice served every shape. Now each is timed at row counts around the
example's; when the winners differ, the layer keeps one kernel per bucket
(``Int8Linear.kernel_by_rows``), which round-trips through an artifact and is said
in ``cm.notes``. The timing race is replaced here by a stated cost (fbgemm fast on
small row counts, ``torch._int_mm`` on large) so the test does not depend on this
machine's speed; both kernels are exact, so results cannot depend on the bucket.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import autoglm
import autoglm.ir.int8 as int8
from autoglm.ir.int8 import Int8Linear


# 7-bit weight codes: fbgemm is exact with them on every CPU (int8 codes saturate it without VNNI).
PASSES = "quantize(mode=dynamic,weights=int7,progress=False)"


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _closure(fn) -> dict:
    return {name: cell.cell_contents for name, cell in zip(fn.__code__.co_freevars, fn.__closure__)}


def _stated_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """fbgemm costs 1 per row, int_mm 100 + 0.1 per row: fbgemm wins below ~111 rows."""
    def cost(fn, repeats):  # noqa: ARG001 - the signature of median_seconds
        mod, x = _closure(fn)["mod"], _closure(fn)["example"]  # fn is choose_kernel's `lambda: mod(example)`
        rows = x.numel() // x.shape[-1]
        return 1e-6 * (rows if mod.kernel.startswith("fbgemm") else 100 + 0.1 * rows)

    monkeypatch.setattr(int8, "median_seconds", cost)
    monkeypatch.setattr(int8, "_KERNEL_TIMES", {})


def _linears(cm) -> list[Int8Linear]:
    return [m for m in cm.graph_module.modules() if isinstance(m, Int8Linear)]


def test_dynamic_linears_get_one_kernel_per_row_bucket(monkeypatch, tmp_path):
    _stated_costs(monkeypatch)
    model = MLP().eval()
    x = torch.randn(4, 8, 32)
    cm = autoglm.compile(model, (x,), passes=PASSES, dynamic={0: {0: "batch"}})
    linears = _linears(cm)
    assert len(linears) == 2
    for mod in linears:
        assert mod.kernel_by_rows, mod
        kernels = [k for _, k in mod.kernel_by_rows]
        assert kernels == ["fbgemm_dynamic", "int_mm_dynamic"], mod.kernel_by_rows
        bound = mod.kernel_by_rows[0][0]
        assert 32 <= bound <= 256  # the edge lies between the timed counts 32 and 256
        assert mod.kernel_for(torch.randn(1, 8, mod.in_features)) == "fbgemm_dynamic"
        assert mod.kernel_for(torch.randn(64, 8, mod.in_features)) == "int_mm_dynamic"
    note = cm.notes["quantize"]["kernels_timed_at"]
    assert "2 specialise by row-count bucket" in note, note
    rows = cm.notes["quantize"]["lowered"]
    assert sorted(tuple(map(tuple, r["kernel_by_rows"])) for r in rows) == sorted(m.kernel_by_rows for m in linears)
    # Either bucket computes the q/dq numbers: outputs at a small and a large batch match eager closely.
    for batch in (1, 64):
        xb = torch.randn(batch, 8, 32)
        with torch.no_grad():
            got, ref = cm(xb), model(xb)
        cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
        assert cos > 0.999, (batch, float(cos))
    # The buckets are part of the artifact.
    cm.save(tmp_path / "a")
    loaded = autoglm.load(tmp_path / "a")
    assert [m.kernel_by_rows for m in _linears(loaded)] == [m.kernel_by_rows for m in linears]
    xb = torch.randn(64, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(xb), cm(xb), rtol=0, atol=0)


def test_one_kernel_fastest_everywhere_keeps_no_buckets(monkeypatch):
    _stated_costs(monkeypatch)
    monkeypatch.setattr(int8, "median_seconds",
                        lambda fn, repeats: 1e-6 if _closure(fn)["mod"].kernel.startswith("fbgemm") else 1e-3)
    cm = autoglm.compile(MLP().eval(), (torch.randn(4, 8, 32),), passes=PASSES,
                         dynamic={0: {0: "batch"}})
    assert all(not m.kernel_by_rows and m.kernel == "fbgemm_dynamic" for m in _linears(cm))
    assert "0 specialise" in cm.notes["quantize"]["kernels_timed_at"]


def test_static_graphs_are_timed_at_their_one_shape(monkeypatch):
    _stated_costs(monkeypatch)
    cm = autoglm.compile(MLP().eval(), (torch.randn(4, 8, 32),), passes=PASSES,
                         dynamic=False)
    assert all(not m.kernel_by_rows for m in _linears(cm))
    assert "kernels_timed_at" not in cm.notes["quantize"]
    assert all("timed_at_rows" not in r for r in cm.notes["quantize"]["lowered"])


@pytest.mark.parametrize("buckets", [[[0, "fbgemm_dynamic"]], [[8, "fbgemm_dynamic"], [4, "int_mm_dynamic"]],
                                     [[8, "os.system"]], [[8.5, "fbgemm_dynamic"]], [[i + 1, "int_mm_dynamic"]
                                                                                     for i in range(9)]])
def test_bad_kernel_buckets_are_refused(buckets):
    with pytest.raises(ValueError, match="kernel"):
        Int8Linear(torch.ones(4, 8, dtype=torch.int8), torch.ones(4), None, kernel="fbgemm_dynamic",
                   kernel_by_rows=buckets)
