"""U-ViT: a ViT backbone for diffusion models with U-Net-style long skip connections.

Reference: F. Bao, S. Nie, K. Xue, Y. Cao, C. Li, H. Su, J. Zhu, "All are Worth Words: A ViT Backbone for
Diffusion Models", CVPR 2023 (arXiv 2209.12152); the authors' code is baofff/U-ViT.

This is an independent re-implementation written for dtrsurgeon's model zoo. It follows the paper's
architecture and keeps the authors' module names (``patch_embed``, ``time_embed``, ``label_emb``,
``pos_embed``, ``in_blocks``, ``mid_block``, ``out_blocks``, ``norm``, ``decoder_pred``, ``final_layer``;
per block ``norm1``, ``attn``, ``norm2``, ``mlp``, ``skip_linear``), so its ``state_dict`` keys have the
same layout as theirs. Like the original it is ordinary eager PyTorch (shape unpacking, ``int(... ** 0.5)``
when unpatchifying, a Python list of skips).

Architecture in one paragraph: "all are worth words". The noisy image is cut into ``patch_size`` patches
and linearly embedded; the timestep (sinusoidal embedding, optionally an MLP) becomes one token and the
class label (an embedding) another; the tokens are concatenated as ``[label, time, patches...]`` and a
learned 1-D position embedding is added. A stack of ``depth // 2`` pre-norm transformer blocks
(``in_blocks``) stores its outputs; one ``mid_block`` follows; then ``depth // 2`` ``out_blocks``, each
first fusing the matching stored activation through a long skip, ``x = skip_linear(cat([x, skip], -1))``,
then running the usual residual attention and MLP. A final LayerNorm, a linear decoder back to patch
pixels, unpatchify, and an optional 3x3 conv (``conv``) give the output. So a U-ViT has ``depth + 1``
transformer blocks.

    >>> model = uvit("tiny")
    >>> args, kwargs = model.example_inputs(batch_size=2)
    >>> model(*args, **kwargs).shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "CONFIGS",
    "Mlp",
    "PatchEmbed",
    "UViT",
    "patchify",
    "timestep_embedding",
    "unpatchify",
    "uvit",
]


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[N, dim]``, cosines then sines.

    The same embedding as ADM's; U-ViT uses it for the time token.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p)*(W/p), p*p*C]``, patches in row-major order, pixels as (p1, p2, C)."""
    B, C, H, W = imgs.shape
    p = patch_size
    x = imgs.reshape(B, C, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # B, h, w, p1, p2, C
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images: ``[B, h*w, p*p*C]`` -> ``[B, C, h*p, w*p]``.

    Like the authors' version it infers the patch and grid sizes from the tensor shape.
    """
    patch_size = int((x.shape[2] // channels) ** 0.5)
    h = w = int(x.shape[1] ** 0.5)
    if h * w != x.shape[1] or patch_size**2 * channels != x.shape[2]:
        raise ValueError(f"cannot unpatchify tokens of shape {tuple(x.shape)} into {channels} channels")
    B = x.shape[0]
    x = x.reshape(B, h, w, patch_size, patch_size, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # B, C, h, p1, w, p2
    return x.reshape(B, channels, h * patch_size, w * patch_size)


# ---------------------------------------------------------------------------------------------------
# Transformer pieces
# ---------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Image to patch tokens: a ``patch_size`` x ``patch_size`` conv with stride ``patch_size`` (the ViT
    linear patch projection), flattened to ``[B, num_patches, embed_dim]``."""

    def __init__(self, patch_size: int, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not divisible by patch size {self.patch_size}")
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x


class Mlp(nn.Module):
    """Transformer feed-forward: Linear (``fc1``), GELU, Linear (``fc2``), with optional dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Multi-head self-attention over tokens: packed ``qkv`` Linear, scaled dot product, ``proj`` Linear.

    Uses ``F.scaled_dot_product_attention`` (the authors' "flash" attention mode); the softmax scale is
    ``qk_scale`` or ``head_dim ** -0.5``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each B, heads, L, head_dim
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(B, L, C)
        x = self.proj(x)
        return self.proj_drop(x)


class Block(nn.Module):
    """Pre-norm transformer block; with ``skip=True`` it first fuses a long-skip activation.

    ``forward(x, skip=None)``::

        if skip_linear: x = skip_linear(cat([x, skip], dim=-1))   # long skip (out blocks only)
        x = x + attn(norm1(x))
        x = x + mlp(norm2(x))
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        skip: bool = False,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError("this block has a long skip connection: pass skip=")
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


class UViT(nn.Module):
    """U-ViT noise-prediction network.

    Args:
        img_size: input height and width (square).
        patch_size: patch side; ``img_size`` must be a multiple.
        in_chans: image channels (3 for pixels, 4 for Stable Diffusion latents); also the output channels.
        embed_dim: token width.
        depth: ``depth // 2`` in-blocks and as many out-blocks, plus one mid-block (the paper's
            "#layers" is ``depth + 1``: 13 for U-ViT-S with ``depth=12``).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        qkv_bias, qk_scale: attention options.
        norm_layer: normalisation class (LayerNorm).
        mlp_time_embed: pass the sinusoidal time embedding through an MLP (off in the paper's configs).
        num_classes: ``> 0`` makes the model class-conditional with a label token (``y`` required);
            latent ImageNet models use 1001 = 1000 classes + a "no class" id for classifier-free guidance.
        conv: a final 3x3 conv on the unpatchified output.

    ``forward(x, t, y=None)``: ``x`` ``[B, in_chans, img_size, img_size]``; ``t`` timesteps ``[B]`` (int
    or float) or a 0-d tensor broadcast to the batch; ``y`` ``[B]`` labels. Returns a tensor shaped like ``x``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        mlp_time_embed: bool = False,
        num_classes: int = -1,
        conv: bool = True,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_features = self.embed_dim = embed_dim
        self.num_classes = num_classes

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = (img_size // patch_size) ** 2

        self.time_embed = (
            nn.Sequential(
                nn.Linear(embed_dim, 4 * embed_dim),
                nn.SiLU(),
                nn.Linear(4 * embed_dim, embed_dim),
            )
            if mlp_time_embed
            else nn.Identity()
        )

        if self.num_classes > 0:
            self.label_emb = nn.Embedding(self.num_classes, embed_dim)
            self.extras = 2
        else:
            self.extras = 1

        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        block_kwargs = dict(
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            norm_layer=norm_layer,
        )
        self.in_blocks = nn.ModuleList([Block(**block_kwargs) for _ in range(depth // 2)])
        self.mid_block = Block(**block_kwargs)
        self.out_blocks = nn.ModuleList([Block(**block_kwargs, skip=True) for _ in range(depth // 2)])

        self.norm = norm_layer(embed_dim)
        self.patch_dim = patch_size**2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(self.in_chans, self.in_chans, 3, padding=1) if conv else nn.Identity()

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """ViT initialisation: truncated-normal(0.02) Linear weights, zero biases, unit LayerNorms."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise in ``x`` at timesteps ``t`` (class ``y`` for conditional models)."""
        if self.num_classes > 0 and y is None:
            raise ValueError("this UViT is class-conditional: pass labels y of shape [B]")
        if self.num_classes <= 0 and y is not None:
            raise ValueError("this UViT is unconditional (num_classes <= 0): do not pass y")
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            # Sampling loops (e.g. diffusers' `for t in scheduler.timesteps`) pass one scalar timestep.
            t = t.expand(x.shape[0])

        x = self.patch_embed(x)
        B, L, D = x.shape

        time_token = self.time_embed(timestep_embedding(t, self.embed_dim).to(x.dtype))
        time_token = time_token.unsqueeze(dim=1)
        x = torch.cat((time_token, x), dim=1)
        if y is not None:
            label_emb = self.label_emb(y)
            label_emb = label_emb.unsqueeze(dim=1)
            x = torch.cat((label_emb, x), dim=1)
        x = x + self.pos_embed

        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)

        x = self.mid_block(x)

        for blk in self.out_blocks:
            x = blk(x, skips.pop())

        x = self.norm(x)
        x = self.decoder_pred(x)
        assert x.size(1) == self.extras + L
        x = x[:, self.extras :, :]
        x = unpatchify(x, self.in_chans)
        x = self.final_layer(x)
        return x

    def example_inputs(self, batch_size: int = 2) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Valid random inputs ``((x, t), {"y": y})`` (``{}`` if unconditional), from a fixed seed.

        ``x`` is standard normal with this model's parameter dtype and device, ``t`` integer timesteps in
        ``[0, 1000)``, ``y`` labels in ``[0, num_classes)``. The same call always gives the same tensors.
        """
        param = next(self.parameters())
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, self.in_chans, self.img_size, self.img_size, generator=gen)
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        kwargs: dict[str, Any] = {}
        if self.num_classes > 0:
            kwargs["y"] = torch.randint(0, self.num_classes, (batch_size,), generator=gen).to(param.device)
        return (x.to(device=param.device, dtype=param.dtype), t.to(param.device)), kwargs


# ---------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------

#: Named configurations: the paper's model sizes (Table 2 of Bao et al.) in the settings the authors
#: trained them (their released ``configs/*.py``). ``depth`` counts in+out blocks; the paper's layer
#: count is ``depth + 1``.
#:
#: * ``"small"``: U-ViT-S/2, unconditional CIFAR-10 (32 px): 13 layers, width 512, 8 heads.
#: * ``"mid"``: U-ViT-M/4, class-conditional ImageNet 64x64: 17 layers, width 768, 12 heads.
#: * ``"large"``: U-ViT-L/4, class-conditional ImageNet 64x64: 21 layers, width 1024, 16 heads.
#: * ``"huge"``: U-ViT-H/2 on ImageNet 256x256 latents (32x32x4, 1001 labels incl. the null class for
#:   classifier-free guidance, no final conv): 29 layers, width 1152, 16 heads.
#: * ``"tiny"``: test-sized, class-conditional (16 px, patch 4, 5 blocks, 10 classes).
CONFIGS: dict[str, dict[str, Any]] = {
    "small": dict(
        img_size=32,
        patch_size=2,
        in_chans=3,
        embed_dim=512,
        depth=12,
        num_heads=8,
        mlp_ratio=4,
        qkv_bias=False,
        mlp_time_embed=False,
        num_classes=-1,
        conv=True,
    ),
    "mid": dict(
        img_size=64,
        patch_size=4,
        in_chans=3,
        embed_dim=768,
        depth=16,
        num_heads=12,
        mlp_ratio=4,
        qkv_bias=False,
        mlp_time_embed=False,
        num_classes=1000,
        conv=True,
    ),
    "large": dict(
        img_size=64,
        patch_size=4,
        in_chans=3,
        embed_dim=1024,
        depth=20,
        num_heads=16,
        mlp_ratio=4,
        qkv_bias=False,
        mlp_time_embed=False,
        num_classes=1000,
        conv=True,
    ),
    "huge": dict(
        img_size=32,
        patch_size=2,
        in_chans=4,
        embed_dim=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4,
        qkv_bias=False,
        mlp_time_embed=False,
        num_classes=1001,
        conv=False,
    ),
    "tiny": dict(
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=4,
        qkv_bias=False,
        mlp_time_embed=False,
        num_classes=10,
        conv=True,
    ),
}


def uvit(name: str = "tiny", **overrides: Any) -> UViT:
    """Build the named :data:`CONFIGS` entry, with keyword ``overrides`` replacing config values.

    >>> uvit("tiny", num_classes=-1).extras
    1
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown U-ViT config {name!r}; known configs: {', '.join(sorted(CONFIGS))}")
    config = copy.deepcopy(CONFIGS[name])
    config.update(overrides)
    return UViT(**config)
