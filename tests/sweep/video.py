"""Tiny configs for the diffusers sweep, video group: FACTORIES (name -> (build, inputs)), UNITS, LEFT_OUT.

``build()`` returns the model under a fixed seed in eval mode; ``inputs(model, g, b, t)`` returns the
keyword arguments of one forward call for batch ``b``, generator ``g`` and timesteps ``t`` (long, [b]).
Every video here has 2 latent frames of 8x8 pixels and a text of 5 tokens.
"""

import torch

from tests.diffusers_models import _seeded

FRAMES, SIZE, TEXT_LEN = 2, 8, 5


def _video(g, b, channels=4, frames=FRAMES):
    return torch.randn(b, channels, frames, SIZE, SIZE, generator=g)


def _text(g, b, width=16, length=TEXT_LEN):
    return torch.randn(b, length, width, generator=g)


def _allegro():
    import diffusers as d

    return _seeded(d.AllegroTransformer3DModel, patch_size=2, num_attention_heads=2, attention_head_dim=8,
                   in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=16, sample_height=SIZE,
                   sample_width=SIZE, sample_frames=FRAMES, caption_channels=16)


def _allegro_inputs(model, g, b, t):
    return dict(hidden_states=_video(g, b), encoder_hidden_states=_text(g, b), timestep=t)


def _wan_kwargs(**extra):
    return dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, **extra)


def _wan_inputs(model, g, b, t):
    return dict(hidden_states=_video(g, b), encoder_hidden_states=_text(g, b), timestep=t)


def _wan_like(cls_name, **extra):
    def build():
        import diffusers as d

        return _seeded(getattr(d, cls_name), **_wan_kwargs(**extra))
    return build


def _helios():
    import diffusers as d

    kwargs = {k: v for k, v in _wan_kwargs().items() if k != "rope_max_seq_len"}
    return _seeded(d.HeliosTransformer3DModel, rope_dim=(4, 2, 2), **kwargs)


def _wan_vace():
    import diffusers as d

    return _seeded(d.WanVACETransformer3DModel, **_wan_kwargs(vace_layers=[0, 1], vace_in_channels=4))


def _wan_vace_inputs(model, g, b, t):
    return {**_wan_inputs(model, g, b, t), "control_hidden_states": _video(g, b)}


def _hunyuan_video(cls_name, **extra):
    def build():
        import diffusers as d

        return _seeded(getattr(d, cls_name), in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                       num_layers=2, text_embed_dim=16, rope_axes_dim=(2, 2, 4), **extra)
    return build


_HUNYUAN_VIDEO = dict(num_single_layers=2, num_refiner_layers=1, guidance_embeds=False, pooled_projection_dim=8)


def _hunyuan_video_inputs(model, g, b, t):
    return dict(hidden_states=_video(g, b), timestep=t, encoder_hidden_states=_text(g, b),
                encoder_attention_mask=torch.ones(b, TEXT_LEN, dtype=torch.long),
                pooled_projections=torch.randn(b, 8, generator=g))


def _framepack_inputs(model, g, b, t):
    """The current section of 2 frames, and the clean latents and 2x / 4x history the model packs in
    front of it (it reads the rotary embeddings of all three whether or not they are given)."""
    history = {}
    for name, frames in (("latents_clean", 1), ("latents_history_2x", 2), ("latents_history_4x", 4)):
        history[name] = _video(g, b, frames=frames)
        history["indices_" + name] = torch.arange(frames)
    return {**_hunyuan_video_inputs(model, g, b, t), "image_embeds": _text(g, b, width=8, length=3),
            "indices_latents": torch.arange(FRAMES), **history}


def _hunyuan_video15():
    """HunyuanVideo 1.5; its ByT5 projection's hidden width is a constant 2048 (4M parameters), so
    that projection is rebuilt, same class, 16 wide."""
    from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15ByT5TextProjection

    model = _hunyuan_video("HunyuanVideo15Transformer3DModel", patch_size=2, num_refiner_layers=1,
                           text_embed_2_dim=8, image_embed_dim=8)()
    torch.manual_seed(0)
    model.context_embedder_2 = HunyuanVideo15ByT5TextProjection(8, 16, 16)
    return model


def _hunyuan_video15_inputs(model, g, b, t):
    """Its time embedding casts the sinusoids to the timestep's dtype: float timesteps."""
    return dict(hidden_states=_video(g, b), timestep=t.float(), encoder_hidden_states=_text(g, b),
                encoder_attention_mask=torch.ones(b, TEXT_LEN, dtype=torch.long),
                encoder_hidden_states_2=_text(g, b, width=8, length=3),
                encoder_attention_mask_2=torch.ones(b, 3, dtype=torch.long),
                image_embeds=_text(g, b, width=8, length=2))


def _cosmos():
    import diffusers as d

    return _seeded(d.CosmosTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=12, num_layers=2, mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8,
                   max_size=(FRAMES, SIZE, SIZE), concat_padding_mask=False)


def _easyanimate():
    """One head of 16 channels: its 3-D rotary embedding splits a head 4 / 6 / 6 (t / h / w)."""
    import diffusers as d

    return _seeded(d.EasyAnimateTransformer3DModel, num_attention_heads=1, attention_head_dim=16, in_channels=4,
                   out_channels=4, patch_size=2, sample_width=SIZE, sample_height=SIZE, num_layers=2, mmdit_layers=2,
                   time_embed_dim=16, text_embed_dim=16)


def _consisid():
    """CogVideoX's blocks; without the face branch (is_train_face False) it needs no face embeddings."""
    import diffusers as d

    return _seeded(d.ConsisIDTransformer3DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                   out_channels=4, time_embed_dim=8, text_embed_dim=8, num_layers=2, sample_width=SIZE,
                   sample_height=SIZE, sample_frames=5, patch_size=2, temporal_compression_ratio=4,
                   max_text_seq_length=TEXT_LEN)


def _consisid_inputs(model, g, b, t):
    """Frames first, as CogVideoX."""
    return dict(hidden_states=_video(g, b).transpose(1, 2), encoder_hidden_states=_text(g, b, width=8), timestep=t)


def _kandinsky5():
    """One text block, two visual blocks of width 32: two heads of 16 channels (rotary axes 4 / 6 / 6)."""
    import diffusers as d

    return _seeded(d.Kandinsky5Transformer3DModel, in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
                   out_visual_dim=4, patch_size=(1, 2, 2), model_dim=32, ff_dim=32, num_text_blocks=1,
                   num_visual_blocks=2, axes_dims=(4, 6, 6))


def _kandinsky5_inputs(model, g, b, t):
    """Channels last ([B, F, H, W, C]); rotary positions of the 2x4x4 patch grid and the 5 text tokens."""
    grid = (FRAMES, SIZE // 2, SIZE // 2)
    return {"hidden_states": _video(g, b).permute(0, 2, 3, 4, 1), "encoder_hidden_states": _text(g, b), "timestep": t,
            "pooled_projections": torch.randn(b, 8, generator=g),
            "visual_rope_pos": tuple(torch.arange(n) for n in grid), "text_rope_pos": torch.arange(TEXT_LEN)}


def _kandinsky6():
    """Video alone (no audio latents: the fused blocks run their video path); one text block per branch."""
    import diffusers as d

    return _seeded(d.Kandinsky6Transformer3DModel, in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8,
                   time_dim=16, patch_size=(1, 2, 2), model_dim=32, ff_dim=32, num_text_blocks=1, num_visual_blocks=2,
                   axes_dims=(4, 6, 6), visual_cond=False, in_audio_dim=4, out_audio_dim=4)


def _kandinsky6_inputs(model, g, b, t):
    return {"hidden_states": _video(g, b).permute(0, 2, 3, 4, 1), "encoder_hidden_states": _text(g, b),
            "pooled_projections": torch.randn(b, 8, generator=g), "timestep": t}


def _kandinsky6_sr():
    """Patch 1: the 8x8 token grid is one block of its NABLA sparse attention (which needs multiples of 8)."""
    import diffusers as d

    return _seeded(d.Kandinsky6SRTransformer3DModel, in_visual_dim=4, out_visual_dim=4, time_dim=16, model_dim=32,
                   ff_dim=32, num_visual_blocks=2, axes_dims=(4, 6, 6))


def _kandinsky6_sr_inputs(model, g, b, t):
    """The noisy latent, the anchor latent and the anchor mask, channels last (2 * 4 + 1)."""
    return {"hidden_states": _video(g, b, channels=9).permute(0, 2, 3, 4, 1), "timestep": t}


def _joyimage(cls_name):
    """Two dual-stream blocks of width 32: two heads of 16 channels (rotary axes 4 / 6 / 6)."""
    def build():
        import diffusers as d

        return _seeded(getattr(d, cls_name), patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2,
                       text_dim=16, mlp_width_ratio=2.0, num_layers=2, rope_dim_list=[4, 6, 6])
    return build


def _joyimage_plus_inputs(model, g, b, t):
    """Already patchified ([B, patches, C, 1, 2, 2]): a 1x4x4 target and a 1x4x4 reference image per sample."""
    shapes = [(1, SIZE // 2, SIZE // 2)] * 2
    return {"hidden_states": torch.randn(b, 32, 4, 1, 2, 2, generator=g), "timestep": t,
            "encoder_hidden_states": _text(g, b), "encoder_hidden_states_mask": torch.ones(b, TEXT_LEN),
            "shape_list": [list(shapes) for _ in range(b)]}


def _wan_animate():
    """Wan blocks of width 16, a face adapter after each; the motion encoder reads 8x8 face crops (one
    down-sampling res block), the face encoder is 2 heads of 8."""
    import diffusers as d

    kwargs = {k: v for k, v in _wan_kwargs().items() if k != "in_channels"}
    return _seeded(d.WanAnimateTransformer3DModel, in_channels=12, latent_channels=4, image_dim=None,
                   motion_encoder_channel_sizes={"8": 8, "4": 8}, motion_encoder_size=8, motion_style_dim=8,
                   motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=8, face_encoder_num_heads=2,
                   inject_face_latents_blocks=1, motion_encoder_batch_size=4, **kwargs)


def _wan_animate_inputs(model, g, b, t):
    """The latent, reference latent and mask (2 * 4 + 4 channels) of 2 frames, the pose latent of the frame after
    the reference, and 4 face crops (the face encoder's two stride-2 convolutions make them one motion frame)."""
    return {"hidden_states": _video(g, b, channels=12), "timestep": t, "encoder_hidden_states": _text(g, b),
            "pose_hidden_states": _video(g, b, frames=FRAMES - 1),
            "face_pixel_values": torch.randn(b, 3, 4, SIZE, SIZE, generator=g)}


FACTORIES: dict = {
    "WanAnimateTransformer3DModel": (_wan_animate, _wan_animate_inputs),
    "JoyImageEditTransformer3DModel": (_joyimage("JoyImageEditTransformer3DModel"), _wan_inputs),
    "JoyImageEditPlusTransformer3DModel": (_joyimage("JoyImageEditPlusTransformer3DModel"), _joyimage_plus_inputs),
    "Kandinsky6SRTransformer3DModel": (_kandinsky6_sr, _kandinsky6_sr_inputs),
    "Kandinsky6Transformer3DModel": (_kandinsky6, _kandinsky6_inputs),
    "Kandinsky5Transformer3DModel": (_kandinsky5, _kandinsky5_inputs),
    "AllegroTransformer3DModel": (_allegro, _allegro_inputs),
    "WanVACETransformer3DModel": (_wan_vace, _wan_vace_inputs),
    "HeliosTransformer3DModel": (_helios, _wan_inputs),
    "CosmosTransformer3DModel": (_cosmos, _allegro_inputs),
    "ConsisIDTransformer3DModel": (_consisid, _consisid_inputs),
    "EasyAnimateTransformer3DModel": (_easyanimate, _wan_inputs),
    "HunyuanVideoTransformer3DModel": (_hunyuan_video("HunyuanVideoTransformer3DModel", **_HUNYUAN_VIDEO),
                                       _hunyuan_video_inputs),
    "HunyuanVideo15Transformer3DModel": (_hunyuan_video15, _hunyuan_video15_inputs),
    "HunyuanVideoFramepackTransformer3DModel": (
        _hunyuan_video("HunyuanVideoFramepackTransformer3DModel", has_image_proj=True, image_proj_dim=8,
                       has_clean_x_embedder=True, **_HUNYUAN_VIDEO),
        _framepack_inputs),
    "SkyReelsV2Transformer3DModel": (_wan_like("SkyReelsV2Transformer3DModel"), _wan_inputs),
    "ChronoEditTransformer3DModel": (_wan_like("ChronoEditTransformer3DModel", rope_temporal_skip_len=2), _wan_inputs),
}
UNITS: dict = {
    # a face adapter after each block: its residual add is the root's, on a cast of the adapter's output
    "WanAnimateTransformer3DModel": {"WanTransformerBlock": 2, "WanAnimateFaceBlockCrossAttention": 2},
    "JoyImageEditTransformer3DModel": {"JoyImageTransformerBlock": 2},
    "JoyImageEditPlusTransformer3DModel": {"JoyImageEditPlusTransformerBlock": 2},
    "Kandinsky6SRTransformer3DModel": {"Kandinsky6SRTransformerBlock": 2},
    "Kandinsky6Transformer3DModel": {"Kandinsky6FusedTransformerDecoderBlock": 2},
    # the text blocks process only the prompt
    "Kandinsky5Transformer3DModel": {"Kandinsky5TransformerDecoderBlock": 2},
    "AllegroTransformer3DModel": {"AllegroTransformerBlock": 2},
    "SkyReelsV2Transformer3DModel": {"SkyReelsV2TransformerBlock": 2},
    "ChronoEditTransformer3DModel": {"WanTransformerBlock": 2},
    # its cross-attention runs on the split-off current frames, so each block holds three residual chains
    # (routed in branch mode, each branch masked where it reads the stream)
    "HeliosTransformer3DModel": {"HeliosTransformerBlock": 2},
    # dual-stream blocks, then single-stream ones; the text refiner blocks process only the prompt
    "HunyuanVideoTransformer3DModel": {"HunyuanVideoTransformerBlock": 2, "HunyuanVideoSingleTransformerBlock": 2},
    "HunyuanVideo15Transformer3DModel": {"HunyuanVideo15TransformerBlock": 2},
    "EasyAnimateTransformer3DModel": {"EasyAnimateTransformerBlock": 2},
    "ConsisIDTransformer3DModel": {"ConsisIDBlock": 2},
    # each block adds the position embedding again before its residual adds: routed after that line;
    # the block's ControlNet variant returns (stream, projection), where the stream item is merged
    "CosmosTransformer3DModel": {"CosmosTransformerBlock": 2},
    # the first VACE block makes its control stream inside itself (proj_in(control) + hidden_states):
    # every VACE block is routed after that line and merges the stream item of its (hint, stream)
    "WanVACETransformer3DModel": {"WanTransformerBlock": 2, "WanVACETransformerBlock": 2},
    # the same blocks on the clean latents and 2x / 4x history packed in front of the current frames
    "HunyuanVideoFramepackTransformer3DModel": {"HunyuanVideoTransformerBlock": 2,
                                                "HunyuanVideoSingleTransformerBlock": 2},
}
LEFT_OUT = {
    "WanAnimate2Transformer3DModel": "a denoising step is two calls: kv_cache_mode='extract' runs the reference video at "
                                     "a fixed timestep 1 (transformer_wan_animate_2.py:857) and stores each layer's K/V "
                                     "in a WanAnimate2KVCache object (line 199); kv_cache_mode='cached' denoises "
                                     "against them (line 217) through flex attention only (line 263: no backward on "
                                     "CPU); the cache holds the batch inside an object, so one call of the sweep "
                                     "cannot be split per sample",
}
_PER_FRAME_T = ("its timestep is per frame ([B, F]: a flow-map step from t to r for each frame, read as "
                "`batch_size, num_frames = timestep.shape`); DTR routes each sample by one timestep, and a [B, F] "
                "timestep argument is refused (spec /timestep/arg)")
LEFT_OUT.update({
    "AnyFlowTransformer3DModel": _PER_FRAME_T,
    "AnyFlowFARTransformer3DModel": _PER_FRAME_T,
})

# the vanilla model does not compile with fullgraph=True: the sweep checks that, then skips
NO_FULLGRAPH = {
    "HunyuanVideo15Transformer3DModel": "data-dependent branch in the vanilla forward (is_t2v = torch.all(image_embeds == 0))",
}

# the vanilla model has no backward on CPU: the sweep checks that, then skips the training step
NO_BACKWARD = {
    "Kandinsky6SRTransformer3DModel": "its attention always runs on the flex backend, and FlexAttention has no "
                                      "backward on CPU (NotImplementedError)",
}
