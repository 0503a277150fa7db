"""Tiny configs for the diffusers sweep, image group: FACTORIES (name -> (build, inputs)), UNITS, LEFT_OUT.

``build()`` returns the model under a fixed seed in eval mode; ``inputs(model, g, b, t)`` returns the
keyword arguments of one forward call for batch ``b``, generator ``g`` and timesteps ``t`` (long, [b]).
"""

import torch

from tests.diffusers_models import _seeded


def _d():
    import diffusers

    return diffusers


def _flux_like(cls_name, **config):
    """A Flux-layout MMDiT: 2 joint and 2 single blocks of width 16 on 16 tokens of 4 channels."""
    return _seeded(getattr(_d(), cls_name), in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
                   num_attention_heads=2, **config)


def _flux_like_inputs(model, g, b, t, scale=1000, **extra):
    """16 image tokens, 5 text tokens of 8 channels, 2-D position ids shared by the batch."""
    return dict(hidden_states=torch.randn(b, 16, 4, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t.float() / scale, img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3), **extra)


def _flux4_inputs(model, g, b, t):
    """Flux 2 / 3: 4-axis position ids (t, h, w, l), timesteps in [0, 1]."""
    return dict(hidden_states=torch.randn(b, 16, 4, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t.float() / 1000, img_ids=torch.zeros(16, 4), txt_ids=torch.zeros(5, 4))


def _cogview_inputs(model, g, b, t):
    """CogView 3/4: a 4x8x8 latent, 5 text tokens, SDXL-style size conditioning."""
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t, original_size=torch.tensor([[64, 64]] * b), target_size=torch.tensor([[64, 64]] * b),
                crop_coords=torch.tensor([[0, 0]] * b))


def _rotary(g, tokens, dim):
    """A (cos, sin) rotary table of random angles, one row per token."""
    angles = torch.randn(tokens, dim, generator=g)
    return angles.cos(), angles.sin()


def _hunyuan_dit_inputs(model, g, b, t):
    """A 4x8x8 latent (16 tokens), 5 CLIP and 5 T5 tokens of 16 channels with their masks, a rotary table."""
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), timestep=t.float(),
                encoder_hidden_states=torch.randn(b, 5, 16, generator=g), text_embedding_mask=torch.ones(b, 5),
                encoder_hidden_states_t5=torch.randn(b, 5, 16, generator=g), text_embedding_mask_t5=torch.ones(b, 5),
                image_rotary_emb=_rotary(g, 16, 8))


def _lumina_next_inputs(model, g, b, t):
    """A 4x8x8 latent (4x4 tokens), 5 caption tokens, the pipeline's 2-D rotary table."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), timestep=t.float() / 1000,
                encoder_hidden_states=torch.randn(b, 5, 16, generator=g), encoder_mask=torch.ones(b, 5),
                cross_attention_kwargs={},
                image_rotary_emb=get_2d_rotary_pos_embed_lumina(8, 4, 4))


def _lumina2_inputs(model, g, b, t):
    """Captions of two lengths (5 and 3 tokens): the data-dependent ``len(set(seq_lengths))`` branch."""
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[1:, 3:] = False
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), timestep=t.float() / 1000,
                encoder_hidden_states=torch.randn(b, 5, 16, generator=g), encoder_attention_mask=mask)


FACTORIES = {
    "BriaTransformer2DModel": (lambda: _flux_like("BriaTransformer2DModel", joint_attention_dim=8,
                                                  axes_dims_rope=(2, 2, 4)),
                               lambda m, g, b, t: _flux_like_inputs(m, g, b, t, scale=1)),
    "LongCatImageTransformer2DModel": (lambda: _flux_like("LongCatImageTransformer2DModel", joint_attention_dim=8,
                                                          pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)),
                                       _flux_like_inputs),
    "OvisImageTransformer2DModel": (lambda: _flux_like("OvisImageTransformer2DModel", out_channels=4, joint_attention_dim=8,
                                                       axes_dims_rope=(2, 2, 4)), _flux_like_inputs),
}
FACTORIES.update({
    "BriaFiboTransformer2DModel": (lambda: _flux_like("BriaFiboTransformer2DModel", joint_attention_dim=8,
                                                      axes_dims_rope=(2, 2, 4), text_encoder_dim=8),
                                   lambda m, g, b, t: _flux_like_inputs(
                                       m, g, b, t, scale=1, text_encoder_layers=[torch.randn(b, 5, 8, generator=g)
                                                                                  for _ in range(4)])),
    "Flux2Transformer2DModel": (lambda: _flux_like("Flux2Transformer2DModel", joint_attention_dim=8,
                                                   timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2),
                                                   guidance_embeds=False), _flux4_inputs),
    "Flux3Transformer2DModel": (lambda: _flux_like("Flux3Transformer2DModel", cond_in_channels=4, joint_attention_dim=8,
                                                   timestep_channels=16, axes_dims_rope=(2, 2, 2, 2)), _flux4_inputs),
    "CogView3PlusTransformer2DModel": (lambda: _seeded(_d().CogView3PlusTransformer2DModel, patch_size=2, in_channels=4,
                                                       out_channels=4, num_layers=2, attention_head_dim=8,
                                                       num_attention_heads=2, text_embed_dim=8, time_embed_dim=8,
                                                       condition_dim=4, pos_embed_max_size=8, sample_size=8),
                                       lambda m, g, b, t: _cogview_inputs(m, g, b, t)),
})
FACTORIES.update({
    "HunyuanDiT2DModel": (lambda: _seeded(_d().HunyuanDiT2DModel, num_attention_heads=2, attention_head_dim=8,
                                          in_channels=4, patch_size=2, sample_size=8, hidden_size=16, num_layers=4,
                                          cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=8,
                                          text_len=5, text_len_t5=5, use_style_cond_and_image_meta_size=False),
                          _hunyuan_dit_inputs),
})
FACTORIES.update({
    "PRXTransformer2DModel": (lambda: _seeded(_d().PRXTransformer2DModel, in_channels=4, patch_size=2, context_in_dim=8,
                                              hidden_size=16, mlp_ratio=2.0, num_heads=2, depth=2, axes_dim=[4, 4]),
                              lambda m, g, b, t: dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g),
                                                      timestep=t.float() / 1000,
                                                      encoder_hidden_states=torch.randn(b, 5, 8, generator=g))),
    "LuminaNextDiT2DModel": (lambda: _seeded(_d().LuminaNextDiT2DModel, sample_size=8, patch_size=2, in_channels=4,
                                             hidden_size=16, num_layers=2, num_attention_heads=2, num_kv_heads=1,
                                             multiple_of=16, learn_sigma=False, cross_attention_dim=16),
                             _lumina_next_inputs),
    "Lumina2Transformer2DModel": (lambda: _seeded(_d().Lumina2Transformer2DModel, sample_size=8, patch_size=2,
                                                  in_channels=4, hidden_size=32, num_layers=2, num_refiner_layers=1,
                                                  num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                                                  axes_dim_rope=(4, 6, 6), axes_lens=(32, 32, 32), cap_feat_dim=16),
                                  _lumina2_inputs),
})
FACTORIES.update({
    "HiDreamImageTransformer2DModel": (
        lambda: _seeded(_d().HiDreamImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                        num_single_layers=2, attention_head_dim=8, num_attention_heads=4, caption_channels=[8, 4],
                        text_emb_dim=8, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=(4, 2, 2),
                        max_resolution=(32, 32), llama_layers=(0, 1)),
        lambda m, g, b, t: dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), timesteps=t,
                                encoder_hidden_states_t5=torch.randn(b, 4, 8, generator=g),
                                pooled_embeds=torch.randn(b, 8, generator=g),
                                encoder_hidden_states_llama3=[torch.randn(b, 4, 4, generator=g) for _ in range(2)])),
})
FACTORIES.update({
    "Kandinsky3UNet": (lambda: _seeded(_d().Kandinsky3UNet, in_channels=4, time_embedding_dim=16, groups=4,
                                       attention_head_dim=8, layers_per_block=2, block_out_channels=(16, 32),
                                       cross_attention_dim=16, encoder_hid_dim=16),
                       lambda m, g, b, t: {"sample": torch.randn(b, 4, 8, 8, generator=g), "timestep": t,
                                           "encoder_hidden_states": torch.randn(b, 5, 16, generator=g),
                                           "encoder_attention_mask": torch.ones(b, 5)}),
})
UNITS = {
    # each Kandinsky3ResNetBlock runs its 4 inner blocks in a loop (16 -> 8 -> 8 -> 8 -> 16 channels) and adds its input back
    "Kandinsky3UNet": {"Kandinsky3ResNetBlock": 16, "Kandinsky3AttentionBlock": 9},
    "BriaTransformer2DModel": {"BriaTransformerBlock": 2, "BriaSingleTransformerBlock": 2},
    "BriaFiboTransformer2DModel": {"BriaFiboTransformerBlock": 2, "BriaFiboSingleTransformerBlock": 2},
    "LongCatImageTransformer2DModel": {"LongCatImageTransformerBlock": 2, "LongCatImageSingleTransformerBlock": 2},
    "OvisImageTransformer2DModel": {"OvisImageTransformerBlock": 2, "OvisImageSingleTransformerBlock": 2},
    "Flux2Transformer2DModel": {"Flux2TransformerBlock": 2, "Flux2SingleTransformerBlock": 2},
    # the text context's own blocks (txt_mode_blocks) see no image token: conditioning, not routed
    "Flux3Transformer2DModel": {"Flux3ModeTransformerBlock": 2, "Flux3SingleTransformerBlock": 2},
    "CogView3PlusTransformer2DModel": {"CogView3PlusTransformerBlock": 2},
    # 4 blocks, the last one with a long skip (cat + linear) from the first
    "HunyuanDiT2DModel": {"HunyuanDiTBlock": 4},
    "PRXTransformer2DModel": {"PRXBlock": 2},
    "LuminaNextDiT2DModel": {"LuminaNextDiTBlock": 2},
    # noise_refiner.0 and the 2 joint layers; context_refiner.0 sees the caption only: conditioning
    "Lumina2Transformer2DModel": {"Lumina2TransformerBlock": 3},
    # the wrappers (double_stream_blocks.0, ...) hold the residual blocks as .block
    "HiDreamImageTransformer2DModel": {"HiDreamImageTransformerBlock": 1, "HiDreamImageSingleTransformerBlock": 2},
}
NOT_YET = "no tiny config and inputs written in tests/sweep/image.py yet"
LEFT_OUT = {name: NOT_YET for name in (
    "BriaFibo2Transformer2DModel",
    "DreamLiteTransformer2DModel",
    "DreamLiteUNetModel",
    "ErnieImageTransformer2DModel",
    "GlmImageTransformer2DModel",
    "HunyuanImageTransformer2DModel",
    "Ideogram4Transformer2DModel",
    "Krea2Transformer2DModel",
    "NucleusMoEImageTransformer2DModel",
    "OmniGenTransformer2DModel",
    "QwenImage21Transformer2DModel",
)}
LEFT_OUT.update({
    "ZImageTransformer2DModel": "its sample is a list of per-sample [C, F, H, W] tensors (x=[...]): "
                                "analysis/units.py:_sample_input takes the first tensor argument, t, for the sample, "
                                "so the image tokens' noise_refiner is dropped as conditioning (and under export the "
                                "list's placeholders are x_0, x_1, ..., not x)",
})
# class -> why its vanilla model does not compile with fullgraph=True (checked: the vanilla compile raises)
NO_FULLGRAPH = {
    "Lumina2Transformer2DModel": "data-dependent Python on tensor values (seq_lengths from the caption mask, "
                                 "len(set(seq_lengths))): a graph break",
    "HiDreamImageTransformer2DModel": "its MoE gate calls .numpy() on a tensor: a graph break",
}
