"""ADM U-Net: the "ablated diffusion model" backbone of Dhariwal & Nichol.

Reference: P. Dhariwal, A. Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021
(arXiv 2105.05233), which extends the U-Net of A. Nichol, P. Dhariwal, "Improved Denoising Diffusion
Probabilistic Models", ICML 2021 (arXiv 2102.09672). Their released code is openai/guided-diffusion.

This is an independent re-implementation written for dtrsurgeon's model zoo. It follows the paper's
architecture and keeps the authors' module names (``time_embed``, ``label_emb``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``; ResBlock ``in_layers`` / ``emb_layers`` / ``out_layers`` /
``skip_connection``; AttentionBlock ``norm`` / ``qkv`` / ``proj_out``), so its ``state_dict`` keys have
the same layout as theirs. Like the original it is ordinary eager PyTorch: Python control flow, shape
unpacking and ``isinstance`` dispatch are used freely.

Architecture in one paragraph: a sinusoidal timestep embedding goes through a two-layer MLP
(``time_embed``); a class label embedding is added to it. The image passes an input conv, then for each
resolution level ``num_res_blocks`` timestep-conditioned residual blocks (optionally followed by
multi-head self-attention) and a downsampling step; a middle ResBlock-Attention-ResBlock; then the mirror
image with ``num_res_blocks + 1`` blocks per level, each taking the matching encoder activation
concatenated on the channel axis; finally GroupNorm, SiLU and a zero-initialised 3x3 conv. Every residual
branch ends in a zero-initialised layer, so each ResBlock and AttentionBlock is exactly its skip path at
initialisation.

    >>> model = adm_unet("tiny")
    >>> args, kwargs = model.example_inputs(batch_size=2)
    >>> model(*args, **kwargs).shape        # learn_sigma doubles the output channels
    torch.Size([2, 6, 16, 16])
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADMUNet",
    "AttentionBlock",
    "CONFIGS",
    "Downsample",
    "GroupNorm32",
    "QKVAttention",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "Upsample",
    "adm_unet",
    "timestep_embedding",
]


# ---------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM.

    Returns ``[N, dim]``: cosines of ``t * freq_i`` followed by sines, with frequencies
    ``max_period ** (-i / half)`` for ``i < half = dim // 2`` (the ADM layout: cos first). An odd ``dim``
    gets one zero column at the end.
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


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (ADM's zero-initialised layers)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """ADM's GroupNorm: statistics in at least float32 (so fp16/bf16 activations normalise stably),
    result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        return F.group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The normalisation layer used everywhere in ADM: GroupNorm(32 groups, ``channels``)."""
    return GroupNorm32(32, channels)


# ---------------------------------------------------------------------------------------------------
# Timestep-conditioned containers
# ---------------------------------------------------------------------------------------------------


class TimestepBlock(nn.Module):
    """Marker base class: a module whose ``forward`` takes ``(x, emb)``, ``emb`` the time(+class) embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A ``Sequential`` that passes ``emb`` to the children that take it (the :class:`TimestepBlock` s)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            else:
                x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------------


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (``conv_resample``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Upsample expects {self.channels} channels, got {x.shape[1]}")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 conv (``conv_resample``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(self.channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.channels != self.out_channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Downsample expects {self.channels} channels, got {x.shape[1]}")
        return self.op(x)


# ---------------------------------------------------------------------------------------------------
# Residual block
# ---------------------------------------------------------------------------------------------------


class ResBlock(TimestepBlock):
    """Timestep-conditioned residual block (ADM section 3; the BigGAN-style up/down variant included).

    ``h = in_layers(x)`` (GroupNorm, SiLU, 3x3 conv); the embedding is projected by ``emb_layers``
    (SiLU, Linear) and either added to ``h`` or, with ``use_scale_shift_norm`` (ADM's adaptive group
    norm, "AdaGN"), applied as ``GroupNorm(h) * (1 + scale) + shift``; then ``out_layers`` (GroupNorm,
    SiLU, Dropout, zero-initialised 3x3 conv). The output is ``skip_connection(x) + h`` with the skip an
    identity, or a 1x1 conv (3x3 with ``use_conv``) when the channel count changes.

    With ``up``/``down`` the block also resamples (``resblock_updown``): both paths are resized, the
    residual path between ``in_layers``' activation and its conv (``h_upd``), the skip path before the
    skip connection (``x_upd``), without learnable resampling.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )

        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, use_conv=False)
            self.x_upd = Upsample(channels, use_conv=False)
        elif down:
            self.h_upd = Downsample(channels, use_conv=False)
            self.x_upd = Downsample(channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )

        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_rest(x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = in_conv(h)
        else:
            h = self.in_layers(x)

        emb_out = self.emb_layers(emb).type(h.dtype)
        while len(emb_out.shape) < len(h.shape):
            emb_out = emb_out[..., None]

        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
            h = out_rest(h)
        else:
            h = h + emb_out
            h = self.out_layers(h)
        return self.skip_connection(x) + h


# ---------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------


class QKVAttention(nn.Module):
    """Multi-head scaled dot-product attention on a packed ``qkv`` tensor of shape ``[B, 3*H*c, T]``.

    The packed channels split into q, k, v first and then into heads (guided-diffusion's
    ``use_new_attention_order`` layout). q and k are each scaled by ``c ** -0.25`` before the product,
    which is numerically kinder in fp16 than scaling the logits by ``c ** -0.5``. Returns ``[B, H*c, T]``.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 * {self.n_heads} heads")
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum(
            "bct,bcs->bts",
            (q * scale).reshape(bs * self.n_heads, ch, length),
            (k * scale).reshape(bs * self.n_heads, ch, length),
        )
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v.reshape(bs * self.n_heads, ch, length))
        return a.reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection (ADM's attention layer).

    ``[B, C, H, W]`` is flattened to ``[B, C, H*W]`` (one token per pixel), normalised (``norm``),
    projected to packed q/k/v by a kernel-1 conv (``qkv``), attended with :class:`QKVAttention`, projected
    back by a zero-initialised kernel-1 conv (``proj_out``), added to the input and reshaped back.

    Heads: ``num_heads`` fixed, or, when ``num_head_channels != -1``, ``channels // num_head_channels``
    heads (ADM's "64 channels per head").
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = self.attention(qkv)
        h = self.proj_out(h)
        return (x + h).reshape(b, c, *spatial)


# ---------------------------------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------------------------------


class ADMUNet(nn.Module):
    """The ADM U-Net (guided-diffusion's ``UNetModel``), 2-D images only.

    Args:
        image_size: input height and width (square images).
        in_channels: input image channels.
        model_channels: base width; level ``i`` has ``model_channels * channel_mult[i]`` channels.
        out_channels: predicted channels before ``learn_sigma`` (default ``in_channels``).
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        attention_resolutions: feature-map sizes (in pixels, e.g. ``(32, 16, 8)``) at which an
            AttentionBlock follows each ResBlock, as in the authors' ``--attention_resolutions`` flag.
        dropout: dropout probability inside ResBlocks.
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        conv_resample: use learned 3x3 convs in plain Up/Downsample layers.
        num_classes: if set, the model is class-conditional and ``y`` (labels in ``[0, num_classes)``)
            must be passed.
        num_heads, num_head_channels: attention heads (``num_head_channels`` wins when not -1).
        num_heads_upsample: heads in the decoder (default ``num_heads``).
        use_scale_shift_norm: AdaGN conditioning in ResBlocks.
        resblock_updown: BigGAN-style resampling ResBlocks instead of Up/Downsample layers.
        learn_sigma: also predict the variance interpolation (doubles the output channels).

    ``forward(x, t, y=None)``: ``x`` ``[B, in_channels, H, W]``; ``t`` timesteps, ``[B]`` (int or float)
    or a 0-d tensor broadcast to the batch; ``y`` ``[B]`` class labels. Returns
    ``[B, out_channels * (2 if learn_sigma else 1), H, W]``.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...] | list[int] = (),
        out_channels: int | None = None,
        dropout: float = 0.0,
        channel_mult: tuple[int, ...] | list[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: int | None = None,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        learn_sigma: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        for res in attention_resolutions:
            if res <= 0 or image_size % res:
                raise ValueError(f"attention resolution {res} does not divide image_size {image_size}")

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.learn_sigma = learn_sigma
        self.out_channels = (out_channels or in_channels) * (2 if learn_sigma else 1)
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.num_heads_upsample = num_heads_upsample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resblock_updown = resblock_updown

        # Attention is placed by downsample rate ds = image_size // feature size.
        attention_ds = {image_size // res for res in attention_resolutions}

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim),
            nn.SiLU(),
            nn.Linear(time_embed_dim, time_embed_dim),
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        # Encoder.
        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [
                    ResBlock(
                        ch,
                        time_embed_dim,
                        dropout,
                        out_channels=int(mult * model_channels),
                        use_scale_shift_norm=use_scale_shift_norm,
                    )
                ]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                out_ch = ch
                if resblock_updown:
                    down: nn.Module = ResBlock(
                        ch,
                        time_embed_dim,
                        dropout,
                        out_channels=out_ch,
                        use_scale_shift_norm=use_scale_shift_norm,
                        down=True,
                    )
                else:
                    down = Downsample(ch, conv_resample, out_channels=out_ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                ch = out_ch
                input_block_chans.append(ch)
                ds *= 2

        # Bottleneck.
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, time_embed_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
            AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels),
            ResBlock(ch, time_embed_dim, dropout, use_scale_shift_norm=use_scale_shift_norm),
        )

        # Decoder: each block consumes one encoder activation (concatenated on channels).
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [
                    ResBlock(
                        ch + ich,
                        time_embed_dim,
                        dropout,
                        out_channels=int(model_channels * mult),
                        use_scale_shift_norm=use_scale_shift_norm,
                    )
                ]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(
                        AttentionBlock(ch, num_heads=num_heads_upsample, num_head_channels=num_head_channels)
                    )
                if level and i == num_res_blocks:
                    out_ch = ch
                    if resblock_updown:
                        layers.append(
                            ResBlock(
                                ch,
                                time_embed_dim,
                                dropout,
                                out_channels=out_ch,
                                use_scale_shift_norm=use_scale_shift_norm,
                                up=True,
                            )
                        )
                    else:
                        layers.append(Upsample(ch, conv_resample, out_channels=out_ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(input_ch, self.out_channels, 3, padding=1)),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise (and, with ``learn_sigma``, the variance values) for ``x`` at timesteps ``t``."""
        if (y is not None) != (self.num_classes is not None):
            if y is None:
                raise ValueError("this ADMUNet is class-conditional: pass labels y of shape [B]")
            raise ValueError("this ADMUNet is unconditional (num_classes=None): do not pass y")
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.ndim == 0:
            # Sampling loops (e.g. diffusers' `for t in scheduler.timesteps`) pass one scalar timestep.
            t = t.expand(x.shape[0])

        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)

        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb)
        return self.out(h)

    def example_inputs(self, batch_size: int = 2) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Valid random inputs ``((x, t), {"y": y})`` (``{}`` if unconditional), from a fixed seed.

        ``x`` is standard normal with this model's parameter dtype and device, ``t`` integer timesteps in
        ``[0, 1000)``, ``y`` labels in ``[0, num_classes)``. The same call always gives the same tensors.
        """
        param = next(self.parameters())
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, self.in_channels, self.image_size, self.image_size, generator=gen)
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        kwargs: dict[str, Any] = {}
        if self.num_classes is not None:
            kwargs["y"] = torch.randint(0, self.num_classes, (batch_size,), generator=gen).to(param.device)
        return (x.to(device=param.device, dtype=param.dtype), t.to(param.device)), kwargs


# ---------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------

#: Named configurations. Sources:
#:
#: * ``"32"``: unconditional CIFAR-10 of Improved DDPM (Nichol & Dhariwal 2021; openai/improved-diffusion
#:   README flags ``--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True
#:   --dropout 0.3`` plus that code base's defaults: channel_mult (1, 2, 2, 2) at 32 px, attention at
#:   16 and 8 px with 4 heads, scale-shift norm on, plain conv resampling). ADM itself was not trained
#:   at 32 px; this is the architecture ADM grew from and the usual "ADM at CIFAR-10" setting.
#: * ``"64"``: ADM class-conditional ImageNet 64x64 (paper appendix hyper-parameter table; guided-diffusion
#:   README flags): 192 channels, depth 3, mult (1, 2, 3, 4), 64 channels per head, attention at 32, 16,
#:   8 px, BigGAN up/down, dropout 0.1, AdaGN, learned sigmas.
#: * ``"128"``: ADM class-conditional ImageNet 128x128: 256 channels, depth 2, mult (1, 1, 2, 3, 4),
#:   4 heads, attention at 32, 16, 8 px, BigGAN up/down, AdaGN, learned sigmas.
#: * ``"256"``: ADM class-conditional ImageNet 256x256: 256 channels, depth 2, mult (1, 1, 2, 2, 4, 4),
#:   64 channels per head, attention at 32, 16, 8 px, BigGAN up/down, AdaGN, learned sigmas.
#: * ``"tiny"``: a test-sized model with every ADM feature switched on (16 px, 2 levels, 10 classes).
CONFIGS: dict[str, dict[str, Any]] = {
    "32": dict(
        image_size=32,
        in_channels=3,
        model_channels=128,
        num_res_blocks=3,
        attention_resolutions=(16, 8),
        dropout=0.3,
        channel_mult=(1, 2, 2, 2),
        num_classes=None,
        num_heads=4,
        use_scale_shift_norm=True,
        resblock_updown=False,
        learn_sigma=True,
    ),
    "64": dict(
        image_size=64,
        in_channels=3,
        model_channels=192,
        num_res_blocks=3,
        attention_resolutions=(32, 16, 8),
        dropout=0.1,
        channel_mult=(1, 2, 3, 4),
        num_classes=1000,
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
    "128": dict(
        image_size=128,
        in_channels=3,
        model_channels=256,
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        dropout=0.0,
        channel_mult=(1, 1, 2, 3, 4),
        num_classes=1000,
        num_heads=4,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
    "256": dict(
        image_size=256,
        in_channels=3,
        model_channels=256,
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        dropout=0.0,
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_classes=1000,
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
    "tiny": dict(
        image_size=16,
        in_channels=3,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        channel_mult=(1, 2),
        num_classes=10,
        num_head_channels=16,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
}


def adm_unet(name: str = "tiny", **overrides: Any) -> ADMUNet:
    """Build the named :data:`CONFIGS` entry, with keyword ``overrides`` replacing config values.

    >>> adm_unet("tiny", num_classes=None, learn_sigma=False).out_channels
    3
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown ADM U-Net config {name!r}; known configs: {', '.join(sorted(CONFIGS))}")
    config = copy.deepcopy(CONFIGS[name])
    config.update(overrides)
    return ADMUNet(**config)
