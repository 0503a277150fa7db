"""Tiny models that reproduce constructs of released diffusion code (their
source must be a file: the compiler rewrites it).

* ``CheckpointUNet``: guided-diffusion's ``AttentionBlock.forward`` always runs
  ``checkpoint(self._forward, (x,), self.parameters(), True)``, an autograd
  Function whose forward runs under ``no_grad()`` (guided_diffusion/nn.py);
  its ``ResBlock`` goes through the same helper with the flag off.
* ``EDMNet``: EDM's ``UNetBlock`` (training/networks.py): one block class for plain,
  channel-changing, resampling and attention blocks; its ``Conv2d`` casts the weight
  to the input's dtype, adds the bias in place after the conv and resamples with a
  filter it computes per call (``conv_transpose2d`` up, strided ``conv2d`` down); the
  decoder concatenates encoder skips when the widths ask for it.
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


class EDMConv(nn.Module):
    """A conv whose weight is cast per call and whose bias is a separate in-place add; ``kernel=0``
    only resamples, through a fixed [1, 1] filter tiled over the channels."""

    def __init__(self, cin, cout, kernel, up=False, down=False):
        super().__init__()
        self.up, self.down = up, down
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) / math.sqrt(cin * kernel * kernel)) if kernel else None
        self.bias = nn.Parameter(0.1 * torch.randn(cout)) if kernel else None
        self.register_buffer("resample_filter", torch.ones(1, 1, 2, 2) / 4 if up or down else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        if self.up:
            x = F.conv_transpose2d(x, f.mul(4).tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2)
        if self.down:
            x = F.conv2d(x, f.tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2)
        if w is not None:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype).reshape(1, -1, 1, 1))
        return x


class EDMBlock(nn.Module):
    """Residual conv part (projection skip when the width changes or it resamples), then an
    optional attention part on the new width: two residual adds on streams of two widths."""

    def __init__(self, cin, cout, emb, up=False, down=False, attention=False):
        super().__init__()
        self.in_channels, self.attention = cin, attention
        self.norm0 = nn.GroupNorm(4, cin)
        self.conv0 = EDMConv(cin, cout, 3, up=up, down=down)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = nn.GroupNorm(4, cout)
        self.conv1 = EDMConv(cout, cout, 3)
        self.skip = EDMConv(cin, cout, 1 if cin != cout else 0, up=up, down=down) if cin != cout or up or down else None
        if attention:
            self.norm2 = nn.GroupNorm(4, cout)
            self.qkv = EDMConv(cout, 3 * cout, 1)
            self.proj = EDMConv(cout, cout, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        x = F.silu(self.norm1(x.add_(self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype))))
        x = self.conv1(x)
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        x = x * 0.5 ** 0.5
        if self.attention:
            q, k, v = self.qkv(self.norm2(x)).reshape(x.shape[0], x.shape[1], 3, -1).unbind(2)
            w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(x.shape[1])).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = self.proj(a.reshape(*x.shape)).add_(x)
            x = x * 0.5 ** 0.5
        return x


class EinsumProjection(nn.Module):
    """A 1x1 projection written as an einsum: no op the compiler knows as a projection skip."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / math.sqrt(cin))

    def forward(self, x):
        return torch.einsum("oc,nchw->nohw", self.weight, x)


class EDMNet(nn.Module):
    def __init__(self, channels=8, einsum_skip=False):
        super().__init__()
        c, emb = channels, 2 * channels
        self.channels = channels
        self.map = nn.Linear(c, emb)
        self.enc = nn.ModuleDict({
            "conv": EDMConv(3, c, 3),
            "block0": EDMBlock(c, c, emb),
            "block1": EDMBlock(c, 2 * c, emb, attention=True),  # widths c and 2c: not routable in branch mode
            "down": EDMBlock(2 * c, 2 * c, emb, down=True),
        })
        self.dec = nn.ModuleDict({
            "in0": EDMBlock(2 * c, 2 * c, emb, attention=True),
            "up": EDMBlock(2 * c, 2 * c, emb, up=True),
            "block0": EDMBlock(3 * c, c, emb),  # after concatenating enc.block0's output
        })
        self.out = EDMConv(c, 3, 3)
        if einsum_skip:  # enc.block1's first residual add is then not recognised
            self.enc["block1"].skip = EinsumProjection(c, 2 * c)

    def forward(self, x, noise_labels):
        emb = F.silu(self.map(timestep_embedding(noise_labels, self.channels)))
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, EDMBlock) else block(x)
            skips.append(x)
        skips = skips[:2]
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop(0)[:, :block.in_channels - x.shape[1]]], dim=1)
            x = block(x, emb)
        return self.out(x)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, 3, 8, 8, generator=g), torch.rand(batch_size, generator=g)), {}
