"""A tiny model whose rotary tables live in a plain helper object's dict cache, filled during the
forward (one entry per sequence length), written here from a description of the construct: the
model holds ``self.rope = RotaryTables(dim)`` (no ``nn.Module``), whose ``tables`` dict maps a
length to its ``(cos, sin)`` pair and whose ``lengths`` list records the order they were made in."""

import math

import torch
from torch import nn


class RotaryTables:
    """cos/sin tables of rotary position embeddings, computed once per sequence length and kept."""

    def __init__(self, dim):
        self.dim = dim
        self.tables = {}
        self.lengths = []

    def __call__(self, length):
        if length not in self.tables:
            freqs = torch.exp(-math.log(10000.0) * torch.arange(self.dim // 2, dtype=torch.float32) / (self.dim // 2))
            angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]
            self.tables[length] = (angles.cos(), angles.sin())
            self.lengths.append(length)
        return self.tables[length]


def rotate(x, cos, sin):
    """Rotary embedding of x [B, L, C] by the tables [L, C/2]."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class RotaryBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, rope):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        cos, sin = rope
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return x + self.out(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1) @ v)


class RotaryCacheNet(nn.Module):
    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.dim = dim
        self.rope = RotaryTables(dim)
        self.embed, self.temb = nn.Linear(4, dim), nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(RotaryBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        freqs = torch.exp(-math.log(10000.0) * torch.arange(self.dim // 2, dtype=torch.float32) / (self.dim // 2))
        angles = t.float()[:, None] * freqs[None]
        x = self.embed(x) + self.temb(torch.cat([angles.cos(), angles.sin()], dim=1))[:, None]
        rope = self.rope(x.shape[1])
        for block in self.blocks:
            x = block(x, rope)
        return self.out(x)
