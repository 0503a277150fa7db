"""Tiny models that reproduce how more research backbones, as released, call their blocks (each
written here from a description of the construct, not copied):

* ``FluxRefNet``: reference-Flux style. Double-stream blocks called with keywords return two
  streams (``img, txt = block(img=img, txt=txt, vec=vec, pe=pe)``); a modulation module returns
  dataclasses with shift/scale/gate fields; single-stream blocks run on ``torch.cat((txt, img), 1)``
  made in the root, which slices the image tokens back out afterwards.
* ``SD3RefNet``: reference-SD3 style MMDiT. ``context, x = block(context, x, c=c_mod)`` with the
  context first; each joint block holds two halves (``pre_attention`` / ``post_attention``
  methods) mixed by a module-level function; the last block is "pre-only" for the context and
  returns ``None`` for it.
* ``ProjectorSiT``: a SiT with a representation-alignment projector: the root returns ``(x, zs)``
  where ``zs`` are projector-MLP outputs of one intermediate block's tokens; blocks are called
  with ``block(x, c, **block_kwargs)``.
* ``DecoupledDiT``: a decoupled encoder-decoder DiT: the first blocks turn the tokens into a
  condition ``s``, the last blocks take the noisy tokens again, modulated token-wise by ``s``.
* ``DictNet`` / ``StageNet``: blocks in an ``nn.ModuleDict`` walked by ``.items()`` and
  ``.values()``; blocks in stages (an ``nn.ModuleList`` of ``nn.ModuleList``) walked by two loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t, dim):
    """Sinusoidal features of t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def mlp(dim, hidden):
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def attend(x):
    """Parameter-free token mixing: softmax attention of x [B, L, C] onto itself."""
    weights = torch.softmax(x @ x.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)
    return weights @ x


def tokens_example(batch_size, length=6, width=4):
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(10, 900, batch_size).round().long()
    return torch.randn(batch_size, length, width, generator=g), t


# -- reference Flux ------------------------------------------------------------------------------

@dataclass
class ModulationOut:
    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class Modulation(nn.Module):
    """vec [B, C] -> one or two ModulationOut of [B, 1, C] fields (the second None when single)."""

    def __init__(self, dim, double):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:]) if self.is_double else None


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.img_mod, self.txt_mod = Modulation(dim, True), Modulation(dim, True)
        self.img_norm1, self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim)
        self.img_qkv, self.txt_qkv = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.img_proj, self.txt_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.img_norm2, self.txt_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.img_mlp, self.txt_mlp = mlp(dim, 2 * dim), mlp(dim, 2 * dim)

    def forward(self, img, txt, vec, pe):
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q = self.img_qkv((1 + img_mod1.scale) * self.img_norm1(img) + img_mod1.shift)
        txt_q = self.txt_qkv((1 + txt_mod1.scale) * self.txt_norm1(txt) + txt_mod1.shift)
        mixed = attend(torch.cat((txt_q, img_q), dim=1) + pe)
        txt_attn, img_attn = mixed[:, :txt.shape[1]], mixed[:, txt.shape[1]:]
        img = img + img_mod1.gate * self.img_proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp((1 + img_mod2.scale) * self.img_norm2(img) + img_mod2.shift)
        txt = txt + txt_mod1.gate * self.txt_proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp((1 + txt_mod2.scale) * self.txt_norm2(txt) + txt_mod2.shift)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.modulation = Modulation(dim, False)
        self.pre_norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, 3 * dim)
        self.linear2 = nn.Linear(3 * dim, dim)

    def forward(self, x, vec, pe):
        mod, _ = self.modulation(vec)
        x_mod = (1 + mod.scale) * self.pre_norm(x) + mod.shift
        q, hidden = torch.split(self.linear1(x_mod), [x.shape[-1], 2 * x.shape[-1]], dim=-1)
        return x + mod.gate * self.linear2(torch.cat((attend(q + pe), F.gelu(hidden)), dim=2))


class FluxRefNet(nn.Module):
    def __init__(self, in_dim=4, context_dim=6, dim=16, double=2, single=2):
        super().__init__()
        self.dim = dim
        self.img_in = nn.Linear(in_dim, dim)
        self.txt_in = nn.Linear(context_dim, dim)
        self.time_in = mlp(dim, dim)
        self.vector_in = nn.Linear(context_dim, dim)
        self.pe_embedder = nn.Linear(1, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(dim) for _ in range(double))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(dim) for _ in range(single))
        self.final_layer = nn.Linear(dim, in_dim)

    def forward(self, img, txt, timesteps, y):
        """img: [B, L, in_dim] tokens, txt: [B, L_txt, context_dim], timesteps: [B], y: [B, context_dim]."""
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, self.dim)) + self.vector_in(y)
        txt = self.txt_in(txt)
        ids = torch.arange(txt.shape[1] + img.shape[1], dtype=img.dtype)[None, :, None]
        pe = torch.sin(self.pe_embedder(ids))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe)
        img = img[:, txt.shape[1]:, ...]
        return self.final_layer(img)

    def example_inputs(self, batch_size=2):
        img, t = tokens_example(batch_size)
        g = torch.Generator().manual_seed(1)
        return (img, torch.randn(batch_size, 3, 6, generator=g), t, torch.randn(batch_size, 6, generator=g)), {}
