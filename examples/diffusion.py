"""DDPM noise schedules, epsilon-prediction loss, and a DDIM sampler that writes an image grid.

Timesteps are integers ``0 .. T-1`` (0 = least noise), the convention of the DiT and ADM code
and of ``dit-paper`` (``timestep.range = [0, 999]``).

    >>> s = Schedule.make("linear", 1000)
    >>> round(float(s.alphas_cumprod[-1]), 6) < 1e-4
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SCHEDULES = ("linear", "cosine")


@dataclass
class Schedule:
    """``betas`` and ``alphas_cumprod`` as float64 CPU tensors of length ``T``."""

    name: str
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @classmethod
    def make(cls, name: str, num_timesteps: int = 1000) -> "Schedule":
        T = num_timesteps
        if name == "linear":  # Ho et al. 2020, scaled so any T spans the same noise range
            scale = 1000 / T
            betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
        elif name == "cosine":  # Nichol & Dhariwal 2021, betas capped at 0.999
            s = 0.008
            f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
        else:
            raise ValueError(f"unknown noise schedule {name!r}; expected one of: {', '.join(SCHEDULES)}")
        return cls(name, betas, torch.cumprod(1 - betas, 0))

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def snr(self) -> np.ndarray:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) per timestep, as numpy float64."""
        a = self.alphas_cumprod.numpy()
        return a / (1 - a)

    def on(self, device: torch.device) -> torch.Tensor:
        """``alphas_cumprod`` as float32 on ``device`` (copied once per device: no per-step transfer)."""
        cache = self.__dict__.setdefault("_on", {})
        key = str(device)
        if key not in cache:
            cache[key] = self.alphas_cumprod.to(device, torch.float32)
        return cache[key]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
        a = self.on(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


def model_eps(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The model's noise prediction: its first ``C`` output channels (models that learn sigma
    return ``2C``); ``y`` is left out for unconditional models."""
    out = model(x, t) if y is None else model(x, t, y)
    return out[:, : x.shape[1]]


def per_sample_mse(eps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """[B] mean squared error in float32."""
    return (eps.float() - noise.float()).pow(2).flatten(1).mean(1)


@torch.no_grad()
def ddim_sample(model, schedule: Schedule, shape: tuple[int, ...], labels: torch.Tensor | None,
                steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None,
                device: str | torch.device = "cpu", autocast_dtype: torch.dtype | None = None,
                batch_size: int | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) from pure noise; returns images in [-1, 1] on the CPU.

    ``steps`` evenly spaced timesteps from T-1 down to 0; ``eta=0`` is deterministic.
    Noise is drawn on the CPU from ``generator`` so results do not depend on the device.
    """
    T = schedule.num_timesteps
    ts = np.unique(np.linspace(0, T - 1, steps).round().astype(np.int64))[::-1]
    abar = schedule.alphas_cumprod.to(torch.float64)
    n = shape[0]
    batch_size = batch_size or n
    out = []
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        x = torch.randn((hi - lo, *shape[1:]), generator=generator).to(device)
        y = None if labels is None else labels[lo:hi].to(device)
        for i, t in enumerate(ts):
            a_t = float(abar[t])
            a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            tt = torch.full((hi - lo,), int(t), device=device, dtype=torch.long)
            with torch.autocast(torch.device(device).type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                eps = model_eps(model, x, tt, y).float()
            x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator).to(device)
        out.append(x.float().cpu())
    return torch.cat(out)


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> one [rows*(H+2), nrow*(W+2), C] uint8 array with 2-pixel gaps."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + 2), nrow * (w + 2), c), dtype=np.uint8)
    imgs = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(imgs):
        r, k = divmod(i, nrow)
        grid[r * (h + 2) + 1: r * (h + 2) + 1 + h, k * (w + 2) + 1: k * (w + 2) + 1 + w] = img
    return grid


def save_grid(images: torch.Tensor, path, nrow: int = 8, scale: int = 4) -> None:
    """Write ``images`` as a PNG grid, each pixel ``scale`` x ``scale`` (small images stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow).repeat(scale, 0).repeat(scale, 1)
    plt.imsave(str(path), grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
