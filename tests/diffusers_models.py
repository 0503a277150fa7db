"""Tiny random-weight diffusers backbones for the diffusers tests (CPU, a few hundred K parameters).

Every factory builds its model under a fixed seed, gives diffusers' zero-initialised layers
random weights (so that every block changes its input and routing changes outputs) and
returns it in eval mode.  ``example_inputs(model, batch_size)`` returns ``(args, kwargs)``
for one forward call; the timestep argument is ``timestep`` for all three models.
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

SEED = 0
NUM_CLASSES = 10  # DiT: class labels 0 .. 9
CROSS_DIM = 16  # UNet2DConditionModel: encoder_hidden_states [B, 6, 16]
TEXT_LEN = 6


def _randomize_zeros_(model: torch.nn.Module, std: float = 0.2, seed: int = SEED) -> torch.nn.Module:
    """Random weights for zero-initialised tensors (DiT's adaLN-Zero linear, zero convs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny_unet2d() -> UNet2DModel:
    """Unconditional DDPM-style U-Net: ResnetBlock2D everywhere, self-attention (diffusers'
    ``Attention`` with ``residual_connection=True``) in the second level and the mid block."""
    torch.manual_seed(SEED)
    model = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return _randomize_zeros_(model).eval()


def tiny_unet2d_condition() -> UNet2DConditionModel:
    """Stable-Diffusion-style U-Net: cross-attention ``Transformer2DModel`` s (one
    ``BasicTransformerBlock`` each) in the first level, the mid block and the last up level."""
    torch.manual_seed(SEED)
    model = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return _randomize_zeros_(model).eval()


def tiny_dit() -> DiTTransformer2DModel:
    """Class-conditional DiT: patch 2 on 8x8 latents, 2 ada_norm_zero BasicTransformerBlocks of width 32."""
    torch.manual_seed(SEED)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_type="ada_norm_zero",
    )
    return _randomize_zeros_(model).eval()


FACTORIES = {"unet2d": tiny_unet2d, "unet2d_condition": tiny_unet2d_condition, "dit": tiny_dit}


def example_inputs(model: torch.nn.Module, batch_size: int = 2, timestep=None, seed: int = SEED):
    """``(args, kwargs)`` for ``model(*args, **kwargs)``.

    ``timestep``: ``None`` for ``[B]`` timesteps spread over 0..999, an int for a 0-d
    tensor (what diffusers' sampling loops pass), or a tensor used as given.
    """
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    if timestep is None:
        t = torch.linspace(0, 999, batch_size).round().long()
    elif isinstance(timestep, int):
        t = torch.tensor(timestep)
    else:
        t = timestep
    kwargs = {"timestep": t, "return_dict": False}
    if isinstance(model, UNet2DConditionModel):
        kwargs["encoder_hidden_states"] = torch.randn(batch_size, TEXT_LEN, CROSS_DIM, generator=g)
    if isinstance(model, DiTTransformer2DModel):
        kwargs["class_labels"] = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    return (x,), kwargs


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
