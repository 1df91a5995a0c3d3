"""Example models: a small transformer encoder, a CNN, a BERT-base-sized encoder.

Each factory returns ``(model, example_inputs)`` with the model in eval mode and
deterministic weights (seeded), so tests and benchmarks see the same thing.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TransformerEncoder", "SmallCNN", "small_transformer", "small_cnn", "bert_base_encoder", "wide_mlp",
           "EXAMPLES"]


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


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks with pooling and a linear classifier (8x8 or larger images)."""

    def __init__(self, in_ch: int = 1, classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def _init(model: nn.Module, seed: int) -> nn.Module:
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
    model = _init(TransformerEncoder(), seed)
    ids = torch.randint(0, 1000, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return model, (ids,)


def small_cnn(batch: int = 4, size: int = 8, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(SmallCNN(), seed)
    x = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return model, (x,)


def bert_base_encoder(batch: int = 1, seq: int = 128, layers: int = 12, seed: int = 0) -> tuple[nn.Module, tuple]:
    """BERT-base sized: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522."""
    model = _init(TransformerEncoder(vocab=30522, hidden=768, heads=12, ffn=3072, layers=layers, max_len=512,
                                     classes=2), seed)
    ids = torch.randint(0, 30522, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return model, (ids,)


class WideMLP(nn.Module):
    def __init__(self, d_in: int = 1024, hidden: int = 8192, d_out: int = 1024, layers: int = 2):
        super().__init__()
        dims = [d_in] + [hidden] * layers + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def wide_mlp(batch: int = 32, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(WideMLP(), seed)
    return model, (torch.randn(batch, 1024, generator=torch.Generator().manual_seed(seed)),)


EXAMPLES = {
    "transformer": small_transformer,
    "cnn": small_cnn,
    "bert-base": bert_base_encoder,
    "wide-mlp": wide_mlp,
}
