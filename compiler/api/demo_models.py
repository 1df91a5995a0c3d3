"""The small transformer encoder the ``autoglm demo`` command compiles.

It lives inside the package because ``examples/`` is not installed;
``examples/models.py`` re-exports it, so tests, benchmarks and the demo see
one model. Weights are seeded, so every run builds the same model.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MultiHeadAttention", "EncoderLayer", "TransformerEncoder", "init_weights", "small_transformer"]


class MultiHeadAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, h)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.attn = MultiHeadAttention(hidden, heads)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    """Token embedding + N post-norm encoder layers + a pooled classifier head."""

    def __init__(self, vocab: int = 1000, hidden: int = 64, heads: int = 4, ffn: int = 256, layers: int = 2,
                 max_len: int = 128, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.pos(positions)
        for layer in self.layers:
            x = layer(x)
        return self.head(x.mean(dim=1))


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic, well-scaled weights (seeded), model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(p.shape[1])))
            elif "weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if "running_var" in name:
                b.copy_(1.0 + 0.1 * torch.rand(b.shape, generator=g))
            elif "running_mean" in name:
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    return model.eval()


def small_transformer(batch: int = 2, seq: int = 16, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = init_weights(TransformerEncoder(), seed)
    ids = torch.randint(0, 1000, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return model, (ids,)
