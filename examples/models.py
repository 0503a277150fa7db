"""Build the backbone to train: a ``model_zoo`` model sized for the data, or one from a generated file.

Model names: ``dit:S/2`` (any ``dit()`` config, e.g. ``dit:B/4``), ``tiny_dit``, ``adm_unet:tiny``
(any ``adm_unet()`` config), ``uvit:tiny`` (any ``uvit()`` config). The image size, channel count
and number of classes are set from the data; ``model_kwargs`` override anything, e.g.
``{"depth": 6}``. Models predict epsilon only (``learn_sigma`` off where the family has it).

A generated file (``dtrsurgeon apply SPEC MODEL_PY --entry NAME -o OUT.py``) is imported and
``entry(**kwargs)`` is called with exactly the given ``kwargs``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

FAMILIES = ("dit", "tiny_dit", "adm_unet", "uvit")


class ModelError(Exception):
    """An unknown model name, a bad override, or an unusable generated file."""


def _family(name: str) -> tuple[str, str]:
    family, _, config = name.partition(":")
    if family not in FAMILIES or (family == "tiny_dit") != (config == ""):
        raise ModelError(f"unknown model {name!r}; expected dit:CONFIG (e.g. dit:S/2), tiny_dit, "
                         "adm_unet:CONFIG (e.g. adm_unet:tiny) or uvit:CONFIG (e.g. uvit:tiny)")
    return family, config


def check_name(name: str) -> None:
    """Raise :class:`ModelError` for a model name that :func:`build_model` cannot build."""
    family, config = _family(name)
    if family == "dit":
        from model_zoo.dit import CONFIGS

        if config not in CONFIGS:
            raise ModelError(f"unknown model {name!r}: no DiT config {config!r}; expected one of: {', '.join(CONFIGS)}")
    elif family in ("adm_unet", "uvit"):
        from model_zoo import adm_unet, uvit

        configs = (adm_unet if family == "adm_unet" else uvit).CONFIGS
        if config not in configs:
            raise ModelError(f"unknown model {name!r}: no {family} config {config!r}; "
                             f"expected one of: {', '.join(configs)}")


def data_kwargs(name: str, image_size: int, channels: int, num_classes: int | None) -> dict[str, Any]:
    """The constructor arguments that fit a model family to the data."""
    family, _ = _family(name)
    if family in ("dit", "tiny_dit"):
        return dict(input_size=image_size, in_channels=channels, num_classes=num_classes or 1, learn_sigma=False)
    if family == "adm_unet":
        return dict(image_size=image_size, in_channels=channels, num_classes=num_classes, learn_sigma=False)
    return dict(img_size=image_size, in_chans=channels, num_classes=num_classes or -1)


def build_model(name: str, image_size: int, channels: int, num_classes: int | None,
                model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    check_name(name)
    family, config = _family(name)
    kwargs = data_kwargs(name, image_size, channels, num_classes)
    kwargs.update(model_kwargs or {})
    try:
        if family == "tiny_dit":
            from model_zoo.dit import tiny_dit

            return tiny_dit(**kwargs)
        if family == "dit":
            from model_zoo.dit import dit

            return dit(config, **kwargs)
        if family == "adm_unet":
            from model_zoo.adm_unet import adm_unet

            return adm_unet(config, **kwargs)
        from model_zoo.uvit import uvit

        return uvit(config, **kwargs)
    except ModelError:
        raise
    except (TypeError, ValueError) as e:
        raise ModelError(f"cannot build {name} with {kwargs}: {e}") from None


def is_conditional(model: nn.Module) -> bool:
    """Does ``forward`` take class labels ``y`` that this model uses?"""
    if "y" not in inspect.signature(model.forward).parameters:
        return False
    emb = getattr(model, "y_embedder", None)  # DiT: always conditional
    if emb is not None:
        return True
    n = getattr(model, "num_classes", None)
    return n is not None and n > 0
