"""The diffusers sweep's tiny configs beyond tests/diffusers_models.py, one module per group of classes."""

from tests.sweep import image, other, video

GROUPS = (image, video, other)
