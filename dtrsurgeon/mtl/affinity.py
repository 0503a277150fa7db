"""Task affinity between denoising tasks, for the ``"affinity"`` clustering cost.

ANT measures how much two timesteps help each other as the cosine similarity of
their loss gradients: ``A[i, j] = cos(grad L(t_i), grad L(t_j))``, gradients taken
over the model's parameters on the same data.  Computing it for all T = 1000
timesteps costs T gradient passes per batch, so :func:`estimate_task_affinity`
measures a sample of timesteps and fills the T x T matrix by interpolation
(:func:`expand_affinity`).

How this may differ from the paper: the authors' own estimator was lost and
rewritten from memory (ANT repository, ``task_affinity_score.py`` and issue #1).
Like that rewrite, each timestep's gradient here is the sum of the gradients of
the mean loss over the given batches, on the model in whatever mode it is in.
Two deliberate choices of ours: every timestep sees the same noise draw for a
given batch (the RNG is forked and seeded per batch, which removes noise-sampling
variance from the comparison), and unmeasured timesteps are interpolated.

    A = estimate_task_affinity(model, loss_fn, batches, timesteps=50,
                               num_timesteps=1000, save="affinity.npy")
    clusters = interval_clustering(A, k=5, cost="affinity")

with ``loss_fn(model, batch, t)`` returning the loss of ``batch`` at timestep
``t`` (a Python int), e.g. ``diffusion.training_losses(model, x, torch.full((B,), t))["loss"]``.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from dtrsurgeon.mtl.errors import MtlError


def sample_timesteps_evenly(count: int, num_timesteps: int) -> np.ndarray:
    """``count`` distinct timesteps spread evenly over ``0 .. T-1``, both ends included."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise MtlError(f"the number of sampled timesteps must be an integer >= 1, got {count!r}")
    if count > num_timesteps:
        raise MtlError(f"cannot sample {count} distinct timesteps out of T = {num_timesteps}")
    if count == 1:
        return np.array([(num_timesteps - 1) // 2], dtype=np.int64)
    return np.unique(np.round(np.linspace(0, num_timesteps - 1, count)).astype(np.int64))


def _check_timesteps(timesteps, num_timesteps: int) -> np.ndarray:
    if isinstance(timesteps, (int, np.integer)) and not isinstance(timesteps, bool):
        return sample_timesteps_evenly(int(timesteps), num_timesteps)
    ts = np.asarray(list(timesteps))
    if ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer):
        raise MtlError(f"timesteps must be a count or a non-empty list of integers, got {timesteps!r}")
    if ts.min() < 0 or ts.max() >= num_timesteps:
        raise MtlError(f"sampled timesteps must lie in 0..{num_timesteps - 1}, got {int(ts.min())}..{int(ts.max())}")
    return np.unique(ts.astype(np.int64))


def _interp_matrix(sampled: np.ndarray, num_timesteps: int) -> np.ndarray:
    """W (T x m): row t holds the linear-interpolation weights of t on the sampled
    timesteps (clamped to the nearest sample outside their range)."""
    m = sampled.shape[0]
    W = np.zeros((num_timesteps, m))
    t = np.arange(num_timesteps, dtype=np.float64)
    if m == 1:
        W[:, 0] = 1.0
        return W
    hi = np.clip(np.searchsorted(sampled, t, side="right"), 1, m - 1)
    lo = hi - 1
    frac = np.clip((t - sampled[lo]) / (sampled[hi] - sampled[lo]), 0.0, 1.0)
    W[np.arange(num_timesteps), lo] = 1.0 - frac
    W[np.arange(num_timesteps), hi] += frac
    return W


def expand_affinity(sampled_affinity, sampled_timesteps: Sequence[int], num_timesteps: int) -> np.ndarray:
    """Fill the T x T affinity matrix from an m x m matrix measured at
    ``sampled_timesteps`` (sorted, distinct).

    Bilinear interpolation in (t_i, t_j): ``A = W S W^T`` with ``W`` the linear
    interpolation weights, so measured pairs keep their values, the result stays
    symmetric, and timesteps before the first (after the last) sample copy the
    first (last) one.  The diagonal is then set to 1, the cosine of a gradient
    with itself; this does not move the clustering optimum, since every interval
    contains exactly one center-to-itself term.
    """
    S = np.asarray(sampled_affinity, dtype=np.float64)
    ts = np.asarray(sampled_timesteps, dtype=np.int64)
    if S.ndim != 2 or S.shape != (ts.shape[0], ts.shape[0]):
        raise MtlError(f"sampled affinity has shape {tuple(S.shape)}; expected ({ts.shape[0]}, {ts.shape[0]}) for {ts.shape[0]} timesteps")
    if ts.size > 1 and np.any(np.diff(ts) <= 0):
        raise MtlError("sampled timesteps must be sorted and distinct")
    W = _interp_matrix(ts.astype(np.float64), num_timesteps)
    A = W @ S @ W.T
    A = (A + A.T) / 2.0  # exact symmetry despite rounding
    np.fill_diagonal(A, 1.0)
    return A


def load_affinity(path: str | os.PathLike, num_timesteps: int | None = None) -> np.ndarray:
    """Read a ``.npy`` affinity matrix and check it: square, finite, and T x T
    when ``num_timesteps`` is given."""
    try:
        A = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MtlError(f"cannot read an affinity matrix from {os.fspath(path)}: {e}") from None
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise MtlError(f"{os.fspath(path)}: an affinity matrix must be square (T x T), got shape {tuple(A.shape)}")
    if num_timesteps is not None and A.shape[0] != num_timesteps:
        raise MtlError(
            f"{os.fspath(path)}: affinity matrix is {A.shape[0]} x {A.shape[1]} but T = {num_timesteps}; "
            "estimate it for the same number of timesteps"
        )
    if not np.issubdtype(A.dtype, np.number) or not np.all(np.isfinite(A)):
        raise MtlError(f"{os.fspath(path)}: the affinity matrix has NaN or infinite entries; re-estimate it")
    return A.astype(np.float64)


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads)])


def estimate_task_affinity(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, object, int], torch.Tensor],
    batches: Iterable,
    timesteps: int | Sequence[int],
    *,
    num_timesteps: int,
    params: Iterable[torch.Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    save: str | os.PathLike | None = None,
) -> np.ndarray:
    """Estimate the T x T task-affinity matrix of ``model``.

    ``timesteps``: how many timesteps to measure (spread evenly, both ends
    included) or the list of them.  ``batches`` is iterated once and reused for
    every timestep.  ``loss_fn(model, batch, t)`` returns the loss (any shape; its
    mean is taken).  Gradients are taken with :func:`torch.autograd.grad`, so the
    model's ``.grad`` is left alone.  Memory: one float32 gradient vector per
    sampled timestep, kept on the parameters' device.

    Returns the filled matrix (see :func:`expand_affinity`) and, with ``save``,
    also writes it as ``.npy``.  A rich progress bar shows the passes unless
    ``progress=False``.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise MtlError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    ts = _check_timesteps(timesteps, int(num_timesteps))
    batch_list = list(batches)
    if not batch_list:
        raise MtlError("estimate_task_affinity needs at least one batch")
    plist = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not plist:
        raise MtlError("the model has no parameter with requires_grad=True; nothing to take gradients of")
    devices = [plist[0].device] if plist[0].device.type != "cpu" else []

    def run(advance) -> list[torch.Tensor]:
        rows = []
        for t in ts.tolist():
            total = None
            for b, batch in enumerate(batch_list):
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed + b)
                    loss = loss_fn(model, batch, int(t))
                    g = _flat_grad(loss.float().mean(), plist)
                total = g if total is None else total.add_(g)
                advance()
            rows.append(total)
        return rows

    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("task affinity"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            task = bar.add_task("passes", total=len(ts) * len(batch_list))
            rows = run(lambda: bar.advance(task))
    else:
        rows = run(lambda: None)

    G = torch.stack(rows).double()
    norms = G.norm(dim=1)
    if bool((norms == 0).any()):
        bad = int(ts[int(torch.nonzero(norms == 0)[0])])
        raise MtlError(f"the loss gradient at t={bad} is zero; check that loss_fn's output depends on the model's parameters")
    Gn = G / norms[:, None]
    sampled = (Gn @ Gn.T).clamp_(-1.0, 1.0).cpu().numpy()
    A = expand_affinity(sampled, ts, int(num_timesteps))
    if save is not None:
        np.save(save, A)
    return A
