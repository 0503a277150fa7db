"""Tiny models of five more constructs common in released diffusion research code, each written
here from a description of the construct (no code copied):

* ``PixArtNet``: blocks called through ``auto_grad_checkpoint(module, *args, **kwargs)`` (which
  checkpoints when the module's ``grad_checkpointing`` is set, and a ``Sequential`` with
  ``checkpoint_sequential``); adaLN-single (the root computes ``t0`` once, each block adds its
  own ``scale_shift_table`` and modulates with a free function ``t2i_modulate``); cross-attention
  to captions packed into one row, their lengths a Python list (``mask.sum(1).tolist()``).
* ``STDiTNet``: video tokens ``[B, T*S, C]``; each block folds them to ``[B*T, S, C]`` for a
  spatial mixer and to ``[B*S, T, C]`` (reshape + permute) for a temporal one, adding each
  result back to the unfolded stream.
* ``LightningNet``: ``torch.utils.checkpoint.checkpoint(block, x, c, self.feat_rope,
  use_reentrant=True)`` under ``self.use_checkpoint and self.training``, the rotary embedding a
  module of the root handed to every block (``torch.view_as_complex`` inside); RMSNorm, a SwiGLU
  MLP, and DropPath around the gated residual branches.
* ``CfgDiT``: DiT's ``forward_with_cfg``, which doubles the first half of the batch, calls
  ``self.forward`` and mixes the conditional and unconditional halves.
* ``ResidualUNet``: a U-Net built from ``Residual(PreNorm(dim, attention))`` wrappers and
  ``ResnetBlock(dim, dim_out, time_emb_dim)`` with a 1x1 conv skip where the widths differ;
  ``LoopAddUNet``: the later layout, ``x = attn(x) + x`` in the root's loops over levels;
  ``PreNormViT``: a ``Transformer`` submodule looping ``x = attn(x) + x; x = ff(x) + x``;
  ``SequentialViT``: its layers as ``nn.Sequential(Residual(PreNorm(...)), ...)``.
"""

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


def time_features(t, dim):
    """Sinusoidal features of t: [B] -> [B, dim]."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class Mixer(nn.Module):
    """Softmax attention of tokens [N, L, C] over themselves (or over ``context`` [N, M, C])."""

    def __init__(self, dim):
        super().__init__()
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x, context=None):
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        return self.out(torch.softmax(self.q(x) @ k.transpose(-1, -2) / math.sqrt(x.shape[-1]), dim=-1) @ v)


def mlp(dim):
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


# -- PixArt ---------------------------------------------------------------------------------

def auto_grad_checkpoint(module, *args, **kwargs):
    if getattr(module, "grad_checkpointing", False):
        if isinstance(module, nn.Sequential):
            return torch.utils.checkpoint.checkpoint_sequential(module, 2, *args, use_reentrant=False)
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False, **kwargs)
    return module(*args, **kwargs)


def t2i_modulate(x, shift, scale):
    return x * (1 + scale) + shift


class PackedCrossAttention(Mixer):
    """Each sample's tokens attend to its own caption: ``y`` is [1, sum(lengths), C]."""

    def forward(self, x, y, lengths):
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        return torch.cat([super(PackedCrossAttention, self).forward(x[i:i + 1], y[:, s:s + n])
                          for i, (s, n) in enumerate(zip(starts, lengths))])


class PixArtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn, self.cross = Mixer(dim), PackedCrossAttention(dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = mlp(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)
        self.grad_checkpointing = False

    def forward(self, x, y, t, lengths):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t.reshape(x.shape[0], 6, -1)).chunk(6, dim=1)
        x = x + gate_msa * self.attn(t2i_modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross(x, y, lengths)
        return x + gate_mlp * self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp))


class PixArtNet(nn.Module):
    def __init__(self, dim=16, depth=3):
        super().__init__()
        self.dim = dim
        self.x_embed, self.y_embed = nn.Linear(4, dim), nn.Linear(8, dim)
        self.t_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(PixArtBlock(dim) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 4))

    def example_inputs(self, batch_size=2):
        mask = torch.ones(batch_size, 5, dtype=torch.bool)
        mask[1:, 2 + torch.arange(batch_size - 1) % 3] = False
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long(),
                torch.randn(batch_size, 5, 8), mask), {}

    def forward(self, x, t, y, mask):
        x = self.x_embed(x)
        t = self.t_embedder(time_features(t, self.dim))
        t0 = self.t_block(t)
        lengths = mask.sum(1).tolist()
        y = self.y_embed(y).masked_select(mask[..., None]).view(1, -1, self.dim)
        for block in self.blocks:
            x = auto_grad_checkpoint(block, x, y, t0, lengths)
        return auto_grad_checkpoint(self.head, x + t[:, None])


# -- OpenSora STDiT -------------------------------------------------------------------------

class STBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm_s, self.norm_t, self.norm_m = (nn.LayerNorm(dim) for _ in range(3))
        self.spatial, self.temporal, self.mlp = Mixer(dim), Mixer(dim), mlp(dim)
        self.ada = nn.Linear(dim, 4 * dim)

    def forward(self, x, c, frames, positions, tpe=None):
        b, _, dim = x.shape
        shift, scale, gate_s, gate_t = self.ada(c)[:, None].chunk(4, dim=-1)
        h = (self.norm_s(x) * (1 + scale) + shift).reshape(b * frames, positions, dim)
        x = x + gate_s * self.spatial(h).reshape(b, frames * positions, dim)
        h = self.norm_t(x).reshape(b, frames, positions, dim).permute(0, 2, 1, 3).reshape(b * positions, frames, dim)
        if tpe is not None:
            h = h + tpe
        h = self.temporal(h).reshape(b, positions, frames, dim).transpose(1, 2).reshape(b, frames * positions, dim)
        x = x + gate_t * h
        return x + self.mlp(self.norm_m(x))


class STDiTNet(nn.Module):
    """x [B, 4, T, H, W] (latent video), t [B]; the first block adds a temporal position embedding."""

    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(4, dim)
        self.temb = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(STBlock(dim) for _ in range(depth))
        self.pos_embed_temporal = nn.Parameter(torch.randn(1, 3, dim) * 0.1)
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 4, 3, 2, 2), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        b, _, frames, h, w = x.shape
        x = self.embed(x.flatten(3).permute(0, 2, 3, 1)).reshape(b, frames * h * w, self.dim)
        c = self.temb(time_features(t, self.dim))
        for i, block in enumerate(self.blocks):
            tpe = self.pos_embed_temporal if i == 0 else None
            x = auto_grad_checkpoint(block, x, c, frames, h * w, tpe)
        return self.out(x).reshape(b, frames, h * w, 4).permute(0, 3, 1, 2).reshape(b, 4, frames, h, w)


# -- LightningDiT ---------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class DropPath(nn.Module):
    """Drops a whole sample's branch with probability p while training (stochastic depth)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep / (1 - self.p)


class ComplexRope(nn.Module):
    """Rotates channel pairs of x [B, L, C] by the complex phases of token positions [L, C // 2]."""

    def __init__(self, dim, tokens):
        super().__init__()
        angles = torch.arange(tokens)[:, None] * torch.exp(-torch.arange(dim // 2) / (dim // 2) * math.log(100.0))
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(angles), angles), persistent=False)

    def forward(self, x):
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * self.freqs_cis).flatten(-2).type_as(x)


class RopeAttention(Mixer):
    """Attention whose rotary embedding is a module the root owns and hands to every block."""

    def forward(self, x, rope):
        k, v = self.kv(x).chunk(2, dim=-1)
        q, k = rope(self.q(x)), rope(k)
        return self.out(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1]), dim=-1) @ v)


class LightningBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn, self.mlp = RopeAttention(dim), SwiGLU(dim, 2 * dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.drop_path = DropPath(0.1)

    def forward(self, x, c, feat_rope):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + self.drop_path(gate_msa * self.attn(self.norm1(x) * (1 + scale_msa) + shift_msa, feat_rope))
        return x + self.drop_path(gate_mlp * self.mlp(self.norm2(x) * (1 + scale_mlp) + shift_mlp))


class LightningNet(nn.Module):
    def __init__(self, dim=16, depth=3, tokens=6):
        super().__init__()
        self.dim, self.use_checkpoint = dim, False
        self.embed = nn.Linear(4, dim)
        self.temb = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.feat_rope = ComplexRope(dim, tokens)
        self.blocks = nn.ModuleList(LightningBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 4)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, t):
        x, c = self.embed(x), self.temb(time_features(t, self.dim))
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, c, self.feat_rope, use_reentrant=True)
            else:
                x = block(x, c, feat_rope=self.feat_rope)
        return self.out(x)


# -- DiT's classifier-free guidance -----------------------------------------------------------

class LabelEmbedder(nn.Module):
    """Class labels with one extra row for "no label"; while training, labels drop at random."""

    def __init__(self, classes, dim, dropout_prob=0.1):
        super().__init__()
        self.classes, self.dropout_prob = classes, dropout_prob
        self.table = nn.Embedding(classes + 1, dim)

    def forward(self, y):
        if self.training and self.dropout_prob > 0:
            y = torch.where(torch.rand(y.shape[0], device=y.device) < self.dropout_prob, self.classes, y)
        return self.table(y)


class CfgBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn, self.mlp = Mixer(dim), mlp(dim)
        self.ada = nn.Linear(dim, 4 * dim)

    def forward(self, x, c):
        shift, scale, gate_msa, gate_mlp = self.ada(c)[:, None].chunk(4, dim=-1)
        x = x + gate_msa * self.attn(self.norm(x) * (1 + scale) + shift)
        return x + gate_mlp * self.mlp(self.norm(x))


class CfgDiT(nn.Module):
    """x [B, 6, 4] tokens, t [B], y [B] labels; the output carries 4 predicted and 4 more channels."""

    def __init__(self, dim=16, depth=3, classes=5):
        super().__init__()
        self.dim = dim
        self.embed, self.y_embedder = nn.Linear(4, dim), LabelEmbedder(classes, dim)
        self.temb = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(CfgBlock(dim) for _ in range(depth))
        self.out = nn.Linear(dim, 8)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long(),
                torch.arange(batch_size) % 5), {}

    def forward(self, x, t, y):
        x, c = self.embed(x), self.temb(time_features(t, self.dim)) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        eps, rest = model_out[..., :4], model_out[..., 4:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=-1)


# -- U-Net of residual wrappers ---------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args, **kwargs):
        return self.fn(x, *args, **kwargs) + x


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.fn, self.norm = fn, nn.GroupNorm(1, dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class ConvAttention(nn.Module):
    """Attention over the pixels of a feature map [B, C, H, W]."""

    def __init__(self, dim):
        super().__init__()
        self.to_qkv, self.to_out = nn.Conv2d(dim, 3 * dim, 1), nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.to_qkv(x).flatten(2).chunk(3, dim=1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        return self.to_out((v @ attn.transpose(1, 2)).reshape(b, c, h, w))


class ConvBlock(nn.Module):
    def __init__(self, dim, dim_out):
        super().__init__()
        self.proj, self.norm = nn.Conv2d(dim, dim_out, 3, padding=1), nn.GroupNorm(4, dim_out)

    def forward(self, x, scale_shift=None):
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim, dim_out, time_emb_dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, 2 * dim_out))
        self.block1, self.block2 = ConvBlock(dim, dim_out), ConvBlock(dim_out, dim_out)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        scale_shift = self.mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift=scale_shift))
        return h + self.res_conv(x)


class ResidualUNet(nn.Module):
    """x [B, 3, 8, 8], time [B]: one level down (8 -> 16 channels), a middle, one level up."""

    def __init__(self, dim=8):
        super().__init__()
        self.dim, temb = dim, 4 * dim
        self.init_conv = nn.Conv2d(3, dim, 3, padding=1)
        self.time_mlp = nn.Sequential(nn.Linear(dim, temb), nn.GELU(), nn.Linear(temb, temb))
        self.downs = nn.ModuleList([nn.ModuleList([
            ResnetBlock(dim, dim, temb), Residual(PreNorm(dim, ConvAttention(dim))), nn.Conv2d(dim, 2 * dim, 4, 2, 1)])])
        self.mid = nn.ModuleList([ResnetBlock(2 * dim, 2 * dim, temb), Residual(PreNorm(2 * dim, ConvAttention(2 * dim)))])
        self.ups = nn.ModuleList([nn.ModuleList([
            ResnetBlock(3 * dim, 2 * dim, temb), Residual(PreNorm(2 * dim, ConvAttention(2 * dim))),
            nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2 * dim, dim, 3, padding=1))])])
        self.final = nn.Conv2d(dim, 3, 1)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 3, 8, 8), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, time):
        x, t = self.init_conv(x), self.time_mlp(time_features(time, self.dim))
        skips = []
        for block, attn, downsample in self.downs:
            x = attn(block(x, t))
            skips.append(x)
            x = downsample(x)
        for layer in self.mid:
            x = layer(x, t) if isinstance(layer, ResnetBlock) else layer(x)
        for block, attn, upsample in self.ups:
            x = attn(block(torch.cat([x, nn.functional.avg_pool2d(skips.pop(), 1, 2)], dim=1), t))
            x = upsample(x)
        return self.final(x)


class TokenPreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class Transformer(nn.Module):
    """Residual adds written in a loop of this submodule's forward: ``x = attn(x) + x``."""

    def __init__(self, dim, depth):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleList([TokenPreNorm(dim, Mixer(dim)), TokenPreNorm(dim, mlp(dim))])
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class PreNormViT(nn.Module):
    """x [B, 3, 8, 8] in 2x2 patches, time [B] as an extra token."""

    def __init__(self, dim=16, depth=2):
        super().__init__()
        self.dim = dim
        self.to_patch = nn.Linear(12, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.transformer = Transformer(dim, depth)
        self.to_pixels = nn.Linear(dim, 12)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 3, 8, 8), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, time):
        b = x.shape[0]
        patches = x.reshape(b, 3, 4, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, 16, 12)
        tokens = torch.cat([self.time_mlp(time_features(time, self.dim))[:, None], self.to_patch(patches)], dim=1)
        out = self.to_pixels(self.transformer(tokens + self.pos)[:, 1:])
        return out.reshape(b, 4, 4, 3, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, 8, 8)


class SequentialViT(PreNormViT):
    """The same ViT with its layers as ``nn.Sequential(Residual(PreNorm(...)), ...)`` and a residual
    layer in the timestep MLP (a ``Residual`` that processes only the timestep)."""

    def __init__(self, dim=16, depth=2):
        super().__init__(dim, depth)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), Residual(nn.Sequential(nn.GELU(), nn.Linear(dim, dim))))
        self.transformer = nn.Sequential(*(Residual(TokenPreNorm(dim, fn)) for _ in range(depth)
                                           for fn in (Mixer(dim), mlp(dim))), nn.LayerNorm(dim))


class LoopAddUNet(nn.Module):
    """The later U-Net layout: two ResnetBlocks per level, each output kept for the up path, and the
    attention's residual add written in the root's loops, ``x = attn(x) + x``."""

    def __init__(self, dim=8):
        super().__init__()
        self.dim, temb = dim, 4 * dim
        self.init_conv = nn.Conv2d(3, dim, 7, padding=3)
        self.time_mlp = nn.Sequential(nn.Linear(dim, temb), nn.GELU(), nn.Linear(temb, temb))
        self.downs = nn.ModuleList([nn.ModuleList([
            ResnetBlock(dim, dim, temb), ResnetBlock(dim, dim, temb), PreNorm(dim, ConvAttention(dim)),
            nn.Conv2d(dim, 2 * dim, 4, 2, 1)])])
        self.mid_block1, self.mid_block2 = ResnetBlock(2 * dim, 2 * dim, temb), ResnetBlock(2 * dim, 2 * dim, temb)
        self.mid_attn = PreNorm(2 * dim, ConvAttention(2 * dim))
        self.ups = nn.ModuleList([nn.ModuleList([
            ResnetBlock(3 * dim, 2 * dim, temb), ResnetBlock(3 * dim, 2 * dim, temb), PreNorm(2 * dim, ConvAttention(2 * dim)),
            nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2 * dim, dim, 3, padding=1))])])
        self.final_res_block = ResnetBlock(2 * dim, dim, temb)
        self.final_conv = nn.Conv2d(dim, 3, 1)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 3, 8, 8), torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, x, time, x_self_cond=None):
        x = self.init_conv(x)
        r = x.clone()
        t = self.time_mlp(time_features(time, self.dim))
        h = []
        for block1, block2, attn, downsample in self.downs:
            x = block1(x, t)
            h.append(x)
            x = block2(x, t)
            x = attn(x) + x
            h.append(x)
            x = downsample(x)
        x = self.mid_block1(x, t)
        x = self.mid_attn(x) + x
        x = self.mid_block2(x, t)
        for block1, block2, attn, upsample in self.ups:
            x = block1(torch.cat((x, h.pop()[..., ::2, ::2]), dim=1), t)
            x = block2(torch.cat((x, h.pop()[..., ::2, ::2]), dim=1), t)
            x = attn(x) + x
            x = upsample(x)
        x = self.final_res_block(torch.cat((x, r), dim=1), t)
        return self.final_conv(x)


class TokenBlock(nn.Module):
    """A pre-norm residual MLP on tokens [B, L, C], taking the stream alone."""

    def __init__(self, dim):
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(dim), mlp(dim)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class SequentialCheckpointNet(PixArtNet):
    """PixArt's helper handed an ``nn.Sequential`` of residual blocks: with ``grad_checkpointing`` set
    on it, ``checkpoint_sequential`` calls each block."""

    def __init__(self, dim=16):
        super().__init__(dim, depth=1)
        self.stage = nn.Sequential(TokenBlock(dim), TokenBlock(dim))

    def forward(self, x, t, y, mask):
        x = self.x_embed(x)
        t0 = self.t_block(self.t_embedder(time_features(t, self.dim)))
        lengths = mask.sum(1).tolist()
        y = self.y_embed(y).masked_select(mask[..., None]).view(1, -1, self.dim)
        x = auto_grad_checkpoint(self.blocks[0], x, y, t0, lengths)
        return self.head(auto_grad_checkpoint(self.stage, x))
