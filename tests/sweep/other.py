"""Tiny configs for the diffusers sweep, other group: FACTORIES (name -> (build, inputs)), UNITS, LEFT_OUT.

``build()`` returns the model under a fixed seed in eval mode; ``inputs(model, g, b, t)`` returns the
keyword arguments of one forward call for batch ``b``, generator ``g`` and timesteps ``t`` (long, [b]).
"""

FACTORIES: dict = {}
UNITS: dict = {}
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
    "UNet1DModel",
    "AceStepTransformer1DModel",
    "LongCatAudioDiTTransformer",
    "MiniMaxMusic3Transformer1DModel",
    "StableAudio3DiTModel",
    "StableAudioDiTModel",
)}
