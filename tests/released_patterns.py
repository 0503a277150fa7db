"""Tiny models that reproduce constructs of released diffusion code (their
source must be a file: the compiler rewrites it).

* ``CheckpointUNet``: guided-diffusion's ``AttentionBlock.forward`` always runs
  ``checkpoint(self._forward, (x,), self.parameters(), True)``, an autograd
  Function whose forward runs under ``no_grad()`` (guided_diffusion/nn.py);
  its ``ResBlock`` goes through the same helper with the flag off.
* ``CondCallNet``: EDM's ``x = block(x, emb) if isinstance(block, UNetBlock) else block(x)``
  (training/networks.py) and EDM2's ``x = block(x) if 'conv' in name else block(x, emb)``
  (networks_edm2.py): two calls of one name on the loop line.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def checkpoint(func, inputs, params, flag):
    if flag:
        args = tuple(inputs) + tuple(params)
        return CheckpointFunction.apply(func, len(inputs), *args)
    else:
        return func(*inputs)


class CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run_function, length, *args):
        ctx.run_function = run_function
        ctx.input_tensors = list(args[:length])
        ctx.input_params = list(args[length:])
        with torch.no_grad():
            output_tensors = ctx.run_function(*ctx.input_tensors)
        return output_tensors

    @staticmethod
    def backward(ctx, *output_grads):
        ctx.input_tensors = [x.detach().requires_grad_(True) for x in ctx.input_tensors]
        with torch.enable_grad():
            shallow_copies = [x.view_as(x) for x in ctx.input_tensors]
            output_tensors = ctx.run_function(*shallow_copies)
        input_grads = torch.autograd.grad(output_tensors, ctx.input_tensors + ctx.input_params, output_grads,
                                          allow_unused=True)
        del ctx.input_tensors
        del ctx.input_params
        del output_tensors
        return (None, None) + input_grads


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepBlock(nn.Module):
    pass


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    def __init__(self, channels, emb_channels):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, channels))
        self.out_layers = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.use_checkpoint = False

    def forward(self, x, emb):
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[..., None, None]
        h = self.out_layers(h)
        return x + h


class AttentionBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.GroupNorm(4, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        return checkpoint(self._forward, (x,), self.parameters(), True)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(c), dim=-1)
        h = self.proj_out(torch.einsum("bts,bcs->bct", w, v))
        return (x + h).reshape(b, c, *spatial)


class CheckpointUNet(nn.Module):
    """ADM-like stack: attention blocks (always checkpointed) before, in and after the middle."""

    def __init__(self, channels=8):
        super().__init__()
        self.channels = channels
        emb = 2 * channels
        self.time_embed = nn.Sequential(nn.Linear(channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(3, channels, 3, padding=1)),
            TimestepEmbedSequential(ResBlock(channels, emb), AttentionBlock(channels)),
            TimestepEmbedSequential(ResBlock(channels, emb)),
        ])
        self.middle_block = TimestepEmbedSequential(ResBlock(channels, emb), AttentionBlock(channels), ResBlock(channels, emb))
        self.output_blocks = nn.ModuleList([
            TimestepEmbedSequential(ResBlock(channels, emb), AttentionBlock(channels)),
            TimestepEmbedSequential(ResBlock(channels, emb)),
        ])
        self.out = nn.Sequential(nn.GroupNorm(4, channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x, timesteps):
        emb = self.time_embed(timestep_embedding(timesteps, self.channels))
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(h, emb)
        return self.out(h)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, 3, 8, 8, generator=g), torch.randint(0, 1000, (batch_size,), generator=g)), {}


class UNetBlock(nn.Module):
    def __init__(self, channels, emb_channels):
        super().__init__()
        self.norm = nn.GroupNorm(4, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, channels)

    def forward(self, x, emb):
        h = self.conv(F.silu(self.norm(x) + self.affine(emb)[..., None, None]))
        return x + h


class Plain(nn.Module):
    """A block with no embedding input and a residual add of its own."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv(F.silu(x))


class CondCallNet(nn.Module):
    """EDM/EDM2-style loops: one name, two calls on the loop line."""

    def __init__(self, channels=8):
        super().__init__()
        self.channels = channels
        self.map = nn.Linear(channels, channels)
        self.enc = nn.ModuleDict({
            "conv": nn.Conv2d(3, channels, 3, padding=1),
            "block0": UNetBlock(channels, channels),
            "plain": Plain(channels),
            "block1": UNetBlock(channels, channels),
        })
        self.dec = nn.ModuleDict({
            "block0": UNetBlock(channels, channels),
            "conv_out": nn.Conv2d(channels, 3, 3, padding=1),
        })

    def forward(self, x, noise_labels):
        emb = F.silu(self.map(timestep_embedding(noise_labels, self.channels)))
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
        for name, block in self.dec.items():
            x = block(x) if 'conv' in name else block(x, emb)
        return x

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, 3, 8, 8, generator=g), torch.rand(batch_size, generator=g)), {}
