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


def digits_cnn(width: int = 16, epochs: int = 6) -> tuple[nn.Module, tuple, tuple]:
    """``SmallCNN`` trained here on scikit-learn's digits (real data, shipped with the package).

    Returns (model in eval mode, (x_train, y_train), (x_test, y_test)): a fixed 70/30
    split of the 1797 8x8 images scaled to [0, 1]; the same on every call.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.7 * len(y))
    (xtr, ytr), (xte, yte) = (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]])
    torch.manual_seed(0)
    model = SmallCNN(width=width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(ytr), 64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[i:i + 64]), ytr[i:i + 64]).backward()
            opt.step()
    return model.eval(), (xtr, ytr), (xte, yte)


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
