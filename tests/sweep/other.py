"""Tiny configs for the diffusers sweep, other group: FACTORIES (name -> (build, inputs)), UNITS, LEFT_OUT.

``build()`` returns the model under a fixed seed in eval mode; ``inputs(model, g, b, t)`` returns the
keyword arguments of one forward call for batch ``b``, generator ``g`` and timesteps ``t`` (long, [b]).
"""

import torch

from tests.diffusers_models import _seeded


def _unet1d():
    """Dance-Diffusion-style 1-D U-Net: ResConvBlocks everywhere, SelfAttention1d in the attention levels
    (one head of width 32: the block takes channels // 32 heads); the Fourier timestep embedding of 16
    channels is concatenated to the 2-channel sample in the first block."""
    import diffusers as d

    return _seeded(d.UNet1DModel, sample_size=32, in_channels=2, out_channels=2, extra_in_channels=16,
                   time_embedding_dim=16, block_out_channels=(32, 32),
                   down_block_types=("DownBlock1DNoSkip", "AttnDownBlock1D"),
                   up_block_types=("AttnUpBlock1D", "UpBlock1DNoSkip"), mid_block_type="UNetMidBlock1D")


def _unet1d_inputs(model, g, b, t):
    return {"sample": torch.randn(b, 2, 32, generator=g), "timestep": t}


def _stable_audio():
    """Stable Audio DiT: 2 StableAudioDiTBlocks of width 16 (2 heads of 8, 1 key/value head) over a
    4-channel latent; one global token is prepended to the sequence and cut off at the output."""
    import diffusers as d

    return _seeded(d.StableAudioDiTModel, sample_size=8, in_channels=4, num_layers=2, attention_head_dim=8,
                   num_attention_heads=2, num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=16,
                   time_proj_dim=16, global_states_input_dim=8, cross_attention_input_dim=8)


def _stable_audio_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 4, 8, generator=g), "timestep": t.float() / 1000,
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "global_hidden_states": torch.randn(b, 1, 8, generator=g)}


def _stable_audio3():
    """Stable Audio 3 DiT: 2 StableAudio3DiTBlocks of width 16 (differential attention, 2 heads of 8) and
    2 memory tokens prepended to the sequence."""
    import diffusers as d

    return _seeded(d.StableAudio3DiTModel, io_channels=4, embed_dim=16, depth=2, num_heads=2, cond_token_dim=8,
                   global_cond_dim=8, local_add_cond_dim=4, timestep_features_dim=8, ff_mult=2.0,
                   num_memory_tokens=2)


def _stable_audio3_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 4, 8, generator=g), "timestep": t.float() / 1000,
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "global_hidden_states": torch.randn(b, 8, generator=g)}


def _minimax_music3():
    """MiniMax Music 3: 2 MiniMaxMusic3TransformerBlocks of width 16; the timestep embedding is prepended to
    the sequence as one token."""
    import diffusers as d

    return _seeded(d.MiniMaxMusic3Transformer1DModel, in_channels=4, condition_dim=8, num_layers=2,
                   num_attention_heads=2, attention_head_dim=8, ff_inner_dim=32, rotary_dim=4,
                   fourier_embedding_dim=8)


def _minimax_music3_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 4, 8, generator=g), "timestep": t.float() / 1000,
            "encoder_hidden_states": torch.randn(b, 8, 8, generator=g)}


def _longcat_audio():
    """LongCat audio DiT: 2 AudioDiTBlocks of width 16 with a global adaLN and a long skip around them; the
    text tokens pass 4 ConvNeXt blocks first."""
    import diffusers as d

    return _seeded(d.LongCatAudioDiTTransformer, dit_dim=16, dit_depth=2, dit_heads=2, dit_text_dim=8,
                   latent_dim=4, ff_mult=2.0)


def _longcat_audio_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 8, 4, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "encoder_attention_mask": torch.ones(b, 5, dtype=torch.bool), "timestep": t.float() / 1000}


def _ace_step():
    """ACE-Step 1.5: 2 AceStepTransformerBlocks of width 16 (sliding-window then full self-attention), patch 2
    over the concatenated context and noisy latents."""
    import diffusers as d

    return _seeded(d.AceStepTransformer1DModel, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=8, in_channels=8,
                   audio_acoustic_hidden_dim=4, patch_size=2, sliding_window=4)


def _ace_step_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 8, 4, generator=g), "timestep": t.float() / 1000,
            "timestep_r": t.float() / 1000, "encoder_hidden_states": torch.randn(b, 5, 16, generator=g),
            "context_latents": torch.randn(b, 8, 4, generator=g)}


def _ltx():
    """LTX-Video: 2 LTXVideoTransformerBlocks of width 16 over 2x2x2 latent tokens (frames, height, width)."""
    import diffusers as d

    return _seeded(d.LTXVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=8)


def _ltx_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 8, 4, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "timestep": t, "encoder_attention_mask": torch.ones(b, 5), "num_frames": 2, "height": 2, "width": 2}


def _ltx2():
    """LTX-2 audio-video: 2 LTX2VideoTransformerBlocks, each carrying the video tokens (width 16) and the
    audio tokens (width 16) with cross-attention between them."""
    import diffusers as d

    return _seeded(d.LTX2VideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
                   audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
                   num_layers=2, caption_channels=8)


def _ltx2_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 8, 4, generator=g),
            "audio_hidden_states": torch.randn(b, 4, 4, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "audio_encoder_hidden_states": torch.randn(b, 5, 8, generator=g), "timestep": t,
            "encoder_attention_mask": torch.ones(b, 5), "audio_encoder_attention_mask": torch.ones(b, 5),
            "num_frames": 2, "height": 2, "width": 2, "audio_num_frames": 4}


def _mochi():
    """Mochi: 2 MochiTransformerBlocks (joint video / text attention, width 16; the last one text-pre-only)
    over 2 frames of 2x2 patches."""
    import diffusers as d

    return _seeded(d.MochiTransformer3DModel, patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                   pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=16,
                   max_sequence_length=5)


def _mochi_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 4, 2, 4, 4, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 16, generator=g),
            "timestep": t, "encoder_attention_mask": torch.ones(b, 5, dtype=torch.bool)}


def _motif_video():
    """Motif-Video: 2 dual-stream MotifVideoTransformerBlocks then 2 single-stream blocks (video and text
    tokens concatenated inside the block), width 16, over 2 frames of 2x2 patches."""
    import diffusers as d

    return _seeded(d.MotifVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=8, num_layers=2, num_single_layers=2, mlp_ratio=2.0, patch_size=2,
                   text_embed_dim=8, rope_axes_dim=(2, 2, 4))


def _motif_video_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 4, 2, 4, 4, generator=g), "timestep": t,
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g), "encoder_attention_mask": torch.ones(b, 5)}


def _sana_video():
    """Sana-Video: 2 SanaVideoTransformerBlocks of width 16 (linear self-attention, cross-attention, a GLU
    conv feed-forward over the frames x height x width grid) over 2 frames of 2x2 patches."""
    import diffusers as d

    return _seeded(d.SanaVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=8, num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8,
                   cross_attention_dim=16, caption_channels=8, mlp_ratio=2.0, sample_size=4)


def _sana_video_inputs(model, g, b, t):
    return {"hidden_states": torch.randn(b, 4, 2, 4, 4, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "timestep": t}


def _sana_wm_refiner():
    """SANA-WM's LTX-2 refiner, video-only: 2 SanaWMLTX2RefinerTransformerBlocks of width 16 over 2x2x2
    latent tokens (the audio half of each block is built but not run)."""
    import diffusers as d

    return _seeded(d.SanaWMLTX2RefinerTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
                   audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
                   num_layers=2, caption_channels=8)


def _sana_wm_refiner_inputs(model, g, b, t):
    """The RoPE is built for one sample (it broadcasts over the batch, so each sample alone gets the same)."""
    rope = model.build_rotary_emb_for_absolute_positions(1, [0, 1], 2, 2, torch.device("cpu"), fps=24.0)
    return {"hidden_states": torch.randn(b, 8, 4, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 8, generator=g),
            "timestep": t, "video_rotary_emb": rope, "encoder_attention_mask": torch.ones(b, 5)}


def _svd_unet():
    """Stable Video Diffusion U-Net: one level of width 32 (its ResnetBlock2Ds take 32 norm groups) with
    cross-attention, and the mid block; each SpatioTemporalResBlock holds a spatial ResnetBlock2D and a
    TemporalResnetBlock, each TransformerSpatioTemporalModel a spatial BasicTransformerBlock and a
    TemporalBasicTransformerBlock.  The frames are folded into the batch in the root's forward."""
    import diffusers as d

    return _seeded(d.UNetSpatioTemporalConditionModel, sample_size=8, in_channels=4, out_channels=4,
                   down_block_types=("CrossAttnDownBlockSpatioTemporal",),
                   up_block_types=("CrossAttnUpBlockSpatioTemporal",), block_out_channels=(32,),
                   addition_time_embed_dim=4, projection_class_embeddings_input_dim=12, layers_per_block=1,
                   cross_attention_dim=16, num_attention_heads=(2,), num_frames=2)


def _svd_unet_inputs(model, g, b, t):
    return {"sample": torch.randn(b, 2, 4, 8, 8, generator=g), "timestep": t,
            "encoder_hidden_states": torch.randn(b, 1, 16, generator=g),
            "added_time_ids": torch.randn(b, 3, generator=g)}


def _i2vgen_xl():
    """I2VGen-XL U-Net: the UNet3DConditionModel layout (2 levels of width 16 and 32, frames folded into the
    batch) with a temporal transformer on the input and the image latents encoded beside the sample."""
    import diffusers as d

    return _seeded(d.I2VGenXLUNet, sample_size=8, in_channels=4, out_channels=4,
                   down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D",
            "CrossAttnUpBlock3D"),
                   block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                   attention_head_dim=4)


def _i2vgen_xl_inputs(model, g, b, t):
    return {"sample": torch.randn(b, 4, 2, 8, 8, generator=g), "timestep": t, "fps": torch.full((b,), 8),
            "image_latents": torch.randn(b, 4, 2, 8, 8, generator=g),
            "image_embeddings": torch.randn(b, 16, generator=g),
            "encoder_hidden_states": torch.randn(b, 5, 16, generator=g)}


def _unet_motion():
    """AnimateDiff U-Net: the UNet2DConditionModel layout (2 levels of width 16 and 32) with a motion module
    (AnimateDiffTransformer3D, temporal attention over the frames) after every resnet."""
    import diffusers as d

    return _seeded(d.UNetMotionModel, sample_size=8, in_channels=4, out_channels=4,
                   down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                   up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), block_out_channels=(16, 32),
                   layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, num_attention_heads=2,
                   motion_num_attention_heads=2, motion_max_seq_length=8)


def _unet_motion_inputs(model, g, b, t):
    """One frame: the model takes the text embeddings per frame ([B * F, S, D], the AnimateDiff pipeline
    repeats them), which the sweep's per-sample split cannot slice for F > 1; tests/test_diffusers_folded.py
    checks two frames per sample."""
    return {"sample": torch.randn(b, 4, 1, 8, 8, generator=g), "timestep": t,
            "encoder_hidden_states": torch.randn(b, 5, 16, generator=g)}


FACTORIES: dict = {
    "UNet1DModel": (_unet1d, _unet1d_inputs),
    "StableAudioDiTModel": (_stable_audio, _stable_audio_inputs),
    "StableAudio3DiTModel": (_stable_audio3, _stable_audio3_inputs),
    "MiniMaxMusic3Transformer1DModel": (_minimax_music3, _minimax_music3_inputs),
    "LongCatAudioDiTTransformer": (_longcat_audio, _longcat_audio_inputs),
    "AceStepTransformer1DModel": (_ace_step, _ace_step_inputs),
    "LTXVideoTransformer3DModel": (_ltx, _ltx_inputs),
    "LTX2VideoTransformer3DModel": (_ltx2, _ltx2_inputs),
    "MochiTransformer3DModel": (_mochi, _mochi_inputs),
    "MotifVideoTransformer3DModel": (_motif_video, _motif_video_inputs),
    "SanaVideoTransformer3DModel": (_sana_video, _sana_video_inputs),
    "SanaWMLTX2RefinerTransformer3DModel": (_sana_wm_refiner, _sana_wm_refiner_inputs),
    "UNetSpatioTemporalConditionModel": (_svd_unet, _svd_unet_inputs),
    "I2VGenXLUNet": (_i2vgen_xl, _i2vgen_xl_inputs),
    "UNetMotionModel": (_unet_motion, _unet_motion_inputs),
}
UNITS: dict = {
    # 3 ResConvBlocks in each of the 4 down / up blocks and 6 in the mid block; a SelfAttention1d after each
    # ResConvBlock of AttnDownBlock1D, AttnUpBlock1D and the mid block
    "UNet1DModel": {"ResConvBlock": 18, "SelfAttention1d": 12},
    # the blocks, and the 1x1 convs written as root-level residuals (preprocess_conv(x) + x before proj_in,
    # postprocess_conv(x) + x after proj_out)
    "StableAudioDiTModel": {"StableAudioDiTBlock": 2, "Conv1d": 2},
    "StableAudio3DiTModel": {"StableAudio3DiTBlock": 2, "Conv1d": 2},
    "MiniMaxMusic3Transformer1DModel": {"MiniMaxMusic3TransformerBlock": 2, "Conv1d": 2},
    # the ConvNeXt blocks of text_conv_layer run on the text tokens only, not on the routed stream
    "LongCatAudioDiTTransformer": {"AudioDiTBlock": 2},
    "AceStepTransformer1DModel": {"AceStepTransformerBlock": 2},
    "LTXVideoTransformer3DModel": {"LTXVideoTransformerBlock": 2},
    # joint audio-video blocks: the video tokens (the first sample input, output 0) are routed by default
    "LTX2VideoTransformer3DModel": {"LTX2VideoTransformerBlock": 2},
    "MochiTransformer3DModel": {"MochiTransformerBlock": 2},
    "MotifVideoTransformer3DModel": {"MotifVideoTransformerBlock": 2, "MotifVideoSingleTransformerBlock": 2},
    "SanaVideoTransformer3DModel": {"SanaVideoTransformerBlock": 2},
    "SanaWMLTX2RefinerTransformer3DModel": {"SanaWMLTX2RefinerTransformerBlock": 2},
    # as UNet3DConditionModel: frames folded into the batch (sample-major); the spatial resnets, the
    # spatial / temporal transformer blocks and the one of transformer_in; the TemporalConvLayers start their
    # stream inside a reshape and are left out (plan.skipped); image_latents_temporal_encoder runs on the
    # image latents only, not on the routed stream
    "I2VGenXLUNet": {"ResnetBlock2D": 8, "BasicTransformerBlock": 9},
    # the spatial resnets and transformer blocks, and the motion modules (AnimateDiffTransformer3D:
    # x + proj_out(blocks(proj_in(norm(x)))), a residual block around its temporal BasicTransformerBlock);
    # one frame here (see _unet_motion_inputs), two folded into the batch in tests/test_diffusers_folded.py
    "UNetMotionModel": {"ResnetBlock2D": 8, "BasicTransformerBlock": 4, "AnimateDiffTransformer3D": 7},
    # frames folded into the batch (sample-major) for the spatial ResnetBlock2Ds and BasicTransformerBlocks;
    # the TemporalResnetBlocks run on [B, C, F, H, W]; the TemporalBasicTransformerBlocks fold the positions
    # into the batch inside their forward ([B * F, S, C] -> [B * S, F, C]), so their stream starts inside the
    # unit and they are left out (plan.skipped)
    "UNetSpatioTemporalConditionModel": {"ResnetBlock2D": 5, "TemporalResnetBlock": 5, "BasicTransformerBlock": 4},
}
LEFT_OUT = {
    "MiniMaxH3Transformer3DModel": "its timestep is not per sample: it holds the distinct noise levels of the packed "
                                   "video / audio / text sequence ([num_timesteps], shared by the batch) and every "
                                   "row picks one through timestep_indices, so a task is per row; DTR's task index "
                                   "is one per sample (a [B] or 0-d timestep)",
    "SanaWMTransformer3DModel": "its timestep is per frame ([B, 1, T], diffusion forcing; a [B] timestep fails in "
                                "its blocks at t.shape[2]), so a task is per frame; DTR's task index is one per "
                                "sample (a [B] or 0-d timestep)",
}
