"""Toy backbones for the stream tests (tests/test_streams.py), each reproducing one pattern of
released diffusion code on a few thousand parameters:

* :class:`MMDiT`: dual-stream joint blocks that return ``(context, tokens)``, a final joint
  block that drops the context (returns ``None`` for it), and single-stream blocks that join
  both streams with ``torch.cat`` and split them again before returning them;
* :class:`VideoNet`: frames folded into the batch, sample-major (``permute + reshape``: sample b
  on rows b*F .. b*F+F-1) for spatial blocks and positions folded in for temporal blocks;
  ``frame_major=True`` folds frame-major instead (rows b, b+B, ...);
* :class:`Hourglass`: channels-last token grids ``[B, H, W, C]``, ``torch.lerp`` merges of long
  skips, and a mapping network (residual MLP on the timestep embedding only);
* :class:`RootAttnNet`: residual adds written in the root's forward, ``x = attn(x) + x``;
  :class:`RootCastNet` casts the callee's output there before the add (``.to(device=...)``);
* :class:`SeqFirstNet`: sequence-first tokens ``[L, B, C]`` (image and text joined by ``torch.cat``
  along the sequence), modulated by an adaLN shift and scale the root expands to the stream's shape
  once for every block (``norm(x) * (1 + scale) + shift``: the shift fed the blocks before).
* :class:`LoopNet`: blocks whose branch is a loop over layers of different widths on an alias of
  the input (``out = x; for layer in self.layers: out = layer(out)``), added to a projected skip.
* :class:`CopyingAttnNet`: root-level ``x = attn(x) + x`` where the callee ends with a copy of its own
  (``return out.clone()``);
* :class:`OutNormNet`: blocks with two residual adds, only the first of them ``attn(x) + x``, and a norm on
  the way out: one unit each, not a container of ``attn``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_features(t, dim):
    """Sinusoidal features of t: [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class TokenMixer(nn.Module):
    """Attention-like mixing of tokens [B, L, C] (a softmax over token similarities)."""

    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.out(weights @ v)


# -- MMDiT --------------------------------------------------------------------------------------

class JointBlock(nn.Module):
    """One MMDiT joint block: both streams attend jointly, each keeps its own residual stream."""

    def __init__(self, dim, context_pre_only=False):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm_x = nn.LayerNorm(dim)
        self.norm_c = nn.LayerNorm(dim)
        self.mix = TokenMixer(dim)
        self.mlp_x = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mlp_c = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ada = nn.Linear(dim, 2 * dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        shift, scale = self.ada(temb).unsqueeze(1).chunk(2, dim=-1)
        length = encoder_hidden_states.shape[1]
        joint = torch.cat([self.norm_c(encoder_hidden_states), self.norm_x(hidden_states) * (1 + scale) + shift], dim=1)
        mixed = self.mix(joint)
        hidden_states = hidden_states + mixed[:, length:]
        hidden_states = hidden_states + self.mlp_x(hidden_states)
        if self.context_pre_only:
            encoder_hidden_states = None
        else:
            encoder_hidden_states = encoder_hidden_states + mixed[:, :length]
            encoder_hidden_states = encoder_hidden_states + self.mlp_c(encoder_hidden_states)
        return encoder_hidden_states, hidden_states


class SingleBlock(nn.Module):
    """Flux's single-stream block: joins text and image tokens, one residual stream, splits them again."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mix = TokenMixer(dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        length = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        residual = hidden_states
        hidden_states = residual + self.mix(self.norm(hidden_states)) * temb.unsqueeze(1).sigmoid()
        encoder_hidden_states, hidden_states = hidden_states[:, :length], hidden_states[:, length:]
        return encoder_hidden_states, hidden_states


class MMDiT(nn.Module):
    def __init__(self, in_dim=4, context_dim=6, dim=16, joint=2, single=1):
        super().__init__()
        self.dim = dim
        self.proj_in = nn.Linear(in_dim, dim)
        self.context_in = nn.Linear(context_dim, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.joint_blocks = nn.ModuleList(JointBlock(dim) for _ in range(joint))
        self.single_blocks = nn.ModuleList(SingleBlock(dim) for _ in range(single))
        self.last_block = JointBlock(dim, context_pre_only=True)
        self.proj_out = nn.Linear(dim, in_dim)

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        """hidden_states: [B, L, in_dim] tokens, timestep: [B], encoder_hidden_states: [B, L_text, context_dim]."""
        temb = self.time(timestep_features(timestep, self.dim))
        hidden_states = self.proj_in(hidden_states)
        encoder_hidden_states = self.context_in(encoder_hidden_states)
        for block in self.joint_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states, temb)
        for block in self.single_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states, temb)
        _, hidden_states = self.last_block(hidden_states, encoder_hidden_states, temb)
        return self.proj_out(hidden_states)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 8, 4, generator=g), t, torch.randn(batch_size, 3, 6, generator=g)), {}


# -- video: frames folded into the batch ---------------------------------------------------------

class FrameResBlock(nn.Module):
    """A 2-D residual block on feature maps [B*F, C, H, W], conditioned on the (folded) embedding."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.GroupNorm(4, dim)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.emb = nn.Linear(dim, dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x, emb):
        h = self.conv1(torch.nn.functional.silu(self.norm(x)))
        h = h + self.emb(emb)[:, :, None, None]
        return x + self.conv2(torch.nn.functional.silu(h))


class TemporalBlock(nn.Module):
    """Attention along frames: tokens [B*H*W, F, C]."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mix = TokenMixer(dim)

    def forward(self, x):
        return x + self.mix(self.norm(x))


class VideoNet(nn.Module):
    def __init__(self, channels=3, dim=8, frame_major=False):
        super().__init__()
        self.dim, self.frame_major = dim, frame_major
        self.conv_in = nn.Conv3d(channels, dim, 1)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.spatial = nn.ModuleList(FrameResBlock(dim) for _ in range(2))
        self.temporal = TemporalBlock(dim)
        self.conv_out = nn.Conv3d(dim, channels, 1)

    def forward(self, x, t):
        """x: [B, C, F, H, W] video latents, t: [B]."""
        b, _, f, h, w = x.shape
        x = self.conv_in(x)
        emb = self.time(timestep_features(t, self.dim))
        if self.frame_major:
            x = x.permute(2, 0, 1, 3, 4).reshape(f * b, self.dim, h, w)
            emb = emb.repeat(f, 1)
        else:
            x = x.permute(0, 2, 1, 3, 4).reshape(b * f, self.dim, h, w)
            emb = emb.repeat_interleave(f, dim=0)
        for block in self.spatial:
            x = block(x, emb)
        if self.frame_major:
            x = x.reshape(f, b, self.dim, h, w).permute(1, 2, 0, 3, 4)
        else:
            x = x.reshape(b, f, self.dim, h, w).permute(0, 2, 1, 3, 4)
        tokens = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, f, self.dim)
        tokens = self.temporal(tokens)
        x = tokens.reshape(b, h, w, f, self.dim).permute(0, 4, 3, 1, 2)
        return self.conv_out(x)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 3, 3, 4, 4, generator=g), t), {}


def video_frame_major():
    return VideoNet(frame_major=True)


# -- hourglass: channels-last grids, lerp skips, a mapping network ---------------------------------

class MappingNetwork(nn.Module):
    """Residual MLP on the timestep embedding only: conditioning, not a stream of the sample."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.lin = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.lin(torch.nn.functional.gelu(self.norm(x)))


class GridBlock(nn.Module):
    """A residual MLP block on a channels-last grid [B, H, W, C], modulated by the mapping output."""

    def __init__(self, dim, cond_dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.scale = nn.Linear(cond_dim, dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x, cond):
        h = self.norm(x) * (1 + self.scale(cond)[:, None, None, :])
        return x + self.down(torch.nn.functional.gelu(self.up(h)))


class SkipMerge(nn.Module):
    """Merges a long skip into the stream by linear interpolation (hourglass transformers)."""

    def __init__(self):
        super().__init__()
        self.fac = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, skip):
        return torch.lerp(skip, x, self.fac.to(x.dtype))


class Hourglass(nn.Module):
    def __init__(self, channels=3, dim=8):
        super().__init__()
        self.dim = dim
        self.proj_in = nn.Linear(channels, dim)
        self.mapping = MappingNetwork(dim)
        self.down_block = GridBlock(dim, dim)
        self.down = nn.Linear(4 * dim, 2 * dim)
        self.mid_block = GridBlock(2 * dim, dim)
        self.up = nn.Linear(2 * dim, 4 * dim)
        self.merge = SkipMerge()
        self.up_block = GridBlock(dim, dim)
        self.proj_out = nn.Linear(dim, channels)

    def forward(self, x, t):
        """x: [B, C, H, W] images, t: [B]; the blocks work on [B, H, W, C] grids."""
        cond = self.mapping(timestep_features(t, self.dim))
        x = self.proj_in(x.permute(0, 2, 3, 1))
        x = self.down_block(x, cond)
        skip = x
        b, h, w, c = x.shape
        x = self.down(x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c))
        x = self.mid_block(x, cond)
        x = self.up(x).reshape(b, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = self.merge(x, skip)
        x = self.up_block(x, cond)
        return self.proj_out(x).permute(0, 3, 1, 2)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 3, 4, 4, generator=g), t), {}


# -- residual adds in the root's own forward -----------------------------------------------------

class RootAttnNet(nn.Module):
    """A U-Net-like root that writes ``x = attn(x) + x`` itself (no block module holds the add)."""

    def __init__(self, channels=3, dim=8):
        super().__init__()
        self.dim = dim
        self.proj_in = nn.Linear(channels, dim)
        self.time = nn.Linear(dim, dim)
        self.attn1 = TokenMixer(dim)
        self.attn2 = TokenMixer(dim)
        self.proj_out = nn.Linear(dim, channels)

    def forward(self, x, t):
        """x: [B, L, C] tokens, t: [B]."""
        x = self.proj_in(x) + self.time(timestep_features(t, self.dim))[:, None]
        x = self.attn1(x) + x
        x = x + self.attn2(x)
        return self.proj_out(x)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 6, 3, generator=g), t), {}


# -- sequence-first tokens, a modulation expanded to the stream's shape ------------------------------

class SeqFirstBlock(nn.Module):
    """A modulated residual block on sequence-first tokens [L, B, C]."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mix = TokenMixer(dim)

    def forward(self, x, shift, scale):
        h = self.norm(x) * (1 + scale) + shift
        return x + self.mix(h.transpose(0, 1)).transpose(0, 1)


class SeqFirstNet(nn.Module):
    def __init__(self, channels=3, dim=8):
        super().__init__()
        self.dim = dim
        self.proj_in = nn.Linear(channels, dim)
        self.context = nn.Linear(channels, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.blocks = nn.ModuleList(SeqFirstBlock(dim) for _ in range(2))
        self.proj_out = nn.Linear(dim, channels)

    def forward(self, x, context, t):
        """x: [B, L, C] image tokens, context: [B, T, C] text tokens, t: [B]."""
        n = x.shape[1]
        h = torch.cat([self.proj_in(x).transpose(0, 1), self.context(context).transpose(0, 1)], dim=0)
        shift, scale = (m.unsqueeze(0).expand(h.shape[0], -1, -1).contiguous()
                        for m in self.time(timestep_features(t, self.dim)).chunk(2, dim=-1))
        for block in self.blocks:
            h = block(h, shift, scale)
        return self.proj_out(h[:n].transpose(0, 1))

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 6, 3, generator=g), torch.randn(batch_size, 2, 3, generator=g), t), {}


class RootCastNet(nn.Module):
    """Residual adds in the root's forward on a cast of the callee's output, as video models write
    their adapters: ``out = self.attn1(x); out = out.to(device=x.device); x = out + x``."""

    def __init__(self, channels=3, dim=8):
        super().__init__()
        self.dim = dim
        self.proj_in = nn.Linear(channels, dim)
        self.time = nn.Linear(dim, dim)
        self.attn1 = TokenMixer(dim)
        self.attn2 = TokenMixer(dim)
        self.proj_out = nn.Linear(dim, channels)

    def forward(self, x, t):
        """x: [B, L, C] tokens, t: [B]."""
        x = self.proj_in(x) + self.time(timestep_features(t, self.dim))[:, None]
        out = self.attn1(x)
        out = out.to(device=x.device)
        x = out + x
        x = x + self.attn2(x).to(device=x.device)
        return self.proj_out(x)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 6, 3, generator=g), t), {}


# -- a branch that loops over layers of different widths -----------------------------------------

class LoopBlock(nn.Module):
    """``out = x``, then ``out = layer(out)`` in a loop, widths dim -> dim/2 -> dim; a projected skip."""

    def __init__(self, dim):
        super().__init__()
        self.layers = nn.ModuleList([nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU()),
                                     nn.Sequential(nn.Linear(dim // 2, dim), nn.GELU())])
        self.skip = nn.Linear(dim, dim)

    def forward(self, x):
        out = x
        for layer in self.layers:
            out = layer(out)
        return self.skip(x) + out


class LoopNet(nn.Module):
    def __init__(self, channels=3, dim=8):
        super().__init__()
        self.dim = dim
        self.proj_in = nn.Linear(channels, dim)
        self.time = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList([LoopBlock(dim), LoopBlock(dim)])
        self.proj_out = nn.Linear(dim, channels)

    def forward(self, x, t):
        """x: [B, L, C] tokens, t: [B]."""
        x = self.proj_in(x) + self.time(timestep_features(t, self.dim))[:, None]
        for block in self.blocks:
            x = block(x)
        return self.proj_out(x)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        t = torch.linspace(10, 900, batch_size).round().long()
        return (torch.randn(batch_size, 6, 3, generator=g), t), {}


# -- a callee that ends with a copy; a block that ends with a norm ---------------------------------

class CopyingMixer(nn.Module):
    """A token mixer whose forward ends with a copy, as attention code ending ``return out.clone()``."""

    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return torch.tanh(self.proj(x)).clone()


class CopyingAttnNet(RootAttnNet):
    def __init__(self, channels=3, dim=8):
        super().__init__(channels, dim)
        self.attn1 = CopyingMixer(dim)
        self.attn2 = CopyingMixer(dim)


class OutNormBlock(nn.Module):
    """``x + attn(x)``, then ``x + mlp(norm(x))``, then a norm on the way out."""

    def __init__(self, dim):
        super().__init__()
        self.attn = TokenMixer(dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.attn(x)
        x = x + self.mlp(self.norm(x))
        return self.norm_out(x)


class OutNormNet(LoopNet):
    def __init__(self, channels=3, dim=8):
        super().__init__(channels, dim)
        self.blocks = nn.ModuleList([OutNormBlock(dim), OutNormBlock(dim)])
