"""Example inputs: guess one forward call's arguments from the model itself.

Capture needs one call of the model's forward.  Models rarely ship example
inputs, so each forward parameter is guessed from its name and the model's
attributes (channels, size, class count), with a warning where a size had to
be made up.  ``model.example_inputs()`` wins when the model has one.
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from typing import Any

import torch
from torch import nn

from dtrsurgeon.errors import CaptureError

_IMAGE_ARGS = {"x", "sample", "hidden_states", "input", "inputs", "img", "image", "images", "latents", "z", "x_t", "xt"}
_TIME_ARGS = {"t", "timestep", "timesteps", "time", "noise_labels", "sigma", "sigmas", "noise_level"}
_LABEL_ARGS = {"y", "class_labels", "labels", "label", "class_label", "classes"}
_CHANNEL_ATTRS = ("in_channels", "in_chans", "img_channels", "channels")
_SIZE_ATTRS = ("input_size", "img_size", "image_size", "sample_size", "img_resolution", "resolution")
# Number of classes of an integer class-id input (an nn.Embedding table): DiT, ADM, U-ViT, diffusers.
_LABEL_COUNTS = ("num_classes", "n_classes", "num_embeds_ada_norm", "num_class_embeds")
# Length of a float label vector, a class given one-hot (EDM / EDM2 convention; 0 = unconditional).
_LABEL_DIMS = ("label_dim",)
# A label embedding by its attribute name (map_label, emb_label, label_emb, class_embedding, ...).
_LABEL_MODULE = re.compile(r"(label|class).*(emb|map|proj)|(emb|map|proj).*(label|class)", re.IGNORECASE)
# Token grid of a patch model: positional embedding [1, extras + (side / patch)**2, dim].
_POS_EMBEDS = ("pos_embed", "pos_embedding", "positional_embedding", "position_embedding")
_EXTRA_TOKENS = ("extras", "num_prefix_tokens", "num_extra_tokens")
# Side of the example image when the model stores no size: 64 = 2**6 survives the halvings
# of a U-Net with up to six downsamplings and is a multiple of the usual patch sizes (2 to 64).
DEFAULT_IMAGE_SIZE = 64


class GuessedInputWarning(UserWarning):
    """An example input was guessed without the model saying its size."""


def _int(value: Any, zero: bool = False) -> int | None:
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], int):
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (zero and value == 0)):
        return value
    return None


def _attr(mod: nn.Module, name: str, zero: bool = False) -> int | None:
    with warnings.catch_warnings():  # diffusers warns on config values read as attributes
        warnings.simplefilter("ignore")
        return _int(getattr(mod, name, None), zero)


def _first_attr(model: nn.Module, names: tuple[str, ...], zero: bool = False) -> int | None:
    """The first positive int (or first item of an int tuple) stored under one of
    ``names``: on ``model`` itself first, then on its modules in ``modules()`` order."""
    for name in names:
        if (value := _attr(model, name, zero)) is not None:
            return value
    for name in names:
        for mod in model.modules():
            if (value := _attr(mod, name, zero)) is not None:
                return value
    return None


def _image_channels(model: nn.Module) -> int | None:
    """Channels of the image input.

    The named attributes first (``in_channels`` is also what the first conv of
    a U-Net and the conv of a patch embedding store, and ``modules()`` yields
    modules in the order they were assigned, so the input conv comes before
    the convs inside the blocks).  Then a patch embedding made of a linear
    layer over flattened patches: ``in_features / patch_size**2``.
    """
    channels = _first_attr(model, _CHANNEL_ATTRS)
    if channels is not None:
        return channels
    for mod in model.modules():
        patch = _attr(mod, "patch_size")
        if patch is None:
            continue
        for sub in mod.modules():
            features = _attr(sub, "in_features")
            if features is not None and features % (patch * patch) == 0:
                return features // (patch * patch)
    return None


def _token_grid_size(model: nn.Module) -> int | None:
    """Image side from a patch model's positional embedding: a [1, L, D] tensor
    ``pos_embed`` with ``patch_size`` on its module (or on a module inside it,
    the patch embedding) and ``extras`` non-image tokens (default 0) gives
    ``sqrt(L - extras) * patch_size`` when ``L - extras`` is a square."""
    for mod in model.modules():
        for name in _POS_EMBEDS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = getattr(mod, name, None)
            if not isinstance(table, torch.Tensor) or table.dim() != 3 or table.shape[0] != 1:
                continue
            patch = _first_attr(mod, ("patch_size",))
            if patch is None:
                continue
            tokens = table.shape[1] - (_first_attr(mod, _EXTRA_TOKENS) or 0)
            side = math.isqrt(tokens) if tokens > 0 else 0
            if side > 0 and side * side == tokens:
                return side * patch
    return None


def _label_input(model: nn.Module) -> tuple[str | None, int]:
    """How the model takes class labels: ("ids", n) integer ids in [0, n),
    ("onehot", n) float vectors [B, n], ("none", 0) unconditional (pass None),
    (None, 0) nothing said."""
    if (n := _first_attr(model, _LABEL_COUNTS)) is not None:
        return "ids", n
    if (n := _first_attr(model, _LABEL_DIMS, zero=True)) is not None:
        return ("onehot", n) if n else ("none", 0)
    for path, mod in model.named_modules():
        if not _LABEL_MODULE.search(path.rsplit(".", 1)[-1]):
            continue
        if (n := _attr(mod, "num_embeddings")) is not None:
            return "ids", n
        if (n := _attr(mod, "in_features")) is not None or (n := _attr(mod, "in_channels")) is not None:
            return "onehot", n
    for mod in model.modules():  # an empty label slot (`self.map_label = None`): unconditional
        slots = {**vars(mod), **mod._modules}
        if any(value is None and _LABEL_MODULE.search(name) for name, value in slots.items()):
            return "none", 0
    return None, 0


def example_inputs(model: nn.Module, timestep_arg: str, t_range: tuple[float, float], batch_size: int = 2):
    """(args, kwargs) to capture ``model`` with.

    Uses ``model.example_inputs()`` when the model has one; otherwise guesses
    each forward parameter from its name and the model:

    - timestep (``timestep_arg`` or ``t``/``timesteps``/``sigma``/...): values
      drawn in ``t_range``, integers when both ends are;
    - image (``x``/``sample``/...): ``[B, C, S, S]``.  ``C``: an
      ``in_channels``/``in_chans``/``img_channels``/``channels`` attribute of
      the model, else of its first module that has one (the first conv of a
      U-Net, the conv of a patch embedding: the image goes into it first),
      else a linear patch embedding's ``in_features / patch_size**2``.  ``S``:
      an ``input_size``/``img_size``/``image_size``/``sample_size``/
      ``img_resolution``/``resolution`` attribute, else the token grid of a
      ``pos_embed`` [1, L, D] with ``patch_size`` and ``extras``
      (``sqrt(L - extras) * patch_size``), else DEFAULT_IMAGE_SIZE (64, with a
      GuessedInputWarning: code that depends on the resolution may take
      another path than at the real size);
    - class labels (``y``/``class_labels``/...): integer ids in ``[0, n)`` for
      ``num_classes``-style models (DiT, ADM, U-ViT, diffusers), a one-hot
      float ``[B, label_dim]`` for ``label_dim`` models (EDM), ``None`` when the
      model is unconditional (``label_dim == 0``, an empty label embedding
      slot); defaulted label parameters are left to their defaults unless the
      model has classes.

    Other parameters with defaults keep them; one without raises a CaptureError.
    """
    if callable(getattr(model, "example_inputs", None)):
        args, kwargs = model.example_inputs(batch_size)
        return like_model(model, (tuple(args), dict(kwargs)))
    sig = inspect.signature(model.forward)
    gen = torch.Generator().manual_seed(0)
    kwargs: dict[str, Any] = {}
    label_kind, labels = _label_input(model)
    where = f"{type(model).__name__}.forward argument"
    for name, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty and name != timestep_arg and not (name in _LABEL_ARGS and labels):
            continue
        if name == timestep_arg or name in _TIME_ARGS:
            t0, t1 = t_range
            kwargs[name] = t0 + (t1 - t0) * torch.rand(batch_size, generator=gen)
            if float(t0).is_integer() and float(t1).is_integer():
                kwargs[name] = kwargs[name].round().long()
        elif name in _IMAGE_ARGS:
            channels = _image_channels(model)
            if channels is None:
                raise CaptureError(
                    f"cannot guess an example value for {where} {name!r}: no in_channels/in_chans/img_channels "
                    "attribute and no conv or patch embedding that says the input channels; "
                    "pass example_inputs=(args, kwargs) (CLI: --example-inputs FILE.pt)"
                )
            size = _first_attr(model, _SIZE_ATTRS) or _token_grid_size(model)
            if size is None:
                patch = _first_attr(model, ("patch_size",)) or 1
                size = patch * -(-DEFAULT_IMAGE_SIZE // patch)
                warnings.warn(
                    f"{where} {name!r}: no size attribute or positional-embedding grid, so the example image is "
                    f"{size}x{size}; pass example_inputs (CLI: --example-inputs FILE.pt) to capture at the real size",
                    GuessedInputWarning,
                    stacklevel=2,
                )
            kwargs[name] = torch.randn(batch_size, channels, size, size, generator=gen)
        elif name in _LABEL_ARGS:
            if label_kind == "onehot":
                ids = torch.randint(0, labels, (batch_size,), generator=gen)
                kwargs[name] = torch.nn.functional.one_hot(ids, labels).float()
            elif label_kind == "none":
                kwargs[name] = None
            else:
                kwargs[name] = torch.randint(0, labels or 1, (batch_size,), generator=gen)
        else:
            raise CaptureError(
                f"cannot guess an example value for {where} {name!r}; "
                "pass example_inputs=(args, kwargs) (CLI: --example-inputs FILE.pt)"
            )
    return like_model(model, ((), kwargs))


def like_model(model: nn.Module, inputs):
    """Floating-point inputs in the model's dtype, every tensor on its device."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return inputs

    def convert(v):
        if isinstance(v, torch.Tensor):
            return v.to(device=param.device, dtype=param.dtype if v.is_floating_point() else v.dtype)
        return v

    return torch.utils._pytree.tree_map(convert, inputs)
