"""Tiny models that checkpoint an ``nn.Sequential`` of residual blocks segment by segment with
``torch.utils.checkpoint.checkpoint_sequential``, which calls each child itself (not the Sequential's
forward), written here from a description of the construct:

* ``SegmentedCheckpointNet``: the root calls ``checkpoint_sequential(self.blocks, 2, x, use_reentrant=...)``
  under ``if self.grad_checkpointing and torch.is_grad_enabled():`` and ``self.blocks(x)`` otherwise; the
  Sequential holds a ``Dropout`` between the blocks, a child that is no unit.
* ``AlwaysSegmentedNet``: the root always calls ``checkpoint_sequential`` (the example inputs take it).
* ``DecoratedSegmentedNet``: as AlwaysSegmentedNet, with blocks whose forward is decorated by a
  ``functools.wraps`` wrapper taking ``(*args, **kwargs)`` (a logging or profiling decorator).
* ``LoopElseNet``: ``checkpoint_sequential`` under ``if self.grad_checkpointing:``, a Python loop over the
  blocks otherwise; the capture (eval, no checkpointing) takes the loop, never the checkpointed call.

Both take ``reentrant``, handed to ``use_reentrant``.
"""

import functools
import math

import torch
import torch.utils.checkpoint
from torch import nn


def time_features(t, dim):
    """Sinusoidal features of t: [B] -> [B, dim]."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResidualMLP(nn.Module):
    """A pre-norm residual MLP on tokens [B, L, C], taking the stream alone (as checkpoint_sequential needs)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class SegmentedCheckpointNet(nn.Module):
    def __init__(self, dim=16, reentrant=False):
        super().__init__()
        self.dim, self.reentrant, self.grad_checkpointing = dim, reentrant, False
        self.embed, self.temb = nn.Linear(4, dim), nn.Linear(dim, dim)
        self.blocks = nn.Sequential(ResidualMLP(dim), nn.Dropout(0.0), ResidualMLP(dim), ResidualMLP(dim))
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        x = self.embed(x) + self.temb(time_features(t, self.dim))[:, None]
        if self.grad_checkpointing and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint_sequential(self.blocks, 2, x, use_reentrant=self.reentrant)
        else:
            x = self.blocks(x)
        return self.out(x)


class AlwaysSegmentedNet(SegmentedCheckpointNet):
    def forward(self, x, t):
        x = self.embed(x) + self.temb(time_features(t, self.dim))[:, None]
        x = torch.utils.checkpoint.checkpoint_sequential(self.blocks, 2, x, use_reentrant=self.reentrant)
        return self.out(x)


def counted(forward):
    """A decorator of a forward that counts its calls, the way a logging or profiling one wraps it."""
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        return forward(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


class DecoratedResidualMLP(ResidualMLP):
    @counted
    def forward(self, x):
        return x + self.mlp(self.norm(x))


class DecoratedSegmentedNet(AlwaysSegmentedNet):
    def __init__(self, dim=16, reentrant=False):
        super().__init__(dim, reentrant)
        self.blocks = nn.Sequential(DecoratedResidualMLP(dim), nn.Dropout(0.0), DecoratedResidualMLP(dim),
                                    DecoratedResidualMLP(dim))


class LoopElseNet(SegmentedCheckpointNet):
    def forward(self, x, t):
        x = self.embed(x) + self.temb(time_features(t, self.dim))[:, None]
        if self.grad_checkpointing:
            x = torch.utils.checkpoint.checkpoint_sequential(self.blocks, 2, x, use_reentrant=self.reentrant)
        else:
            for block in self.blocks:
                x = block(x)
        return self.out(x)
