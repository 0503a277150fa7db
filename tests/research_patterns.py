"""Tiny models that reproduce how research code, as released, calls its blocks (each written
here from a description of the construct, not copied).

* ``HelperCheckpointNet``: blocks called through module-level helper functions, a
  ``checkpoint(fn, *args)`` that checkpoints only while training, and an
  ``auto_grad_checkpoint(module, *args, **kwargs)`` that reads an attribute of the module.
* ``SuperNet``: the root's forward adds a step and hands on with ``super().forward(...)``.
* ``MaskedTrainNet``: masked-token training (a masked diffusion transformer): while training
  with ``mask_ratio > 0`` the encoder runs on the kept tokens, a side block fills the masked
  ones back in, and the decoder runs; inference takes the other branch.
* ``UnseenCallNet``: a training-only branch calls the blocks through a local list.
* ``ReparamNet``: ``train()`` folds a scale into the weights and ``eval()`` unfolds it.
* ``DataDependentNet``: Python on tensor values (``len(set(lengths.tolist()))``, a router
  reading ``.numpy()``), which capture on fake tensors cannot follow.
* ``DispatchNet``: one loop variable over blocks of three kinds, dispatched by
  ``isinstance``, with a gradient-checkpointing branch; the modulation block takes no task.
"""

import torch
import torch.utils.checkpoint
from torch import nn


def checkpoint(fn, *args):
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def auto_grad_checkpoint(module, *args, **kwargs):
    if getattr(module, "grad_checkpointing", False):
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False, **kwargs)
    return module(*args, **kwargs)


def embed_time(t, dim):
    freqs = torch.exp(-torch.arange(dim // 2, dtype=torch.float32) / (dim // 2) * 9.2)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    """Tokens [B, L, C] conditioned on c [B, C]."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mod = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.grad_checkpointing = False

    def forward(self, x, c):
        h = self.norm(x) * (1 + self.mod(c)[:, None])
        x = x + self.mlp(h)
        return x


class TokenNet(nn.Module):
    """The shared stem and head: x [B, L, in_dim], t [B]."""

    def __init__(self, in_dim=4, dim=16, depth=4):
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(in_dim, dim)
        self.temb = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.out = nn.Linear(dim, in_dim)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def embed(self, x, t):
        return self.inp(x), self.temb(embed_time(t, self.dim))


class HelperCheckpointNet(TokenNet):
    def forward(self, x, t):
        x, c = self.embed(x, t)
        for i, block in enumerate(self.blocks):
            if i % 2 == 0:
                x = checkpoint(block, x, c)
            else:
                x = auto_grad_checkpoint(block, x, c)
        return self.out(x)


class BaseNet(TokenNet):
    def forward(self, x, t):
        x, c = self.embed(x, t)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)


class SuperNet(BaseNet):
    def forward(self, x, t):
        x = x * 0.5
        return super().forward(x, t) * 2.0


class MaskedTrainNet(TokenNet):
    def __init__(self):
        super().__init__(depth=4)
        self.side = Block(self.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.dim))

    def forward(self, x, t, mask_ratio=0.0):
        x, c = self.embed(x, t)
        if self.training and mask_ratio > 0:
            keep = max(1, int(x.shape[1] * (1 - mask_ratio)))
            order = torch.argsort(torch.rand(x.shape[0], x.shape[1]), dim=1)
            kept = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, x.shape[2]))
            for block in self.blocks[:2]:
                kept = block(kept, c)
            x = self.fill_masked(kept, c, order)
            for block in self.blocks[2:]:
                x = block(x, c)
        else:
            for block in self.blocks:
                x = block(x, c)
        return self.out(x)

    def fill_masked(self, kept, c, order):
        full = self.mask_token.expand(kept.shape[0], order.shape[1], -1).clone()
        full = full.scatter(1, order[:, :kept.shape[1], None].expand(-1, -1, kept.shape[2]), kept)
        return self.side(full, c)


class UnseenCallNet(TokenNet):
    """While training with ``shuffle``, the blocks run from a local list in random order: the
    source does not say which modules the list holds."""

    def forward(self, x, t, shuffle=False):
        x, c = self.embed(x, t)
        if self.training and shuffle:
            order = list(self.blocks)
            for i in torch.randperm(len(order)).tolist():
                x = order[i](x, c)
        else:
            for block in self.blocks:
                x = block(x, c)
        return self.out(x)


class ReparamNet(BaseNet):
    """``train()`` multiplies each block's first MLP weight by its scale, ``eval()`` divides it back
    (not bit-exactly: ``w * 3 / 3`` need not be ``w``), and counts the switches."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(3.0))
        self.mode_switches = 0

    def train(self, mode=True):
        if mode != self.training:
            self.mode_switches += 1
            with torch.no_grad():
                for block in self.blocks:
                    block.mlp[0].weight.mul_(self.scale if mode else 1 / self.scale)
        return super().train(mode)


class Router(nn.Module):
    """Top-1 expert choice made in numpy, as some mixture-of-experts routers do."""

    def __init__(self, dim, experts=2):
        super().__init__()
        self.gate = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(experts))

    def forward(self, x):
        choice = self.gate(x.mean(1)).argmax(-1).cpu().numpy()
        rows = [self.experts[int(k)](x[i:i + 1]) for i, k in enumerate(choice)]
        return torch.cat(rows)


class ExpertBlock(Block):
    def __init__(self, dim):
        super().__init__(dim)
        self.moe = Router(dim)

    def forward(self, x, c):
        h = self.norm(x) * (1 + self.mod(c)[:, None])
        x = x + self.moe(h)
        return x


class DataDependentNet(TokenNet):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(self.dim), ExpertBlock(self.dim), Block(self.dim)])

    def forward(self, x, t, lengths=None):
        x, c = self.embed(x, t)
        if lengths is not None and (len(set(lengths.tolist())) > 1 or int(lengths.max()) < x.shape[1]):
            x = x * (torch.arange(x.shape[1])[None, :] < lengths[:, None])[..., None]
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)

    def example_inputs(self, batch_size=2):
        lengths = torch.arange(batch_size) % 3 + 4
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {"lengths": lengths}


class ConvRes(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.conv(torch.relu(x))


class CondAttn(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(ch, 2 * ch)

    def forward(self, x, c):
        k, v = self.kv(c).chunk(2, dim=-1)
        w = torch.sigmoid((self.q(x) * k[:, :, None, None]).sum(1, keepdim=True))
        return x + w * v[:, :, None, None]


class Modulate(nn.Module):
    """No residual: scale and shift by the timestep embedding."""

    def __init__(self, ch):
        super().__init__()
        self.ab = nn.Linear(ch, 2 * ch)

    def forward(self, x, r):
        a, b = self.ab(r).chunk(2, dim=-1)
        return x * (1 + a[:, :, None, None]) + b[:, :, None, None]


class DispatchNet(nn.Module):
    def __init__(self, ch=8):
        super().__init__()
        self.ch = ch
        self.inp = nn.Conv2d(3, ch, 1)
        self.temb = nn.Linear(ch, ch)
        self.blocks = nn.ModuleList([ConvRes(ch), CondAttn(ch), Modulate(ch), ConvRes(ch), CondAttn(ch)])
        self.out = nn.Conv2d(ch, 3, 1)
        self.gradient_checkpointing = False

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 3, 4, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        r = self.temb(embed_time(t, self.ch))
        x = self.inp(x)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            for block in self.blocks:
                if isinstance(block, ConvRes):
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                elif isinstance(block, CondAttn):
                    x = torch.utils.checkpoint.checkpoint(block, x, r, use_reentrant=False)
                else:
                    x = torch.utils.checkpoint.checkpoint(block, x, r, use_reentrant=False)
        else:
            for block in self.blocks:
                if isinstance(block, ConvRes):
                    x = block(x)
                elif isinstance(block, CondAttn):
                    x = block(x, r)
                else:
                    x = block(x, r)
        return self.out(x)
