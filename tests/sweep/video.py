"""Tiny configs for the diffusers sweep, video group: FACTORIES (name -> (build, inputs)), UNITS, LEFT_OUT.

``build()`` returns the model under a fixed seed in eval mode; ``inputs(model, g, b, t)`` returns the
keyword arguments of one forward call for batch ``b``, generator ``g`` and timesteps ``t`` (long, [b]).
"""

FACTORIES: dict = {}
UNITS: dict = {}
NOT_YET = "no tiny config and inputs written in tests/sweep/video.py yet"
LEFT_OUT = {name: NOT_YET for name in (
    "AllegroTransformer3DModel",
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
    "WanVACETransformer3DModel",
)}
