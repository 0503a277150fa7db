"""Tiny configs for the diffusers sweep, image group: FACTORIES (name -> (build, inputs)), UNITS, LEFT_OUT.

``build()`` returns the model under a fixed seed in eval mode; ``inputs(model, g, b, t)`` returns the
keyword arguments of one forward call for batch ``b``, generator ``g`` and timesteps ``t`` (long, [b]).
"""

FACTORIES: dict = {}
UNITS: dict = {}
NOT_YET = "no tiny config and inputs written in tests/sweep/image.py yet"
LEFT_OUT = {name: NOT_YET for name in (
    "BriaFibo2Transformer2DModel",
    "BriaFiboTransformer2DModel",
    "BriaTransformer2DModel",
    "CogView3PlusTransformer2DModel",
    "DreamLiteTransformer2DModel",
    "DreamLiteUNetModel",
    "ErnieImageTransformer2DModel",
    "Flux2Transformer2DModel",
    "Flux3Transformer2DModel",
    "GlmImageTransformer2DModel",
    "HunyuanDiT2DModel",
    "HunyuanImageTransformer2DModel",
    "Ideogram4Transformer2DModel",
    "Kandinsky3UNet",
    "Krea2Transformer2DModel",
    "LongCatImageTransformer2DModel",
    "LuminaNextDiT2DModel",
    "NucleusMoEImageTransformer2DModel",
    "OmniGenTransformer2DModel",
    "OvisImageTransformer2DModel",
    "PRXTransformer2DModel",
    "QwenImage21Transformer2DModel",
    "ZImageTransformer2DModel",
)}
LEFT_OUT.update({
    "Lumina2Transformer2DModel": "capture fails on data-dependent Python (len(set(seq_lengths))): issue 11 item 4",
    "HiDreamImageTransformer2DModel": "capture fails on .numpy() in its MoE router: issue 11 item 4",
})
