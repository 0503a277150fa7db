"""Noise schedules, reduced to what ANT needs: SNR(t) for t = 0 .. T-1.

Every clustering cost and Min-SNR weight is a function of the signal-to-noise
ratio ``SNR(t) = abar(t) / (1 - abar(t))`` where ``abar = alphas_cumprod``.
Index 0 is the least noisy timestep (the DDPM convention DiT and ADM use).

Built-in schedules (T is always a parameter):

- ``linear`` (DDPM / DiT): ``beta`` evenly spaced from ``1e-4 * 1000/T`` to
  ``0.02 * 1000/T``; the ``1000/T`` factor is improved-DDPM's, so any T covers
  the same noise range as T = 1000 (and T must exceed 20).
- ``cosine`` (improved DDPM): ``abar(t) = f(t)/f(0)``, ``f(t) = cos((t/T + s)/(1 + s) * pi/2)^2``,
  ``s = 0.008``, realised through ``beta_t = min(1 - f(t+1)/f(t), 0.999)``.
- ``scaled_linear`` (latent diffusion / Stable Diffusion): ``sqrt(beta)`` evenly
  spaced from ``sqrt(0.00085)`` to ``sqrt(0.012)``.

Or bring your own ``alphas_cumprod`` (a 1-D array, e.g. a ``.npy`` file) with
:func:`schedule_from_alphas_cumprod`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dtrsurgeon.mtl.errors import MtlError

SCHEDULES = ("linear", "cosine", "scaled_linear")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A named ``alphas_cumprod`` curve of length T (read-only float64 array)."""

    name: str
    alphas_cumprod: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def snr(self) -> np.ndarray:
        """SNR(t) = abar / (1 - abar), float64, length T."""
        a = self.alphas_cumprod
        return a / (1.0 - a)

    @property
    def log_snr(self) -> np.ndarray:
        """log SNR(t); -inf where abar(t) = 0 (a zero-terminal-SNR schedule)."""
        a = self.alphas_cumprod
        with np.errstate(divide="ignore"):
            return np.log(a) - np.log1p(-a)


def _betas(name: str, num_timesteps: int) -> np.ndarray:
    t = num_timesteps
    if name == "linear":
        scale = 1000.0 / t
        return np.linspace(scale * 1e-4, scale * 0.02, t, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(math.sqrt(0.00085), math.sqrt(0.012), t, dtype=np.float64) ** 2
    s = 0.008
    f = np.cos((np.arange(t + 1, dtype=np.float64) / t + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], 0.999)


def make_schedule(name: str, num_timesteps: int = 1000) -> NoiseSchedule:
    """One of :data:`SCHEDULES` with ``num_timesteps`` steps.

    ``"scaled-linear"`` is accepted for ``"scaled_linear"``.
    """
    key = str(name).replace("-", "_")
    if key not in SCHEDULES:
        raise MtlError(
            f"unknown noise schedule {name!r}; expected one of: {', '.join(SCHEDULES)} "
            "(or pass your own alphas_cumprod array / .npy file)"
        )
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise MtlError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    betas = _betas(key, int(num_timesteps))
    if np.any(betas >= 1.0):
        raise MtlError(
            f"the {key} schedule scales beta by 1000/T (improved DDPM), which needs T > 20; got T = {num_timesteps}. "
            "Use more timesteps, another schedule, or your own alphas_cumprod"
        )
    return schedule_from_alphas_cumprod(np.cumprod(1.0 - betas), name=key)


def schedule_from_alphas_cumprod(alphas_cumprod, name: str = "custom") -> NoiseSchedule:
    """Wrap a user's ``alphas_cumprod`` after checking it can be one.

    Requirements: 1-D, non-empty, finite, every value in [0, 1).  (1 would make
    SNR infinite; 0, a zero-terminal-SNR schedule, is allowed.)  It need not be
    monotone: clustering handles any curve.
    """
    try:
        a = np.array(alphas_cumprod, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MtlError(f"alphas_cumprod must be an array of numbers: {e}") from None
    if a.ndim != 1 or a.shape[0] < 1:
        raise MtlError(f"alphas_cumprod must be a non-empty 1-D array, got shape {tuple(a.shape)}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise MtlError(f"alphas_cumprod has a non-finite value at t={bad} ({a[bad]})")
    if np.any(a < 0) or np.any(a >= 1):
        bad = int(np.flatnonzero((a < 0) | (a >= 1))[0])
        raise MtlError(f"alphas_cumprod must lie in [0, 1); t={bad} has {a[bad]!r}")
    a.setflags(write=False)
    return NoiseSchedule(name=name, alphas_cumprod=a)


def load_alphas_cumprod(path: str | os.PathLike) -> NoiseSchedule:
    """A schedule from a ``.npy`` file holding ``alphas_cumprod``."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MtlError(f"cannot read alphas_cumprod from {os.fspath(path)}: {e}") from None
    return schedule_from_alphas_cumprod(arr, name=f"file:{os.path.basename(os.fspath(path))}")
