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
    return dict(sample=torch.randn(b, 2, 32, generator=g), timestep=t)


FACTORIES: dict = {
    "UNet1DModel": (_unet1d, _unet1d_inputs),
}
UNITS: dict = {
    # 3 ResConvBlocks in each of the 4 down / up blocks and 6 in the mid block; a SelfAttention1d after each
    # ResConvBlock of AttnDownBlock1D, AttnUpBlock1D and the mid block
    "UNet1DModel": {"ResConvBlock": 18, "SelfAttention1d": 12},
}
NOT_YET = "no tiny config and inputs written in tests/sweep/other.py yet"
LEFT_OUT = {name: NOT_YET for name in (
    "LTX2VideoTransformer3DModel",
    "LTXVideoTransformer3DModel",
    "MiniMaxH3Transformer3DModel",
    "MochiTransformer3DModel",
    "MotifVideoTransformer3DModel",
    "SanaVideoTransformer3DModel",
    "SanaWMLTX2RefinerTransformer3DModel",
    "SanaWMTransformer3DModel",
    "I2VGenXLUNet",
    "UNetMotionModel",
    "UNetSpatioTemporalConditionModel",
    "AceStepTransformer1DModel",
    "LongCatAudioDiTTransformer",
    "MiniMaxMusic3Transformer1DModel",
    "StableAudio3DiTModel",
    "StableAudioDiTModel",
)}
