"""Capture patterns real vision models use (issue #17 items 3 and 9).

* Detection-style code asks Python for lengths of traced values: ``len(x.shape)``,
  ``len(x.size())``, ``len(x)`` (the batch). Each is a ``len`` branch point (a
  guard, so a new rank or batch size re-plans instead of reusing a frozen answer).
* Libraries mark helpers ``torch.fx.wrap`` (torchvision's ``stochastic_depth``,
  swin's ``_get_relative_position_bias``). The symbolic tracer inlines them, so a
  saved graph calls only what the op table knows and loads in a fresh process
  without ``--trust-remote-code``.

The wrapped functions are module-level functions marked the way torchvision marks
them (torchvision is not installed here); the fresh process never imports this file.
"""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn

import autoglm
from autoglm.program.program import Program
from tests.fresh_process import assert_loads_like_eager

# -- a detection-style model: len() of shapes, lists of feature maps, a data-dependent branch --


class Backbone(nn.Module):
    """Returns a list of feature maps; accepts an unbatched image like torchvision's transforms do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stages = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if len(x.shape) == 3:  # one image, no batch dimension
            x = x.unsqueeze(0)
        h = torch.relu(self.stem(x))
        features = []
        for stage in self.stages:
            h = torch.relu(stage(h))
            features.append(h)
        return features


class Head(nn.Module):
    """Per-level scores, flattened to (N, anchors) the way anchor heads do."""

    def __init__(self, n_levels: int) -> None:
        super().__init__()
        self.score = nn.ModuleList(nn.Conv2d(8, 2, 1) for _ in range(n_levels))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        scores = []
        for i in range(len(features)):
            s = self.score[i](features[i])
            if len(s.size()) == 4 and s.dim() == 4 and s.ndim == 4:
                s = s.flatten(1)
            scores.append(s)
        return torch.cat(scores, dim=1)


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = Head(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.head(self.backbone(x))
        if scores.max() > 0.5:  # data-dependent: keep the confident anchors
            scores = torch.sigmoid(scores) * 2
        per_image = [scores[b].sum() for b in range(len(scores))]  # len() of a tensor: the batch
        return torch.stack(per_image) + scores.mean()


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.3)
    return model.eval()


def _detector_inputs() -> list[torch.Tensor]:
    """Inputs that take both sides of the score branch, two batch sizes and an unbatched image."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 3, 16, 16, generator=g) * s for s in (0.05, 0.2, 1.0, 3.0)]
    return xs + [torch.randn(1, 3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)]


def test_len_of_a_traced_shape_becomes_a_guarded_branch_point():
    model = _seeded(Detector())
    xs = _detector_inputs()
    cm = autoglm.compile(model, (xs[0],))
    assert isinstance(cm, Program), cm.notes.get("frontend_reasons")
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(cm(x), model(x))
    kinds = {bp.kind for bp in cm.stats.branch_points.values()}
    assert "len" in kinds and "bool" in kinds
    lengths = [bp for bp in cm.stats.branch_points.values() if bp.kind == "len"]
    assert any("len(x.shape)" in bp.source for bp in lengths)
    assert any("range(len(scores))" in bp.source for bp in lengths)
    # Parity above already shows no answer was frozen (a batch-2 length reused for a batch of 1
    # would change the output shape); each new rank and batch size was its own compile.
    rank_point = next(bp for bp in lengths if "len(x.shape)" in bp.source)
    assert rank_point.misses == 2  # ranks 4 and 3
    batch_sizes = {len(x) if x.dim() == 4 else 1 for x in xs}
    assert cm.stats.replans >= len(batch_sizes) + 1


def test_detector_program_saves_and_loads_in_a_fresh_process(tmp_path):
    model = _seeded(Detector())
    xs = _detector_inputs()
    cm = autoglm.compile(model, (xs[0],))
    assert isinstance(cm, Program)
    for x in xs:
        cm(x)
    cm.save(tmp_path / "prog")
    loaded = autoglm.load(tmp_path / "prog")
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(loaded(x), model(x))
    assert_loads_like_eager(tmp_path, "prog", model, xs)


# -- torch.fx.wrap-ed library functions, marked the way torchvision marks them -----------------


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision.ops.stochastic_depth (BSD-3-Clause), unchanged in behaviour."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


torch.fx.wrap("stochastic_depth")


@torch.fx.wrap
def _get_relative_position_bias(table: torch.Tensor, index: torch.Tensor, window_size: list[int]) -> torch.Tensor:
    """torchvision.models.swin_transformer._get_relative_position_bias (BSD-3-Clause)."""
    n = window_size[0] * window_size[1]
    bias = table[index]
    bias = bias.view(n, n, -1)
    return bias.permute(2, 0, 1).contiguous().unsqueeze(0)


@torch.fx.wrap
def _scale_by_width(x: torch.Tensor) -> torch.Tensor:
    """Not symbolically traceable (``int()`` of a traced size): capture falls back to export."""
    return x / int(x.shape[-1])


class StochasticDepth(nn.Module):
    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, self.mode, self.training)


class ConvNeXtBlock(nn.Module):
    """torchvision's CNBlock shape: depthwise conv, LayerNorm, MLP, layer scale, stochastic depth."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))
        self.stochastic_depth = StochasticDepth(0.1, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.mlp(self.norm(h)).permute(0, 3, 1, 2)
        return x + self.stochastic_depth(self.layer_scale * h)


class WindowAttention(nn.Module):
    """Swin's window attention with its relative position bias read through the wrapped helper."""

    def __init__(self, dim: int = 8, window: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.window, self.heads = [window, window], heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten())

    def get_relative_position_bias(self) -> torch.Tensor:
        return _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                           self.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (windows, tokens, dim)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + self.get_relative_position_bias()
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class WidthScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _scale_by_width(self.fc(x))


_WRAPPED = {stochastic_depth, _get_relative_position_bias, _scale_by_width}


@pytest.mark.parametrize("factory, shape, frontend", [
    (ConvNeXtBlock, (2, 8, 6, 6), "symbolic"),  # inlined
    (WindowAttention, (3, 16, 8), "symbolic"),  # inlined
    (WidthScaled, (2, 8), "export"),  # inlining fails: the export frontend takes it
])
def test_fx_wrapped_library_functions_load_in_a_fresh_process(factory, shape, frontend, tmp_path):
    model = _seeded(factory())
    xs = [torch.randn(*shape), torch.randn(*shape) * 2]
    cm = autoglm.compile(model, (xs[0],))
    assert cm.frontend == frontend, cm.notes.get("frontend_reasons")
    targets = {n.target for n in cm.graph_module.graph.nodes if n.op == "call_function"}
    assert not targets & _WRAPPED, "a wrapped function stayed a call the loader refuses"
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(cm(x), model(x))
    cm.save(tmp_path / "art")
    assert_loads_like_eager(tmp_path, "art", model, xs)

