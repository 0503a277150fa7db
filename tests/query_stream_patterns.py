"""Tiny models of a residual stream that starts as a learned tensor expanded to the batch, written here
from a description of the construct (no code copied):

* ``LearnedQueryNet`` (Perceiver / Q-Former style): ``q = self.queries.expand(B, -1, -1)`` and blocks
  ``q = q + attn(norm(q), context)``, ``q = q + mlp(norm(q))``: the expanded queries are the stream the
  blocks route; the sample and timestep reach them as the cross-attention's context only.
* ``ExpandedShiftNet``: an adaLN shift ``[B, C]`` expanded to the tokens ``[B, L, C]`` once in the root and
  added to each block's normalised input, ``norm(x) * (1 + scale) + shift``; the second block's input is
  computed from the shift (the first block added it), yet the shift is no stream: the blocks route ``x``.
* ``GatedConditionNet``: a time embedding expanded to the tokens once in the root, ``c`` [B, L, C], that
  each block adds to its normalised input and gates its MLP with, ``h = norm1(x) + c``,
  ``x = x + mlp(norm2(x)) * sigmoid(gate(c))``; ``c`` reaches the next block's input through this
  block's gate, yet each block routes ``x``.
* ``JointTextRefinerNet``: text tokens refined before the image blocks by blocks that attend over
  ``[text; image]`` and return the text, ``c = c + attn(norm(c), cat([norm(c), x]))``: what the first
  refiner adds reads the sample, yet its stream starts from the text input: it is no unit.
"""

import math

import torch
from torch import nn


def time_features(t, dim):
    """Sinusoidal features of t: [B] -> [B, dim]."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class CrossAttention(nn.Module):
    """Softmax attention of tokens [B, L, C] over ``context`` [B, M, C] (over themselves without one)."""

    def __init__(self, dim):
        super().__init__()
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x, context=None):
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        return self.out(torch.softmax(self.q(x) @ k.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1) @ v)


class QueryBlock(nn.Module):
    """Queries attend to the context, then an MLP; each a pre-norm residual branch."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, q, context):
        q = q + self.attn(self.norm1(q), context)
        return q + self.mlp(self.norm2(q))


class LearnedQueryNet(nn.Module):
    def __init__(self, dim=16, num_queries=5, depth=2):
        super().__init__()
        self.dim = dim
        self.embed, self.temb = nn.Linear(4, dim), nn.Linear(dim, dim)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim))
        self.blocks = nn.ModuleList(QueryBlock(dim) for _ in range(depth))
        self.readout = CrossAttention(dim)
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        """x: [B, L, 4] tokens, t: [B]; the output's tokens read the queries."""
        context = self.embed(x) + self.temb(time_features(t, self.dim))[:, None]
        q = self.queries.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, context)
        return self.out(self.readout(context, q))


class ShiftBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mix = CrossAttention(dim)

    def forward(self, x, shift, scale):
        h = self.norm(x) * (1 + scale) + shift
        return x + self.mix(h)


class ExpandedShiftNet(nn.Module):
    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(4, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.blocks = nn.ModuleList(ShiftBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        x = self.embed(x)
        shift, scale = (m[:, None].expand(-1, x.shape[1], -1)
                        for m in self.time(time_features(t, self.dim)).chunk(2, dim=-1))
        for block in self.blocks:
            x = block(x, shift, scale)
        return self.out(x)


class GatedConditionBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim)
        self.gate = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, c):
        h = self.norm1(x) + c
        x = x + self.attn(h)
        return x + self.mlp(self.norm2(x)) * torch.sigmoid(self.gate(c))


class GatedConditionNet(nn.Module):
    def __init__(self, dim=16, depth=3):
        super().__init__()
        self.dim = dim
        self.embed, self.temb = nn.Linear(4, dim), nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(GatedConditionBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        x = self.embed(x)
        c = self.temb(time_features(t, self.dim))[:, None].expand(-1, x.shape[1], -1)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)


class JointTextRefiner(nn.Module):
    """Text tokens attend over [text; image] tokens; returns the text tokens only."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, c, x):
        h = self.norm1(c)
        c = c + self.attn(h, torch.cat([h, x], dim=1))
        return c + self.mlp(self.norm2(c))


class JointTextRefinerNet(nn.Module):
    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.dim = dim
        self.embed, self.temb, self.text = nn.Linear(4, dim), nn.Linear(dim, dim), nn.Linear(8, dim)
        self.refiners = nn.ModuleList(JointTextRefiner(dim) for _ in range(depth))
        self.blocks = nn.ModuleList(QueryBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long(),
                torch.randn(batch_size, 3, 8)), {}

    def forward(self, x, t, text):
        """x: [B, L, 4] image tokens, t: [B], text: [B, M, 8]; the image blocks read the refined text."""
        x = self.embed(x) + self.temb(time_features(t, self.dim))[:, None]
        c = self.text(text)
        for refiner in self.refiners:
            c = refiner(c, x)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)
