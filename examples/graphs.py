"""Benchmark graphs for partitioning: chains and branchy nets, built in code with seeded weights.

Each factory returns ``(model, example_inputs)`` in eval mode, like
``examples.models``. ``BENCHMARK_GRAPHS`` lists the six the partition
benchmark uses (the BERT-base-sized encoder comes from ``examples.models``);
``deep_decoder`` makes a graph of about 2,000 nodes for the timing check.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from examples.models import _init, bert_base_encoder

__all__ = ["GPT2Decoder", "ResNetCNN", "InceptionNet", "GoogLeNet", "MoEBlock", "gpt2_decoder", "resnet_cnn",
           "inception_net", "googlenet", "moe_block", "deep_decoder", "BENCHMARK_GRAPHS", "CHAIN_GRAPHS", "BRANCHY_GRAPHS"]


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).split(h, dim=2)
        q = q.view(b, s, self.heads, h // self.heads).transpose(1, 2)
        k = k.view(b, s, self.heads, h // self.heads).transpose(1, 2)
        v = v.view(b, s, self.heads, h // self.heads).transpose(1, 2)
        # SDPA's causal flag instead of slicing a mask buffer: keeps the batch size symbolic
        # (the symbolic frontend captures it), so the graph runs on pipeline microbatches.
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(att.transpose(1, 2).reshape(b, s, h))


class GPT2Block(nn.Module):
    def __init__(self, hidden: int, heads: int, max_len: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, heads, max_len)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.out = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT2Decoder(nn.Module):
    """Pre-norm causal decoder with a language-model head tied to the token embedding."""

    def __init__(self, vocab: int = 2048, hidden: int = 256, heads: int = 4, layers: int = 12, max_len: int = 128):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(max_len, hidden)
        self.blocks = nn.ModuleList(GPT2Block(hidden, heads, max_len) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied weights: read by the first and last partition


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNetCNN(nn.Module):
    """ResNet-18 layout (4 stages x 2 basic blocks) at a reduced width."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1, 1x1-3x3, 1x1-3x3-3x3, pool-1x1), concatenated."""

    def __init__(self, cin: int, b: int):
        super().__init__()
        self.b1 = nn.Conv2d(cin, b, 1)
        self.b2 = nn.Sequential(nn.Conv2d(cin, b, 1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(cin, b // 2, 1), nn.ReLU(), nn.Conv2d(b // 2, b, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(b, b, 3, padding=1))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, b, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1))


class InceptionNet(nn.Module):
    def __init__(self, width: int = 32, blocks: int = 6, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 4 * width, 3, padding=1)
        self.blocks = nn.Sequential(*[InceptionBlock(4 * width, width) for _ in range(blocks)])
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """torchvision's ``BasicConv2d``: conv without bias, batch norm (eps 1e-3), ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=1e-3),
                         nn.ReLU())


class GoogLeNetInception(nn.Module):
    """torchvision's GoogLeNet ``Inception`` block: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int):
        super().__init__()
        self.b1 = _conv_bn(cin, c1, 1)
        self.b2 = nn.Sequential(_conv_bn(cin, c3r, 1), _conv_bn(c3r, c3, 3, padding=1))
        self.b3 = nn.Sequential(_conv_bn(cin, c5r, 1), _conv_bn(c5r, c5, 3, padding=1))  # 3x3 as in torchvision
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _conv_bn(cin, pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


# (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj): torchvision's table, 3a..5b.
_GOOGLENET_BLOCKS = {
    "3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """The GoogLeNet (Inception v1) layout of torchvision, without the auxiliary heads.

    Compute and parameters sit in different places here, as in the real network:
    the early, high-resolution blocks do most of the work with few weights, and
    4e-5b plus the classifier hold most of the weights.
    """

    def __init__(self, classes: int = 1000):
        super().__init__()
        pool = lambda k: nn.MaxPool2d(k, 2, ceil_mode=True)  # noqa: E731
        self.stem = nn.Sequential(_conv_bn(3, 64, 7, 2, 3), pool(3), _conv_bn(64, 64, 1), _conv_bn(64, 192, 3, padding=1),
                                  pool(3))
        blocks: list[nn.Module] = []
        for name, cfg in _GOOGLENET_BLOCKS.items():
            if name in ("4a", "5a"):
                blocks.append(pool(3 if name == "4a" else 2))
            blocks.append(GoogLeNetInception(*cfg))
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Expert(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class MoEBlock(nn.Module):
    """Top-k mixture of experts, computed densely (every expert runs, gates zero the rest).

    Dense evaluation keeps the graph static (no data-dependent branch), which is
    what a partitioner sees for expert parallelism: 8 independent branches.
    """

    def __init__(self, hidden: int = 256, ffn: int = 512, experts: int = 8, top_k: int = 2):
        super().__init__()
        self.ln = nn.LayerNorm(hidden)
        self.router = nn.Linear(hidden, experts)
        self.experts = nn.ModuleList(Expert(hidden, ffn) for _ in range(experts))
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        probs = self.router(h).softmax(dim=-1)
        vals, idx = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, idx, vals / vals.sum(dim=-1, keepdim=True))
        out = x
        for e, expert in enumerate(self.experts):
            out = out + gates[..., e:e + 1] * expert(h)
        return out


def gpt2_decoder(batch: int = 2, seq: int = 64, layers: int = 12, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(GPT2Decoder(layers=layers), seed)
    ids = torch.randint(0, 2048, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return model, (ids,)


def resnet_cnn(batch: int = 2, size: int = 32, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(ResNetCNN(), seed)
    return model, (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


def inception_net(batch: int = 2, size: int = 16, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(InceptionNet(), seed)
    return model, (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


def googlenet(batch: int = 2, size: int = 64, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(GoogLeNet(), seed)
    return model, (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


def moe_block(batch: int = 2, seq: int = 64, seed: int = 0) -> tuple[nn.Module, tuple]:
    model = _init(MoEBlock(), seed)
    return model, (torch.randn(batch, seq, 256, generator=torch.Generator().manual_seed(seed)),)


def deep_decoder(layers: int = 72, seed: int = 0) -> tuple[nn.Module, tuple]:
    """A small-width decoder deep enough for a ~2,000-node graph (partitioning time)."""
    model = _init(GPT2Decoder(vocab=256, hidden=32, heads=2, layers=layers, max_len=16), seed)
    return model, (torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(seed)),)


def bert_base(batch: int = 1, seq: int = 128, seed: int = 0) -> tuple[nn.Module, tuple]:
    return bert_base_encoder(batch=batch, seq=seq, seed=seed)


CHAIN_GRAPHS = {"bert-base": bert_base, "gpt2-12": gpt2_decoder, "resnet": resnet_cnn}
BRANCHY_GRAPHS = {"inception": inception_net, "googlenet": googlenet, "moe": moe_block}
BENCHMARK_GRAPHS = {**CHAIN_GRAPHS, **BRANCHY_GRAPHS}
