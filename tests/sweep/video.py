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


def _wan_vace():
    import diffusers as d

    return _seeded(d.WanVACETransformer3DModel, **_wan_kwargs(vace_layers=[0, 1], vace_in_channels=4))


def _wan_vace_inputs(model, g, b, t):
    return {**_wan_inputs(model, g, b, t), "control_hidden_states": _video(g, b)}


FACTORIES: dict = {
    "AllegroTransformer3DModel": (_allegro, _allegro_inputs),
    "WanVACETransformer3DModel": (_wan_vace, _wan_vace_inputs),
}
UNITS: dict = {
    "AllegroTransformer3DModel": {"AllegroTransformerBlock": 2},
}
NOT_YET = "no tiny config and inputs written in tests/sweep/video.py yet"
LEFT_OUT = {name: NOT_YET for name in (
    "AnyFlowFARTransformer3DModel",
    "AnyFlowTransformer3DModel",
    "ChronoEditTransformer3DModel",
    "ConsisIDTransformer3DModel",
    "CosmosTransformer3DModel",
    "EasyAnimateTransformer3DModel",
    "HeliosTransformer3DModel",
    "HunyuanVideo15Transformer3DModel",
    "HunyuanVideoFramepackTransformer3DModel",
    "HunyuanVideoTransformer3DModel",
    "JoyImageEditPlusTransformer3DModel",
    "JoyImageEditTransformer3DModel",
    "Kandinsky5Transformer3DModel",
    "Kandinsky6SRTransformer3DModel",
    "Kandinsky6Transformer3DModel",
    "SkyReelsV2Transformer3DModel",
    "WanAnimate2Transformer3DModel",
    "WanAnimateTransformer3DModel",
)}
LEFT_OUT.update({
    "WanVACETransformer3DModel": "the first VACE block makes its control stream inside itself (control_hidden_states = "
                                 "proj_in(control_hidden_states) + hidden_states) and returns (hint, stream): a "
                                 "tuple-returning unit routes only streams that are forward parameters, so "
                                 "vace_blocks.0 is left out while vace_blocks.1.. are routed",
})
