"""Tiny models that reproduce how more research backbones, as released, call their blocks (each
written here from a description of the construct, not copied):

* ``FluxRefNet``: reference-Flux style. Double-stream blocks called with keywords return two
  streams (``img, txt = block(img=img, txt=txt, vec=vec, pe=pe)``); a modulation module returns
  dataclasses with shift/scale/gate fields; single-stream blocks run on ``torch.cat((txt, img), 1)``
  made in the root, which slices the image tokens back out afterwards.
* ``SD3RefNet``: reference-SD3 style MMDiT. ``context, x = block(context, x, c=c_mod)`` with the
  context first; each joint block holds two halves (``pre_attention`` / ``post_attention``
  methods) mixed by a module-level function, checkpointed by default; its forward is
  ``(*args, **kwargs)``; the last block is "pre-only" for the context and returns ``None`` for it.
* ``ProjectorSiT``: a SiT with a representation-alignment projector: the root returns ``(x, zs)``
  where ``zs`` are projector-MLP outputs of one intermediate block's tokens; blocks are called
  with ``block(x, c, **block_kwargs)``.
* ``DecoupledDiT``: a decoupled encoder-decoder DiT: the first blocks turn the tokens into a
  condition ``s``, the last blocks take the noisy tokens again, modulated token-wise by ``s``;
  the root returns ``s`` too, and skips the encoder when given one.
* ``DictNet`` / ``StageNet``: blocks in an ``nn.ModuleDict`` walked by ``.items()`` and
  ``.values()``; blocks in stages (an ``nn.ModuleList`` of ``nn.ModuleList``) walked by two loops.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
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


# -- reference SD3 MMDiT -------------------------------------------------------------------------

class DismantledBlock(nn.Module):
    """One stream's half of a joint block: ``pre_attention`` before the shared attention, and
    ``post_attention`` after it (not called for the context of a pre-only block)."""

    def __init__(self, dim, pre_only=False):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, dim)
        self.adaLN_modulation = nn.Linear(dim, (2 if pre_only else 6) * dim)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
            self.mlp = mlp(dim, 2 * dim)

    def pre_attention(self, x, c):
        if self.pre_only:
            shift, scale = self.adaLN_modulation(F.silu(c))[:, None].chunk(2, dim=-1)
            return self.qkv(self.norm1(x) * (1 + scale) + shift), None
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(F.silu(c))[:, None].chunk(6, dim=-1)
        return self.qkv(self.norm1(x) * (1 + scale) + shift), (x, gate, shift_mlp, scale_mlp, gate_mlp)

    def post_attention(self, attn, x, gate, shift_mlp, scale_mlp, gate_mlp):
        x = x + gate * self.proj(attn)
        return x + gate_mlp * self.mlp(self.norm2(x) * (1 + scale_mlp) + shift_mlp)


def block_mixing(*args, use_checkpoint=True, **kwargs):
    if use_checkpoint:
        return torch.utils.checkpoint.checkpoint(_block_mixing, *args, use_reentrant=False, **kwargs)
    return _block_mixing(*args, **kwargs)


def _block_mixing(context, x, context_block, x_block, c):
    context_qkv, context_intermediates = context_block.pre_attention(context, c)
    x_qkv, x_intermediates = x_block.pre_attention(x, c)
    attn = attend(torch.cat((context_qkv, x_qkv), dim=1))
    context_attn, x_attn = attn[:, :context_qkv.shape[1]], attn[:, context_qkv.shape[1]:]
    if context_block.pre_only:
        context = None
    else:
        context = context_block.post_attention(context_attn, *context_intermediates)
    x = x_block.post_attention(x_attn, *x_intermediates)
    return context, x


class JointBlock(nn.Module):
    def __init__(self, dim, pre_only=False):
        super().__init__()
        self.context_block = DismantledBlock(dim, pre_only=pre_only)
        self.x_block = DismantledBlock(dim)

    def forward(self, *args, **kwargs):
        return block_mixing(*args, context_block=self.context_block, x_block=self.x_block, **kwargs)


class SD3RefNet(nn.Module):
    def __init__(self, channels=4, context_dim=6, dim=16, patch=2, depth=3):
        super().__init__()
        self.dim, self.patch, self.channels = dim, patch, channels
        self.x_embedder = nn.Conv2d(channels, dim, patch, stride=patch)
        self.t_embedder = mlp(dim, dim)
        self.y_embedder = nn.Linear(context_dim, dim)
        self.context_embedder = nn.Linear(context_dim, dim)
        self.joint_blocks = nn.ModuleList(JointBlock(dim, pre_only=i == depth - 1) for i in range(depth))
        self.final_norm = nn.LayerNorm(dim)
        self.final_linear = nn.Linear(dim, patch * patch * channels)

    def unpatchify(self, x, h, w):
        p, c = self.patch, self.channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y, context):
        """x: [B, C, H, W] latents, t: [B], y: [B, context_dim] pooled text, context: [B, L, context_dim]."""
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        x = self.x_embedder(x).flatten(2).transpose(1, 2)
        c_mod = self.t_embedder(timestep_embedding(t, self.dim)) + self.y_embedder(y)
        context = self.context_embedder(context)
        for block in self.joint_blocks:
            context, x = block(context, x, c=c_mod)
        return self.unpatchify(self.final_linear(self.final_norm(x)), h, w)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 4, 4, 4, generator=g), t, torch.randn(batch_size, 6, generator=g),
                torch.randn(batch_size, 3, 6, generator=g)), {}


# -- SiT with a representation-alignment projector -----------------------------------------------

class SiTBlock(nn.Module):
    """adaLN block; keyword options arrive through ``**block_kwargs`` (positions for the attention)."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim, elementwise_affine=False)
        self.attn_proj = nn.Linear(dim, dim)
        self.mlp = mlp(dim, 2 * dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim))

    def forward(self, x, c, pos=None, **unused):
        shift, scale, gate_msa, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(4, dim=-1)
        h = self.norm1(x) * (1 + scale) + shift
        x = x + gate_msa * self.attn_proj(attend(h if pos is None else h + pos))
        return x + gate_mlp * self.mlp(self.norm2(x))


class ProjectorSiT(nn.Module):
    def __init__(self, in_dim=4, dim=16, depth=4, encoder_depth=2, z_dims=(8, 12), classes=5):
        super().__init__()
        self.dim, self.encoder_depth = dim, encoder_depth
        self.x_embedder = nn.Linear(in_dim, dim)
        self.t_embedder = mlp(dim, dim)
        self.y_embedder = nn.Embedding(classes + 1, dim)
        self.pos = nn.Parameter(torch.randn(1, 6, dim) * 0.1)
        self.blocks = nn.ModuleList(SiTBlock(dim) for _ in range(depth))
        self.projectors = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, z))
                                        for z in z_dims)
        self.final_layer = nn.Linear(dim, in_dim)

    def forward(self, x, t, y):
        """x: [B, L, in_dim] tokens, t: [B], y: [B] labels; returns (prediction, [projected features])."""
        x = self.x_embedder(x)
        n, length, d = x.shape
        c = self.t_embedder(timestep_embedding(t, self.dim)) + self.y_embedder(y)
        block_kwargs = {"pos": self.pos}
        zs = []
        for i, block in enumerate(self.blocks):
            x = block(x, c, **block_kwargs)
            if (i + 1) == self.encoder_depth:
                zs = [projector(x.reshape(-1, d)).reshape(n, length, -1) for projector in self.projectors]
        return self.final_layer(x), zs

    def example_inputs(self, batch_size=2):
        x, t = tokens_example(batch_size)
        return (x, t, torch.arange(batch_size) % 5), {}


# -- decoupled encoder-decoder DiT ---------------------------------------------------------------

class TokenwiseBlock(nn.Module):
    """adaLN from a condition that may be per token ([B, L, C]) or per sample ([B, 1, C])."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim, elementwise_affine=False)
        self.attn_proj = nn.Linear(dim, dim)
        self.mlp = mlp(dim, 2 * dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn_proj(attend(self.norm1(x) * (1 + scale1) + shift1))
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DecoupledDiT(nn.Module):
    def __init__(self, in_dim=4, dim=16, encoder_blocks=2, decoder_blocks=2, classes=5):
        super().__init__()
        self.dim, self.num_encoder_blocks = dim, encoder_blocks
        self.num_blocks = encoder_blocks + decoder_blocks
        self.s_embedder = nn.Linear(in_dim, dim)
        self.x_embedder = nn.Linear(in_dim, dim)
        self.t_embedder = mlp(dim, dim)
        self.y_embedder = nn.Embedding(classes + 1, dim)
        self.blocks = nn.ModuleList(TokenwiseBlock(dim) for _ in range(self.num_blocks))
        self.final_layer = nn.Linear(dim, in_dim)

    def forward(self, x, t, y, s=None):
        """x: [B, L, in_dim] noisy tokens, t: [B], y: [B] labels; s: the encoder's condition of an
        earlier step, reused by samplers.  Returns (prediction, s)."""
        c = (self.t_embedder(timestep_embedding(t, self.dim)) + self.y_embedder(y))[:, None, :]
        if s is None:
            s = self.s_embedder(x)
            for i in range(self.num_encoder_blocks):
                s = self.blocks[i](s, c)
            s = F.silu(c + s)
        x = self.x_embedder(x)
        for i in range(self.num_encoder_blocks, self.num_blocks):
            x = self.blocks[i](x, s)
        return self.final_layer(x), s

    def example_inputs(self, batch_size=2):
        x, t = tokens_example(batch_size)
        return (x, t, torch.arange(batch_size) % 5), {}


# -- blocks in a ModuleDict, blocks in nested stages ---------------------------------------------

class ResMLPBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mod = nn.Linear(dim, dim)
        self.mlp = mlp(dim, 2 * dim)

    def forward(self, x, c):
        return x + self.mlp(self.norm(x) * (1 + self.mod(c)[:, None]))


class DictNet(nn.Module):
    """Named blocks: the encoder walked by ``.items()``, the decoder by ``.values()``, the refiner
    indexed by key in an order of its own (``self.refiner[name]``)."""

    def __init__(self, in_dim=4, dim=16):
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(in_dim, dim)
        self.temb = mlp(dim, dim)
        self.encoder = nn.ModuleDict({f"enc{i}": ResMLPBlock(dim) for i in range(2)})
        self.decoder = nn.ModuleDict({f"dec{i}": ResMLPBlock(dim) for i in range(2)})
        self.refiner = nn.ModuleDict({f"ref{i}": ResMLPBlock(dim) for i in range(2)})
        self.refine_order = ["ref1", "ref0"]
        self.out = nn.Linear(dim, in_dim)

    def forward(self, x, t):
        x, c = self.inp(x), self.temb(timestep_embedding(t, self.dim))
        for _name, block in self.encoder.items():  # noqa: PERF102 - the construct reproduced
            x = block(x, c)
        for block in self.decoder.values():
            x = block(x, c)
        for name in self.refine_order:
            x = self.refiner[name](x, c)
        return self.out(x)

    def example_inputs(self, batch_size=2):
        return tokens_example(batch_size), {}


class StageNet(nn.Module):
    """Stages of blocks at two widths, a linear downsampling between them."""

    def __init__(self, in_dim=4, dims=(8, 16), depths=(2, 1)):
        super().__init__()
        self.dims = dims
        self.inp = nn.Linear(in_dim, dims[0])
        self.temb = nn.ModuleList(mlp(d, d) for d in dims)
        self.stages = nn.ModuleList(nn.ModuleList(ResMLPBlock(d) for _ in range(n)) for d, n in zip(dims, depths))
        self.downs = nn.ModuleList(nn.Linear(2 * a, b) for a, b in itertools.pairwise(dims))
        self.out = nn.Linear(dims[-1], 2 * in_dim)

    def forward(self, x, t):
        x = self.inp(x)
        for i, stage in enumerate(self.stages):
            c = self.temb[i](timestep_embedding(t, self.dims[i]))
            for blk in stage:
                x = blk(x, c)
            if i < len(self.downs):
                x = self.downs[i](x.reshape(x.shape[0], x.shape[1] // 2, -1))
        return self.out(x).reshape(x.shape[0], -1, self.inp.in_features)

    def example_inputs(self, batch_size=2):
        return tokens_example(batch_size), {}


class ListStageNet(nn.Module):
    """Stages named in plain Python lists: a list written in the loop for inference, a list attribute made
    in ``__init__`` for masked training (the kept tokens only; the dropped ones come back as a learned token)."""

    def __init__(self, in_dim=4, dim=16):
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(in_dim, dim)
        self.temb = mlp(dim, dim)
        self.stage1 = nn.ModuleList(ResMLPBlock(dim) for _ in range(2))
        self.stage2 = nn.ModuleList([ResMLPBlock(dim)])
        self.stage_list = [self.stage1, self.stage2]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.out = nn.Linear(dim, in_dim)

    def forward(self, x, t, mask_ratio=0.0):
        x, c = self.inp(x), self.temb(timestep_embedding(t, self.dim))
        if self.training and mask_ratio > 0:
            keep = max(1, int(x.shape[1] * (1 - mask_ratio)))
            kept = x[:, :keep]
            for stage in self.stage_list:
                for blk in stage:
                    kept = blk(kept, c)
            x = torch.cat([kept, self.mask_token.expand(x.shape[0], x.shape[1] - keep, -1)], dim=1)
        else:
            for stage in [self.stage1, self.stage2]:
                for blk in stage:
                    x = blk(x, c)
        return self.out(x)

    def example_inputs(self, batch_size=2):
        return tokens_example(batch_size), {}
