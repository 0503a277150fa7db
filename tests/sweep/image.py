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
    "ErnieImageTransformer2DModel": (
        lambda: _seeded(_d().ErnieImageTransformer2DModel, hidden_size=16, num_attention_heads=2, num_layers=2,
                        ffn_hidden_size=32, in_channels=4, out_channels=4, text_in_dim=8, rope_axes_dim=(2, 2, 4)),
        lambda m, g, b, t: dict(hidden_states=torch.randn(b, 4, 4, 4, generator=g), timestep=t,
                                text_bth=torch.randn(b, 5, 8, generator=g), text_lens=torch.full((b,), 5))),
})
def _ideogram4_inputs(model, g, b, t):
    """One packed sequence per sample: 4 text tokens (indicator 3) then a 4x4 grid of image tokens
    (indicator 2), one segment each."""
    indicator = torch.tensor([3] * 4 + [2] * 16).expand(b, -1)
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(16, 2)
    positions = torch.cat([torch.stack([torch.arange(4)] * 3, -1), torch.cat([torch.zeros(16, 1).long(), grid], -1)])
    return dict(hidden_states=torch.randn(b, 20, 4, generator=g), timestep=t.float() / 1000,
                encoder_hidden_states=torch.randn(b, 20, 8, generator=g), position_ids=positions.expand(b, -1, -1),
                segment_ids=torch.zeros(b, 20, dtype=torch.long), indicator=indicator)


def _krea2_inputs(model, g, b, t):
    """16 image tokens, 5 text tokens of 2 tapped encoder layers; position ids of the joint sequence."""
    return dict(hidden_states=torch.randn(b, 16, 4, generator=g), encoder_hidden_states=torch.randn(b, 5, 2, 8, generator=g),
                timestep=t.float() / 1000, position_ids=torch.zeros(21, 3))


def _omnigen_inputs(model, g, b, t):
    """A 4x8x8 latent with no multimodal condition (input_ids None): a time token and 16 image tokens."""
    return dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), timestep=t, input_ids=None, input_img_latents=[],
                input_image_sizes={}, attention_mask=None, position_ids=torch.arange(17).expand(b, -1))


FACTORIES.update({
    "Ideogram4Transformer2DModel": (
        lambda: _seeded(_d().Ideogram4Transformer2DModel, in_channels=4, num_layers=2, attention_head_dim=8,
                        num_attention_heads=2, intermediate_size=32, adaln_dim=8, llm_features_dim=8,
                        mrope_section=(2, 1, 1)), _ideogram4_inputs),
    "Krea2Transformer2DModel": (
        lambda: _seeded(_d().Krea2Transformer2DModel, in_channels=4, num_layers=2, attention_head_dim=8,
                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, timestep_embed_dim=16,
                        text_hidden_dim=8, num_text_layers=2, text_num_attention_heads=2, text_num_key_value_heads=1,
                        text_intermediate_size=16, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
                        axes_dims_rope=(2, 2, 4)), _krea2_inputs),
    "OmniGenTransformer2DModel": (
        lambda: _seeded(_d().OmniGenTransformer2DModel, in_channels=4, patch_size=2, hidden_size=16,
                        num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, num_layers=2,
                        pad_token_id=0, vocab_size=16, pos_embed_max_size=8, time_step_dim=16,
                        rope_scaling={"short_factor": [1.0] * 4, "long_factor": [1.0] * 4}), _omnigen_inputs),
})

FACTORIES.update({
    # width 64: the feed-forward's hidden width is (dim * 8 // 3) // 64 * 64, 0 below 64
    "BriaFibo2Transformer2DModel": (
        lambda: _seeded(_d().BriaFibo2Transformer2DModel, in_channels=4, patch_size=2, dim=64, n_layers=2,
                        n_refiner_layers=1, n_heads=4, cap_feat_dim=8, injection_layer_ids=(1,), perceiver_num_layers=1,
                        min_num_gist_tokens=2, max_num_gist_tokens=4, gist_step=2, gist_min_text_len=2,
                        gist_max_text_len=8, axes_dims=(4, 6, 6), axes_lens=(16, 8, 8)),
        lambda m, g, b, t: dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g), timestep=t.float() / 1000,
                                encoder_hidden_states=torch.randn(b, 2, 5, 8, generator=g))),
})
FACTORIES.update({
    "GlmImageTransformer2DModel": (
        lambda: _seeded(_d().GlmImageTransformer2DModel, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                        attention_head_dim=8, num_attention_heads=2, text_embed_dim=8, time_embed_dim=16,
                        condition_dim=4, prior_vq_quantizer_codebook_size=16),
        lambda m, g, b, t: dict(hidden_states=torch.randn(b, 4, 8, 8, generator=g),
                                encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                                prior_token_id=torch.randint(0, 16, (b, 16), generator=g),
                                prior_token_drop=torch.zeros(b, 16, dtype=torch.bool), timestep=t,
                                target_size=torch.tensor([[64, 64]] * b), crop_coords=torch.tensor([[0, 0]] * b))),
})
FACTORIES.update({
    "HunyuanImageTransformer2DModel": (
        lambda: _seeded(_d().HunyuanImageTransformer2DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                        attention_head_dim=8, num_layers=2, num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0,
                        patch_size=(1, 1), text_embed_dim=8, rope_axes_dim=(4, 4)),
        lambda m, g, b, t: dict(hidden_states=torch.randn(b, 4, 4, 4, generator=g), timestep=t.float(),
                                encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                                encoder_attention_mask=torch.ones(b, 5))),
})
def _nucleus_moe():
    """NucleusMoE; its experts' weights are allocated with torch.empty (uninitialised memory): seeded here."""
    model = _seeded(_d().NucleusMoEImageTransformer2DModel, patch_size=2, in_channels=8, out_channels=4, num_layers=2,
                    attention_head_dim=16, num_attention_heads=4, joint_attention_dim=8, axes_dims_rope=(4, 6, 6),
                    dense_moe_strategy="leave_first_block_dense", num_experts=2, moe_intermediate_dim=16,
                    capacity_factors=1.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


FACTORIES.update({
    # width 64: the dense MLP's hidden width is int(dim * mlp_ratio * 2 / 3) // 128 * 128, 0 below 48; the first
    # block dense, the second a mixture of 2 experts (expert-choice: each expert takes its top 8 of a sample's tokens)
    "NucleusMoEImageTransformer2DModel": (
        _nucleus_moe,
        lambda m, g, b, t: dict(hidden_states=torch.randn(b, 16, 8, generator=g), img_shapes=[(1, 4, 4)] * b,
                                encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                                encoder_hidden_states_mask=torch.ones(b, 5, dtype=torch.long),
                                timestep=t.float() / 1000)),
})
def _qwen_image21_inputs(model, g, b, t):
    """5 text slots then 4 image slots (one 2x2 group of latent tokens each): the target image of 4x4 tokens."""
    img_mask = torch.tensor([False] * 5 + [True] * 4).expand(b, -1)
    return dict(hidden_states=torch.randn(b, 16, 4, generator=g), encoder_hidden_states=torch.randn(b, 5, 8, generator=g),
                timestep=t.float() / 1000, img_shapes=[[(1, 4, 4)]] * b, img_mask=img_mask)


FACTORIES.update({
    "QwenImage21Transformer2DModel": (
        lambda: _seeded(_d().QwenImage21Transformer2DModel, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                        attention_head_dim=8, num_attention_heads=2, context_in_dim=8, mlp_ratio=2,
                        axes_dims_rope=(2, 2, 4)), _qwen_image21_inputs),
})

FACTORIES.update({
    # attention_head_dim is the number of heads (diffusers' U-Net naming)
    "DreamLiteUNetModel": (
        lambda: _seeded(_d().DreamLiteUNetModel, sample_size=8, in_channels=4, out_channels=4,
                        down_block_types=("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
                        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D"),
                        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                        attention_head_dim=2, ff_mult=2),
        lambda m, g, b, t: dict(sample=torch.randn(b, 4, 8, 8, generator=g), timestep=t,
                                encoder_hidden_states=torch.randn(b, 5, 16, generator=g))),
    "Kandinsky3UNet": (lambda: _seeded(_d().Kandinsky3UNet, in_channels=4, time_embedding_dim=16, groups=4,
                                       attention_head_dim=8, layers_per_block=2, block_out_channels=(16, 32),
                                       cross_attention_dim=16, encoder_hid_dim=16),
                       lambda m, g, b, t: {"sample": torch.randn(b, 4, 8, 8, generator=g), "timestep": t,
                                           "encoder_hidden_states": torch.randn(b, 5, 16, generator=g),
                                           "encoder_attention_mask": torch.ones(b, 5)}),
})
def _z_image_inputs(model, g, b, t):
    """Its sample is a list of per-sample [C, F, H, W] latents (16 tokens each, padded to 32), its caption a list
    of per-sample [5, 16] features; timesteps in [0, 1]."""
    return dict(x=[torch.randn(4, 1, 8, 8, generator=g) for _ in range(b)], t=t.float() / 1000,
                cap_feats=[torch.randn(5, 16, generator=g) for _ in range(b)])


FACTORIES.update({
    # the caption's padded 32 tokens come first on the rotary table's first axis: 64 positions there
    "ZImageTransformer2DModel": (
        lambda: _seeded(_d().ZImageTransformer2DModel, in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
                        n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[64, 16, 16]),
        _z_image_inputs),
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
    "Ideogram4Transformer2DModel": {"Ideogram4TransformerBlock": 2},
    # the text fusion's layerwise and refiner blocks see the text tokens only: conditioning
    "Krea2Transformer2DModel": {"Krea2TransformerBlock": 2},
    # the time token and the image tokens in one sequence (no multimodal condition)
    "OmniGenTransformer2DModel": {"OmniGenBlock": 2},
    # noise_refiner.0 and the 2 layers; the perceiver's layers read the text and learned queries only: conditioning
    "BriaFibo2Transformer2DModel": {"BriaFibo2TransformerBlock": 3},
    "GlmImageTransformer2DModel": {"GlmImageTransformerBlock": 2},
    # the context embedder's token refiner sees the text only: conditioning
    "HunyuanImageTransformer2DModel": {"HunyuanImageTransformerBlock": 2, "HunyuanImageSingleTransformerBlock": 2},
    "NucleusMoEImageTransformer2DModel": {"NucleusMoEImageTransformerBlock": 2},
    # one joint sequence: the image tokens are written into the text's slots before the blocks
    "QwenImage21Transformer2DModel": {"QwenImage21TransformerBlock": 2},
    # like UNet2DConditionModel: 2 down, 2 mid and 4 up resnets; a transformer block per attention (the
    # DreamLiteTransformer2DModel wrappers return a tuple and are left to the blocks inside)
    "DreamLiteUNetModel": {"ResnetBlock2DDreamLite": 8, "BasicTransformerBlockDreamLite": 7},
    # a sequence-first stream [L, B, C] (image then text tokens); the adaLN shift, expanded to the stream's
    # shape and added to each block's normalised input, is no residual skip
    "ErnieImageTransformer2DModel": {"ErnieImageSharedAdaLNBlock": 2},
    # the sample is the list x: noise_refiner.0 on its tokens and the 2 joint layers; context_refiner.0 sees the
    # caption only: conditioning
    "ZImageTransformer2DModel": {"ZImageTransformerBlock": 3},
}
LEFT_OUT = {
    "DreamLiteTransformer2DModel": "a wrapper of BasicTransformerBlockDreamLite, routed inside DreamLiteUNetModel "
                                   "where it is used; alone, its default layer_norm blocks ignore the timestep, and "
                                   "its ada_norm (AdaLayerNorm) takes one timestep for the batch, not one per sample",
}
# class -> why its vanilla model does not compile with fullgraph=True (checked: the vanilla compile raises)
NO_FULLGRAPH = {
    "Lumina2Transformer2DModel": "data-dependent Python on tensor values (seq_lengths from the caption mask, "
                                 "len(set(seq_lengths))): a graph break",
    "HiDreamImageTransformer2DModel": "its MoE gate calls .numpy() on a tensor: a graph break",
    "QwenImage21Transformer2DModel": "its rotary embedding calls image_pad_mask.tolist() "
                                     "(transformer_qwenimage21.py:689): a graph break",
    "OmniGenTransformer2DModel": "its rotary embedding branches on a tensor value (torch.max(position_ids) + 1 > "
                                 "original_max_position_embeddings): a graph break",
}
