"""Tiny random-weight diffusers backbones for the diffusers tests (CPU, a few hundred K parameters).

Every factory builds its model under a fixed seed, gives diffusers' zero-initialised layers
random weights (so that every block changes its input and routing changes outputs) and
returns it in eval mode.  ``example_inputs(model, batch_size)`` returns ``(args, kwargs)``
for one forward call; the timestep argument is ``timestep`` for all three models.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

SEED = 0
NUM_CLASSES = 10  # DiT: class labels 0 .. 9
CROSS_DIM = 16  # UNet2DConditionModel: encoder_hidden_states [B, 6, 16]
TEXT_LEN = 6


def _randomize_zeros_(model: torch.nn.Module, std: float = 0.2, seed: int = SEED) -> torch.nn.Module:
    """Random weights for zero-initialised tensors (DiT's adaLN-Zero linear, zero convs) and for the
    NaN-filled ones a build under :func:`_empty_filled` leaves uninitialised (LuminaNext's ``pad_token``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and (p.abs().max() == 0 or p.isnan().any()):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@contextlib.contextmanager
def _empty_filled():
    """``torch.empty`` returns NaN-filled tensors inside (torch's deterministic mode, warn-only).  Why: a
    parameter a library never initialises (LuminaNext's ``nn.Parameter(torch.empty(hidden))``) holds
    whatever the allocator hands back, all zeros on a fresh heap page, free-list pointers on reused
    memory; ``_randomize_zeros_`` then draws for it or not, and every zero-initialised tensor after it
    gets other numbers.  Two builds of one config differed so, after a long run of other tests::

        torch.empty(4)                    # tensor([4.5e+07, 4.6e-41, 0., 0.]) or tensor([0., 0., 0., 0.])
        with _empty_filled(): torch.empty(4)    # tensor([nan, nan, nan, nan]), whatever ran before
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)


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


# -- the sweep over every timestep-taking backbone (tests/test_diffusers_sweep.py) -------------------------

def _seeded(cls, **config):
    """``cls(**config)`` under the fixed seed, zero-initialised and uninitialised layers made random, in
    eval mode: the same weights whatever ran before in the process."""
    torch.manual_seed(SEED)
    with _empty_filled():
        model = cls(**config)
    return _randomize_zeros_(model).eval()


def _mmdit_config(**extra):
    return dict(attention_head_dim=8, num_attention_heads=2, **extra)


def _flux(cls_name, **extra):
    import diffusers

    return _seeded(getattr(diffusers, cls_name), patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                   joint_attention_dim=8, axes_dims_rope=(2, 2, 4), **_mmdit_config(**extra))


def _flux_inputs(model, g, b, t, pooled=True):
    kwargs = dict(hidden_states=torch.randn(b, 16, 4, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                  timestep=t.float() / 1000, img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))
    if pooled:
        kwargs["pooled_projections"] = torch.randn(b, 8, generator=g)
    return kwargs


def _sd3_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                pooled_projections=torch.randn(b, 8, generator=g), timestep=t)


def _qwen_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 16, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                encoder_hidden_states_mask=torch.ones(b, 5, dtype=torch.long), timestep=t.float() / 1000,
                img_shapes=[(1, 4, 4)] * b)


def _cogview4_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t, original_size=torch.tensor([[64, 64]] * b), target_size=torch.tensor([[64, 64]] * b),
                crop_coords=torch.tensor([[0, 0]] * b))


def _cogvideox_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 2, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t)


def _auraflow_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t.float() / 1000)


def _video_inputs(frames_first=False):
    def make(model, g, b, t):
        kwargs = dict(timestep=t, encoder_hidden_states=torch.randn(b, TEXT_LEN, CROSS_DIM, generator=g))
        shape = (b, 3, 4, 8, 8) if not frames_first else (b, 4, 3, 8, 8)
        return {"sample" if not frames_first else "hidden_states": torch.randn(*shape, generator=g), **kwargs}
    return make


def _latte_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 4, 2, 8, 8, generator=g), timestep=t,
                encoder_hidden_states=torch.randn(b, 5, 16, generator=g), enable_temporal_attentions=True)


def _image_inputs(model, g, b, t):
    """UNet2DModel, UNet2DConditionModel, DiT: the inputs of ``example_inputs``."""
    args, kwargs = example_inputs(model, b, timestep=t, seed=int(torch.randint(0, 1000, (1,), generator=g)))
    kwargs.pop("return_dict")
    return {"sample" if not isinstance(model, DiTTransformer2DModel) else "hidden_states": args[0], **kwargs}


def _sweep_factories():
    import diffusers as d

    return {
        "UNet2DModel": (tiny_unet2d, _image_inputs),
        "UNet2DConditionModel": (tiny_unet2d_condition, _image_inputs),
        "DiTTransformer2DModel": (tiny_dit, _image_inputs),
        "SD3Transformer2DModel": (lambda: _seeded(d.SD3Transformer2DModel, sample_size=8, patch_size=2, in_channels=4,
                                                  num_layers=2, joint_attention_dim=8, caption_projection_dim=16,
                                                  pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16,
                                                  **_mmdit_config()), _sd3_inputs),
        "FluxTransformer2DModel": (lambda: _flux("FluxTransformer2DModel", pooled_projection_dim=8), _flux_inputs),
        "ChromaTransformer2DModel": (lambda: _seeded(d.ChromaTransformer2DModel, patch_size=1, in_channels=4, num_layers=2,
                                                     num_single_layers=2, joint_attention_dim=8, axes_dims_rope=(2, 2, 4),
                                                     approximator_num_channels=8, approximator_hidden_dim=16,
                                                     approximator_layers=1, **_mmdit_config()),
                                     lambda m, g, b, t: _flux_inputs(m, g, b, t, pooled=False)),
        "QwenImageTransformer2DModel": (lambda: _seeded(d.QwenImageTransformer2DModel, patch_size=2, in_channels=8,
                                                        out_channels=4, num_layers=2, joint_attention_dim=8,
                                                        axes_dims_rope=(2, 2, 4), **_mmdit_config()), _qwen_inputs),
        "CogView4Transformer2DModel": (lambda: _seeded(d.CogView4Transformer2DModel, patch_size=2, in_channels=4,
                                                       out_channels=4, num_layers=2, text_embed_dim=8, time_embed_dim=8,
                                                       condition_dim=4, pos_embed_max_size=8, sample_size=8,
                                                       rope_axes_dim=(4, 4), **_mmdit_config()), _cogview4_inputs),
        "CogVideoXTransformer3DModel": (lambda: _seeded(d.CogVideoXTransformer3DModel, in_channels=4, out_channels=4,
                                                        time_embed_dim=8, text_embed_dim=8, num_layers=2, sample_width=8,
                                                        sample_height=8, sample_frames=5, patch_size=2,
                                                        temporal_compression_ratio=4, max_text_seq_length=5,
                                                        **_mmdit_config()), _cogvideox_inputs),
        "AuraFlowTransformer2DModel": (lambda: _seeded(d.AuraFlowTransformer2DModel, sample_size=8, patch_size=2,
                                                       in_channels=4, num_mmdit_layers=2, num_single_dit_layers=2,
                                                       joint_attention_dim=8, caption_projection_dim=16, out_channels=4,
                                                       pos_embed_max_size=16, **_mmdit_config()), _auraflow_inputs),
        "UNet3DConditionModel": (lambda: _seeded(d.UNet3DConditionModel, sample_size=8, in_channels=3, out_channels=3,
                                                 block_out_channels=(16, 32), layers_per_block=1,
                                                 down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                                                 cross_attention_dim=CROSS_DIM, attention_head_dim=8, norm_num_groups=8),
                                 _video_inputs()),
        "LatteTransformer3DModel": (lambda: _seeded(d.LatteTransformer3DModel, num_attention_heads=2, attention_head_dim=8,
                                                    in_channels=4, out_channels=4, num_layers=1, cross_attention_dim=16,
                                                    sample_size=8, patch_size=2, norm_type="ada_norm_single",
                                                    caption_channels=16, video_length=2), _latte_inputs),
        "PixArtTransformer2DModel": (lambda: _seeded(d.PixArtTransformer2DModel, num_attention_heads=2, attention_head_dim=8,
                                                     in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=16,
                                                     sample_size=8, patch_size=2, caption_channels=16), _pixart_inputs),
        "SanaTransformer2DModel": (lambda: _seeded(d.SanaTransformer2DModel, in_channels=4, out_channels=4,
                                                   num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                                   num_cross_attention_heads=2, cross_attention_head_dim=8,
                                                   cross_attention_dim=16, caption_channels=16, sample_size=8,
                                                   patch_size=2), _text_image_inputs),
        "WanTransformer3DModel": (lambda: _seeded(d.WanTransformer3DModel, num_attention_heads=2, attention_head_dim=8,
                                                  in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                                  num_layers=2, rope_max_seq_len=32), _wan_inputs),
    }


def _pixart_inputs(model, g, b, t):
    return {**_text_image_inputs(model, g, b, t), "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


def _text_image_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 16, generator=g),
                timestep=t)


def _wan_inputs(model, g, b, t):
    return dict(hidden_states=torch.randn(b, 4, 2, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 16, generator=g),
                timestep=t)


def _all_sweep_factories():
    from tests import sweep

    factories = _sweep_factories()
    for group in sweep.GROUPS:
        factories.update(group.FACTORIES)
    return factories


def sweep_inputs(name: str, model, batch_size: int = 3, timestep=None, seed: int = SEED) -> dict:
    """Keyword arguments of one forward call of sweep class ``name`` (``return_dict=False``)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 999, batch_size).round().long() if timestep is None else timestep
    return {**_all_sweep_factories()[name][1](model, g, batch_size, t), "return_dict": False}


def sweep_model(name: str):
    return _all_sweep_factories()[name][0]()
