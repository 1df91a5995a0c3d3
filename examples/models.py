"""Example models: a small transformer encoder, a CNN, a BERT-base-sized encoder.

Each factory returns ``(model, example_inputs)`` with the model in eval mode and
deterministic weights (seeded), so tests and benchmarks see the same thing.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TransformerEncoder", "SmallCNN", "small_transformer", "small_cnn", "bert_base_encoder", "wide_mlp",
           "EXAMPLES"]


# The small transformer lives in the package so the installed ``autoglm demo`` can
# build it; re-exported here so everything uses the one model.
from autoglm.api.demo_models import EncoderLayer, MultiHeadAttention, TransformerEncoder  # noqa: E402,F401
from autoglm.api.demo_models import init_weights as _init  # noqa: E402
from autoglm.api.demo_models import small_transformer  # noqa: E402,F401


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
