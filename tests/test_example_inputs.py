"""Example inputs guessed for a model that brings none (CLI without --example-inputs).

The toy modules below only copy the attribute layouts of released backbones:
a U-Net that stores no sizes (EDM's networks), a preconditioning wrapper with
``img_resolution``/``img_channels``/``label_dim`` and one-hot class vectors, a
U-ViT-like transformer with ``pos_embed``/``patch_size``/``extras`` and no image
size, and the DiT/ADM layout (``in_channels``/``input_size``/``num_classes``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dtrsurgeon.analysis.capture import capture
from dtrsurgeon.analysis.inputs import DEFAULT_IMAGE_SIZE, GuessedInputWarning, example_inputs
from dtrsurgeon.errors import CaptureError

B = 2


def guess(model, arg, t_range, expect_warning=False):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args, kwargs = example_inputs(model, arg, t_range, batch_size=B)
    guessed = [w for w in caught if issubclass(w.category, GuessedInputWarning)]
    assert bool(guessed) == expect_warning, [str(w.message) for w in caught]
    assert args == ()
    return kwargs


def assert_one_hot(labels, n):
    assert labels.shape == (B, n) and labels.dtype == torch.float32
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert labels.sum(dim=1).tolist() == [1.0] * B


# -- a U-Net that stores neither its input channels nor its resolution ---------


class Linear(nn.Module):
    """A linear layer of one's own (EDM writes its own): in_features, no nn.Linear."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features**0.5)

    def forward(self, x):
        return x @ self.weight.t()


class BareUNet(nn.Module):
    """Three downsamplings with skips: the image side must be a multiple of 8."""

    def __init__(self, in_channels=5, width=8, label_dim=0):
        super().__init__()
        self.map_noise = Linear(1, width)  # registered before the input conv; not a conv
        self.map_label = Linear(label_dim, width) if label_dim else None
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(3))
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * width, width, 2, stride=2) for _ in range(3))
        self.conv_out = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self.map_noise(noise_labels.float().reshape(-1, 1))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        h = self.conv_in(x) + emb[:, :, None, None]
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        for up in self.up:
            h = up(torch.cat([h, h], dim=1))
            h = h + skips.pop()
        return self.conv_out(h)


def test_unet_without_size_attributes_gets_channels_from_its_first_conv():
    model = BareUNet(in_channels=5)
    kwargs = guess(model, "noise_labels", (-1.5, 1.1), expect_warning=True)
    assert kwargs["x"].shape == (B, 5, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
    assert kwargs["noise_labels"].shape == (B,) and kwargs["noise_labels"].dtype == torch.float32
    assert ((kwargs["noise_labels"] >= -1.5) & (kwargs["noise_labels"] <= 1.1)).all()
    assert kwargs["class_labels"] is None  # map_label = None: unconditional
    assert "augment_labels" not in kwargs  # defaulted, left to its default
    assert DEFAULT_IMAGE_SIZE % 2**6 == 0
    assert model(**kwargs).shape == kwargs["x"].shape


def test_default_size_warning_is_one_line_and_says_what_to_pass():
    with pytest.warns(GuessedInputWarning) as record:
        example_inputs(BareUNet(), "noise_labels", (-1.5, 1.1))
    msg = str(record[0].message)
    assert "BareUNet.forward argument 'x'" in msg and "--example-inputs FILE.pt" in msg and "\n" not in msg


def test_label_embedding_without_label_dim_gets_one_hot_vectors():
    model = BareUNet(in_channels=3, label_dim=7)
    kwargs = guess(model, "noise_labels", (-1.5, 1.1), expect_warning=True)
    assert_one_hot(kwargs["class_labels"], 7)
    assert model(**kwargs).shape == (B, 3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)


# -- a preconditioning wrapper with EDM's attributes --------------------------


class Precond(nn.Module):
    def __init__(self, img_resolution=16, img_channels=3, label_dim=10):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.model = BareUNet(in_channels=img_channels, label_dim=label_dim)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        assert not force_fp32 and not model_kwargs
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        assert class_labels is None or class_labels.shape[0] == x.shape[0]
        return self.model(x / (1 + sigma**2).sqrt(), sigma.log().flatten() / 4, class_labels=class_labels)


def test_label_dim_model_gets_one_hot_class_vectors():
    model = Precond(img_resolution=16, img_channels=3, label_dim=10)
    kwargs = guess(model, "sigma", (0.002, 80))
    assert kwargs["x"].shape == (B, 3, 16, 16) and kwargs["x"].dtype == torch.float32
    assert kwargs["sigma"].dtype == torch.float32 and ((kwargs["sigma"] >= 0.002) & (kwargs["sigma"] <= 80)).all()
    assert_one_hot(kwargs["class_labels"], 10)
    assert "force_fp32" not in kwargs
    assert model(**kwargs).shape == (B, 3, 16, 16)


def test_label_dim_zero_leaves_a_defaulted_label_out():
    model = Precond(img_resolution=8, img_channels=2, label_dim=0)
    kwargs = guess(model, "sigma", (0.002, 80))
    assert set(kwargs) == {"x", "sigma"}
    assert kwargs["x"].shape == (B, 2, 8, 8)
    assert model(**kwargs).shape == (B, 2, 8, 8)


class NoDefaultLabels(nn.Module):
    def __init__(self):
        super().__init__()
        self.label_dim = 0
        self.in_channels = 3
        self.resolution = 8
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, t, class_labels):
        assert class_labels is None
        return self.conv(x)


def test_label_dim_zero_passes_none_for_a_label_without_default():
    model = NoDefaultLabels()
    kwargs = guess(model, "t", (0, 999))
    assert kwargs["class_labels"] is None
    assert kwargs["t"].dtype == torch.int64
    assert model(**kwargs).shape == (B, 3, 8, 8)


def test_one_hot_labels_capture():
    model = Precond(img_resolution=16, img_channels=3, label_dim=4)
    cap = capture(model, *example_inputs(model, "sigma", (0.002, 80)))
    assert any(n.op == "call_function" for n in cap.graph.nodes)


# -- a U-ViT-like transformer: token grid, no image size ----------------------


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TokenNet(nn.Module):
    def __init__(self, img_size=24, patch_size=4, in_chans=3, dim=16, num_classes=-1):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.time_embed = nn.Linear(1, dim)
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, dim)
            self.extras = 2
        else:
            self.extras = 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + (img_size // patch_size) ** 2, dim))
        self.head = nn.Linear(dim, patch_size**2 * in_chans)

    def forward(self, x, timesteps, y=None):
        tokens = [self.time_embed(timesteps.float()[:, None])[:, None]]
        if y is not None:
            tokens.append(self.label_emb(y)[:, None])
        h = torch.cat([*tokens, self.patch_embed(x)], dim=1) + self.pos_embed  # fails on a wrong grid
        return self.head(h[:, self.extras :])


@pytest.mark.parametrize("num_classes", [10, -1])
def test_token_grid_gives_the_image_size(num_classes):
    model = TokenNet(img_size=24, patch_size=4, in_chans=3, num_classes=num_classes)
    kwargs = guess(model, "timesteps", (0, 999))
    assert kwargs["x"].shape == (B, 3, 24, 24)
    assert kwargs["timesteps"].dtype == torch.int64
    if num_classes > 0:
        assert kwargs["y"].dtype == torch.int64 and kwargs["y"].shape == (B,)
        assert ((kwargs["y"] >= 0) & (kwargs["y"] < num_classes)).all()
    else:
        assert "y" not in kwargs
    assert model(**kwargs).shape == (B, 36, 48)


def test_token_grid_capture():
    model = TokenNet(img_size=16, patch_size=2, in_chans=4, num_classes=5)
    cap = capture(model, *example_inputs(model, "timesteps", (0, 999)))
    assert cap.kwargs["x"].shape == (B, 4, 16, 16)


class LinearPatchNet(nn.Module):
    """Patches flattened into an nn.Linear: channels = in_features / patch_size**2."""

    def __init__(self, side=12, patch=3, chans=2, dim=8):
        super().__init__()
        self.patch_size = patch
        self.embed = nn.Linear(patch * patch * chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, (side // patch) ** 2, dim))

    def forward(self, x, t):
        p = self.patch_size
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        return self.embed(patches) + self.pos_embed


def test_linear_patch_embedding_gives_the_channels():
    model = LinearPatchNet(side=12, patch=3, chans=2)
    kwargs = guess(model, "t", (0, 999))
    assert kwargs["x"].shape == (B, 2, 12, 12)
    assert model(**kwargs).shape == (B, 16, 8)


# -- the DiT / ADM / diffusers layout, as before ------------------------------


class Sized(nn.Module):
    def __init__(self, label_arg="y", **attrs):
        super().__init__()
        for k, v in attrs.items():
            setattr(self, k, v)
        self.label_arg = label_arg
        self.emb = nn.Embedding(attrs.get("num_classes") or attrs.get("num_class_embeds") or 1, 4)
        self.conv = nn.Conv2d(4, 4, 1)


class DiTLike(Sized):
    def forward(self, x, t, y):
        return self.conv(x) + self.emb(y)[:, :, None, None]


class DiffusersLike(Sized):
    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        assert class_labels is not None
        return self.conv(sample) + self.emb(class_labels)[:, :, None, None]


def test_size_attributes_and_class_ids_unchanged():
    model = DiTLike(in_channels=4, input_size=(8, 8), num_classes=1000)
    kwargs = guess(model, "t", (0, 999))
    assert kwargs["x"].shape == (B, 4, 8, 8)
    assert kwargs["y"].dtype == torch.int64 and kwargs["y"].shape == (B,)
    assert ((kwargs["y"] >= 0) & (kwargs["y"] < 1000)).all() and kwargs["y"].max() > 0  # drawn in [0, 1000)
    assert kwargs["t"].dtype == torch.int64 and ((kwargs["t"] >= 0) & (kwargs["t"] <= 999)).all()
    assert model(**kwargs).shape == (B, 4, 8, 8)


def test_class_labels_with_num_class_embeds_stay_integer_ids():
    model = DiffusersLike(in_channels=4, sample_size=8, num_class_embeds=6)
    kwargs = guess(model, "timestep", (0, 999))
    assert set(kwargs) == {"sample", "timestep", "class_labels"}
    assert kwargs["sample"].shape == (B, 4, 8, 8)
    assert kwargs["class_labels"].dtype == torch.int64 and (kwargs["class_labels"] < 6).all()
    assert model(**kwargs).shape == (B, 4, 8, 8)


def test_own_example_inputs_method_wins():
    class Own(DiTLike):
        def example_inputs(self, batch_size=2):
            return (torch.zeros(batch_size, 4, 4, 4),), {"t": torch.zeros(batch_size), "y": torch.zeros(batch_size).long()}

    args, kwargs = example_inputs(Own(in_channels=4, input_size=8, num_classes=3), "t", (0, 999), batch_size=3)
    assert args[0].shape == (3, 4, 4, 4) and set(kwargs) == {"t", "y"}


# -- what cannot be guessed ---------------------------------------------------


class NoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(4, 4)

    def forward(self, x, t):
        return self.mlp(x)


class Extra(NoConv):
    def forward(self, x, t, context):
        return self.mlp(x)


def test_no_channels_anywhere_raises_one_line():
    with pytest.raises(CaptureError) as info:
        example_inputs(NoConv(), "t", (0, 999))
    msg = str(info.value)
    assert "NoConv.forward argument 'x'" in msg and "--example-inputs FILE.pt" in msg and "\n" not in msg


def test_unknown_argument_raises_one_line():
    model = Extra()
    model.in_channels, model.input_size = 4, 8
    with pytest.raises(CaptureError) as info:
        example_inputs(model, "t", (0, 999))
    msg = str(info.value)
    assert "Extra.forward argument 'context'" in msg and "--example-inputs FILE.pt" in msg and "\n" not in msg
