"""A Flux-style MMDiT: dual-stream joint blocks, then single-stream blocks, on latent patches.

Written for dtrsurgeon's model zoo from the published description of Flux.1 (Black Forest Labs'
model card and the architecture as the community documents it) and of MMDiT (Esser et al., "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", ICML 2024, arXiv 2403.03206). It
exists so the overhead benchmark can time routing on a mid-size multi-stream transformer without
downloading anything; it is not a loader for released weights.

What it keeps from that design:

* the image latents ``[B, C, H, W]`` are cut into 2x2 patches (``C * 4`` features per token), the text
  conditioning is a sequence of precomputed encoder features ``[B, L_text, context_dim]`` plus a pooled
  vector ``[B, pooled_dim]``; the timestep is flow-matching time in ``[0, 1]``, embedded at ``t * 1000``;
* **joint blocks** (``JointBlock``): text and image tokens keep separate weights and residual streams
  but attend jointly (text first), each stream modulated by the conditioning (shift, scale and gate for
  the attention and for the MLP, adaLN-Zero style), queries and keys RMS-normalised per head and rotated
  by rotary position features; the block returns ``(encoder_hidden_states, hidden_states)``;
* **single-stream blocks** (``SingleBlock``): text and image tokens joined on the token axis into one
  stream, attention and MLP computed in parallel from one input projection and merged by one output
  projection, one gated residual; the block splits the stream again and returns the same pair;
* a final adaptive LayerNorm and a linear map back to patch features.

    >>> model = mmdit("tiny")
    >>> args, kwargs = model.example_inputs(batch_size=2)
    >>> model(*args, **kwargs).shape
    torch.Size([2, 4, 8, 8])
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONFIGS", "JointBlock", "MMDiT", "SingleBlock", "mmdit"]


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[B]`` -> ``[B, dim]``: cosines then sines of ``t`` at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position features on ``[B, heads, L, head_dim]``: pairs (first half, second half) of each
    head's channels rotated by the token's angles (``cos``, ``sin``: ``[L, head_dim]``)."""
    cos, sin = rotary
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def attention(q, k, v, rotary) -> torch.Tensor:
    """``[B, L, heads, head_dim]`` queries, keys, values -> ``[B, L, heads * head_dim]``."""
    q, k, v = (a.transpose(1, 2) for a in (q, k, v))
    out = F.scaled_dot_product_attention(rotate(q, rotary), rotate(k, rotary), v)
    return out.transpose(1, 2).flatten(2)


class QKNorm(nn.Module):
    """RMS normalisation of queries and keys per head, with a learned scale each (keeps the attention
    logits bounded in low precision)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.query = nn.RMSNorm(head_dim, eps=1e-6)
        self.key = nn.RMSNorm(head_dim, eps=1e-6)

    def forward(self, q, k):
        return self.query(q), self.key(k)


class Modulation(nn.Module):
    """``n`` conditioning vectors (shift, scale, gate, ...) of width ``dim`` from the conditioning, each
    ``[B, 1, dim]`` so it broadcasts over tokens."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(dim, n * dim)

    def forward(self, cond: torch.Tensor) -> list[torch.Tensor]:
        return list(self.linear(F.silu(cond)).unsqueeze(1).chunk(self.n, dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class StreamWeights(nn.Module):
    """One stream's weights in a joint block: modulation, norms, qkv, output projection and MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.mod = Modulation(dim, 6)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qk_norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def qkv_heads(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """Modulated, normalised ``(q, k, v)``, each ``[B, L, heads, head_dim]``."""
        b, length, _ = x.shape
        q, k, v = self.qkv(modulate(self.norm1(x), shift, scale)).view(b, length, 3, self.heads, -1).unbind(2)
        q, k = self.qk_norm(q, k)
        return q, k, v


class JointBlock(nn.Module):
    """Dual-stream block: separate weights per stream, one attention over both token sets."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.image = StreamWeights(dim, heads, mlp_ratio)
        self.text = StreamWeights(dim, heads, mlp_ratio)

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary):
        img_mod, txt_mod = self.image.mod(temb), self.text.mod(temb)
        img_q, img_k, img_v = self.image.qkv_heads(hidden_states, img_mod[0], img_mod[1])
        txt_q, txt_k, txt_v = self.text.qkv_heads(encoder_hidden_states, txt_mod[0], txt_mod[1])
        length = encoder_hidden_states.shape[1]
        joint = attention(torch.cat([txt_q, img_q], dim=1), torch.cat([txt_k, img_k], dim=1),
                          torch.cat([txt_v, img_v], dim=1), rotary)
        txt_attn, img_attn = joint[:, :length], joint[:, length:]
        hidden_states = hidden_states + img_mod[2] * self.image.proj(img_attn)
        hidden_states = hidden_states + img_mod[5] * self.image.mlp(
            modulate(self.image.norm2(hidden_states), img_mod[3], img_mod[4]))
        encoder_hidden_states = encoder_hidden_states + txt_mod[2] * self.text.proj(txt_attn)
        encoder_hidden_states = encoder_hidden_states + txt_mod[5] * self.text.mlp(
            modulate(self.text.norm2(encoder_hidden_states), txt_mod[3], txt_mod[4]))
        return encoder_hidden_states, hidden_states


class SingleBlock(nn.Module):
    """Single-stream block: text and image tokens joined into one stream; attention and MLP in parallel
    from one input projection, merged by one output projection; the stream is split again on return."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.hidden = int(dim * mlp_ratio)
        self.mod = Modulation(dim, 3)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear_in = nn.Linear(dim, 3 * dim + self.hidden)
        self.qk_norm = QKNorm(dim // heads)
        self.linear_out = nn.Linear(dim + self.hidden, dim)

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary):
        length = encoder_hidden_states.shape[1]
        residual = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        shift, scale, gate = self.mod(temb)
        qkv, mlp = self.linear_in(modulate(self.norm(residual), shift, scale)).split([3 * self.dim, self.hidden], dim=-1)
        b, tokens, _ = residual.shape
        q, k, v = qkv.view(b, tokens, 3, self.heads, -1).unbind(2)
        q, k = self.qk_norm(q, k)
        out = self.linear_out(torch.cat([attention(q, k, v, rotary), F.gelu(mlp, approximate="tanh")], dim=-1))
        hidden_states = residual + gate * out
        encoder_hidden_states, hidden_states = hidden_states[:, :length], hidden_states[:, length:]
        return encoder_hidden_states, hidden_states


class MMDiT(nn.Module):
    """Flux-style MMDiT: ``joint_depth`` joint blocks, then ``single_depth`` single-stream blocks."""

    def __init__(self, image_size=32, in_channels=16, patch_size=2, dim=1024, heads=8, joint_depth=8,
                 single_depth=16, context_dim=4096, text_tokens=128, pooled_dim=768, mlp_ratio=4.0):
        super().__init__()
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.dim, self.heads, self.text_tokens = dim, heads, text_tokens
        self.out_channels = in_channels
        self.context_dim, self.pooled_dim = context_dim, pooled_dim
        patch_features = in_channels * patch_size * patch_size
        self.img_in = nn.Linear(patch_features, dim)
        self.txt_in = nn.Linear(context_dim, dim)
        self.time_in = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.vector_in = nn.Sequential(nn.Linear(pooled_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.joint_blocks = nn.ModuleList(JointBlock(dim, heads, mlp_ratio) for _ in range(joint_depth))
        self.single_blocks = nn.ModuleList(SingleBlock(dim, heads, mlp_ratio) for _ in range(single_depth))
        self.final_mod = Modulation(dim, 2)
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, patch_features)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, (H/p)(W/p), C p p]``, row-major over patches."""
        b, c, h, w = x.shape
        p = self.patch_size
        return x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, p, c = tokens.shape[0], self.patch_size, self.in_channels
        return tokens.view(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def rotary(self, h: int, w: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` ``[length + tokens, head_dim]``: text tokens at position 0; image tokens get
        half the head's angles from their row and half from their column."""
        head_dim, p = self.dim // self.heads, self.patch_size
        rows, cols = torch.meshgrid(torch.arange(h // p, device=device), torch.arange(w // p, device=device),
                                    indexing="ij")
        positions = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()
        positions = torch.cat([torch.zeros(length, 2, device=device), positions])
        quarter = head_dim // 4
        freqs = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
        angles = torch.cat([positions[:, :1] * freqs, positions[:, 1:] * freqs], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``x`` latents ``[B, C, H, W]``, ``t`` flow time ``[B]`` in [0, 1], ``context`` ``[B, L, context_dim]``,
        ``pooled`` ``[B, pooled_dim]`` -> the predicted velocity, ``[B, C, H, W]``."""
        h, w = x.shape[-2:]
        temb = self.time_in(sinusoidal(t * 1000.0, 256).to(x.dtype)) + self.vector_in(pooled)
        hidden_states = self.img_in(self.patchify(x))
        encoder_hidden_states = self.txt_in(context)
        rotary = self.rotary(h, w, context.shape[1], x.device)
        for block in self.joint_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states, temb, rotary)
        for block in self.single_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states, encoder_hidden_states, temb, rotary)
        shift, scale = self.final_mod(temb)
        hidden_states = self.proj_out(modulate(self.final_norm(hidden_states), shift, scale))
        return self.unpatchify(hidden_states, h, w)

    def example_inputs(self, batch_size: int = 2) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Valid random inputs ``((x, t, context, pooled), {})`` from a fixed seed, on the model's device."""
        param = next(self.parameters())
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, self.in_channels, self.image_size, self.image_size, generator=gen)
        t = torch.rand(batch_size, generator=gen)
        context = torch.randn(batch_size, self.text_tokens, self.context_dim, generator=gen)
        pooled = torch.randn(batch_size, self.pooled_dim, generator=gen)
        return tuple(v.to(device=param.device, dtype=param.dtype) for v in (x, t, context, pooled)), {}


#: Named configurations. ``"M"``: the mid-size model of the overhead benchmark (Flux.1's layout at
#: width 1024 and 8 + 16 blocks instead of 3072 and 19 + 38; head width 128 as in Flux; 256 px images as
#: 32 x 32 x 16 latents, 256 image tokens, 128 text tokens of 4096 features). ``"tiny"``: for tests.
CONFIGS: dict[str, dict[str, Any]] = {
    "M": {"image_size": 32, "in_channels": 16, "dim": 1024, "heads": 8, "joint_depth": 8, "single_depth": 16,
          "context_dim": 4096, "text_tokens": 128, "pooled_dim": 768},
    "tiny": {"image_size": 8, "in_channels": 4, "dim": 32, "heads": 2, "joint_depth": 2, "single_depth": 2,
             "context_dim": 24, "text_tokens": 6, "pooled_dim": 16},
}


def mmdit(name: str = "tiny", **overrides: Any) -> MMDiT:
    """Build the named :data:`CONFIGS` entry, with keyword ``overrides`` replacing config values.

    >>> mmdit("tiny", joint_depth=1).joint_blocks.__len__()
    1
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown MMDiT config {name!r}; known configs: {', '.join(sorted(CONFIGS))}")
    config = copy.deepcopy(CONFIGS[name])
    config.update(overrides)
    return MMDiT(**config)
