"""Gradient-level weightings per cluster: PCGrad and Nash-MTL.

Both need one gradient per cluster, ``g_k = grad of the mean loss of the
samples in cluster k`` (grouped by each sample's cluster id), then combine them
into the update written to the parameters' ``.grad`` (added, as ``backward``
would).  They are called as ``weighting.backward(per_sample_loss, cluster_ids)``
in place of ``loss.backward()``.

PCGrad (Yu et al., 2020): each ``g_i``, against the other clusters in a random
order, loses its component along any ``g_j`` it conflicts with
(``g_i . g_j < 0``): ``g_i -= (g_i . g_j) / |g_j|^2 g_j``.  The update is the
mean (or sum) of the projected gradients.

Nash-MTL (Navon et al., 2022): weights ``alpha > 0`` with
``(G G^T) alpha = 1 / alpha`` elementwise; the update is ``sum_k alpha_k g_k``.
That system is the stationarity condition of the strictly convex
``f(alpha) = alpha^T M alpha / 2 - sum_k log alpha_k`` (``M = G G^T``), so
:func:`nash_weights` minimises f by damped Newton steps -- a k x k solve, no
convex-optimisation package.  ``M`` is scaled to unit Frobenius norm for the
solve and alpha scaled back (if ``M alpha = 1/alpha`` then ``(cM)(alpha/sqrt c)
= 1/(alpha/sqrt c)``).  Clusters whose gradient is zero get weight 0.

Distributed training: when ``torch.distributed`` is initialised with more than
one rank, the per-cluster gradients are all-reduced, weighted by each rank's
sample count per cluster, so every rank combines the same global per-cluster
means and takes the same step.  Run the forward under ``ddp_model.no_sync()``
(this all-reduce replaces DDP's) and give these classes the parameters of the
wrapped module.  Cost: one backward per cluster present in the batch and a
k x P gradient buffer (float32).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from dtrsurgeon.mtl.errors import MtlError
from dtrsurgeon.mtl.weighting import cluster_mean_losses, world_size


def _params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    plist = [p for p in params if p.requires_grad]
    if not plist:
        raise MtlError("no parameter with requires_grad=True was given; pass model.parameters()")
    return plist


def cluster_gradients(per_sample_loss: torch.Tensor, cluster_ids: torch.Tensor, num_clusters: int, params: list[torch.Tensor]):
    """``(G, counts)``: row k of G (k x P, float32) is the gradient of cluster k's
    mean loss, all-reduced across ranks when distributed; ``counts`` is the
    (global) number of samples per cluster.  Absent clusters have zero rows."""
    means, counts = cluster_mean_losses(per_sample_loss, cluster_ids, num_clusters)
    total = sum(p.numel() for p in params)
    G = torch.zeros(num_clusters, total, device=params[0].device)
    present = [int(k) for k in torch.nonzero(counts > 0).flatten()]
    for n, k in enumerate(present):
        grads = torch.autograd.grad(means[k], params, retain_graph=n < len(present) - 1, allow_unused=True)
        offset = 0
        for p, g in zip(params, grads):
            if g is not None:
                G[k, offset : offset + p.numel()] = g.reshape(-1)
            offset += p.numel()
    counts = counts.to(G.device)
    if world_size() > 1:
        G.mul_(counts[:, None].float())
        local = counts.clone()
        torch.distributed.all_reduce(G)
        torch.distributed.all_reduce(local)
        counts = local
        G.div_(counts.clamp(min=1)[:, None].float())
    return G, counts


def weighted_gradient(per_sample_loss: torch.Tensor, cluster_ids: torch.Tensor, weights, params: list[torch.Tensor]):
    """``(g, counts)``: the gradient of ``sum_k w_k L_k`` (L_k the global mean
    loss of cluster k) as one flat float32 vector, from a single backward pass;
    ``counts`` as in :func:`cluster_gradients`."""
    k = len(weights)
    means, counts = cluster_mean_losses(per_sample_loss, cluster_ids, k)
    w = torch.as_tensor(np.asarray(weights), dtype=means.dtype, device=means.device)
    if world_size() > 1:
        total = counts.clone()
        torch.distributed.all_reduce(total)
        loss = (w * means * counts / total.clamp(min=1)).sum()
        counts = total
    else:
        loss = (w * means)[counts > 0].sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads)])
    if world_size() > 1:
        torch.distributed.all_reduce(flat)
    return flat, counts


def _write_grad(update: torch.Tensor, params: list[torch.Tensor]) -> None:
    offset = 0
    for p in params:
        piece = update[offset : offset + p.numel()].view_as(p).to(p.dtype)
        p.grad = piece.clone() if p.grad is None else p.grad.add_(piece)
        offset += p.numel()


def pcgrad_project(G: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The PCGrad-projected copy of each row of G (k x P); each row visits the
    others in a random order drawn from ``generator``."""
    k = G.shape[0]
    sq = (G * G).sum(dim=1)
    out = G.clone()
    for i in range(k):
        gi = out[i]
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i or sq[j] == 0:
                continue
            dot = torch.dot(gi, G[j])
            if dot < 0:
                gi.sub_(G[j], alpha=float(dot / sq[j]))
    return out


class PCGrad:
    """PCGrad over clusters.  ``reduction="mean"`` divides the summed projected
    gradients by the number of clusters present, so balanced clusters give the
    scale of a plain mean loss (the authors' scripts divide each cluster loss by
    k, the same thing).  The projection order comes from a generator seeded with
    ``seed``, identical on every rank."""

    name = "pcgrad"

    def __init__(self, params: Iterable[torch.Tensor], num_clusters: int, *, reduction: str = "mean", seed: int = 0):
        if reduction not in ("mean", "sum"):
            raise MtlError(f"pcgrad reduction must be 'mean' or 'sum', got {reduction!r}")
        self.params = _params(params)
        self.num_clusters = int(num_clusters)
        self.reduction = reduction
        self.generator = torch.Generator().manual_seed(int(seed))

    def backward(self, per_sample_loss: torch.Tensor, cluster_ids: torch.Tensor) -> dict[str, float]:
        G, counts = cluster_gradients(per_sample_loss, cluster_ids, self.num_clusters, self.params)
        present = counts > 0
        projected = pcgrad_project(G[present], self.generator)
        update = projected.sum(dim=0)
        if self.reduction == "mean":
            update = update / int(present.sum())
        _write_grad(update, self.params)
        n = G[present].norm(dim=1)
        cos = (G[present] @ G[present].T) / (n[:, None] * n[None, :]).clamp(min=1e-30)
        return {"pcgrad/conflicts": float((cos < 0).sum() / 2), "pcgrad/grad_norm": float(update.norm())}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state) -> None:
        self.generator.set_state(state["generator"])


def nash_weights(M, *, max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Nash bargaining weights for a Gram matrix ``M = G G^T`` (k x k).

    Returns ``alpha >= 0`` with ``alpha_k (M alpha)_k = 1`` for every cluster whose
    gradient is non-zero, ``alpha_k = 0`` for the others.  A tiny ridge (1e-10 of
    the scaled M) keeps the solve defined when gradients are linearly dependent.
    """
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or not np.all(np.isfinite(M)):
        raise MtlError(f"nash_weights needs a finite square Gram matrix, got shape {M.shape}")
    alpha = np.zeros(M.shape[0])
    live = np.flatnonzero(np.diag(M) > 0)
    if live.size == 0:
        return alpha
    A = M[np.ix_(live, live)]
    c = float(np.linalg.norm(A))
    A = A / c + 1e-10 * np.eye(live.size)

    def f(x):
        return 0.5 * x @ A @ x - np.log(x).sum()

    x = 1.0 / np.sqrt(np.diag(A))
    for _ in range(max_iter):
        grad = A @ x - 1.0 / x
        if np.max(np.abs(grad * x)) < tol:
            break
        step = np.linalg.solve(A + np.diag(1.0 / x**2), grad)
        t = 1.0
        while np.any(x - t * step <= 0):
            t *= 0.5
        fx, slope = f(x), float(grad @ step)
        while f(x - t * step) > fx - 1e-4 * t * slope and t > 1e-12:
            t *= 0.5
        x = x - t * step
    alpha[live] = x / np.sqrt(c)
    return alpha


class NashMTL:
    """Nash-MTL over clusters.

    ``update_every``: recompute the weights every N calls (Nash-MTL's own
    speed-up); in between, one backward pass of ``sum_k alpha_k L_k`` with the
    previous weights replaces the k per-cluster passes.
    ``max_norm``: clip the combined update to this norm (Nash-MTL uses 1.0;
    ``None`` disables).  The weights are returned for logging, since their scale
    follows the inverse gradient norms.
    """

    name = "nash"

    def __init__(self, params: Iterable[torch.Tensor], num_clusters: int, *, max_norm: float | None = 1.0, update_every: int = 1):
        if max_norm is not None and not max_norm > 0:
            raise MtlError(f"nash max_norm must be > 0 or None, got {max_norm}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise MtlError(f"nash update_every must be an integer >= 1, got {update_every!r}")
        self.params = _params(params)
        self.num_clusters = int(num_clusters)
        self.max_norm = max_norm
        self.update_every = update_every
        self.alpha = np.ones(self.num_clusters)
        self.calls = 0

    def backward(self, per_sample_loss: torch.Tensor, cluster_ids: torch.Tensor) -> dict[str, float]:
        if self.calls % self.update_every == 0:
            G, counts = cluster_gradients(per_sample_loss, cluster_ids, self.num_clusters, self.params)
            present = torch.nonzero(counts > 0).flatten().cpu().numpy()
            Gp = G[torch.as_tensor(present, device=G.device)].double()
            self.alpha[present] = nash_weights((Gp @ Gp.T).cpu().numpy())
            weights = np.zeros(self.num_clusters)
            weights[present] = self.alpha[present]
            update = torch.as_tensor(weights, dtype=G.dtype, device=G.device) @ G
        else:  # reuse the weights: one backward pass of sum_k alpha_k L_k
            update, counts = weighted_gradient(per_sample_loss, cluster_ids, self.alpha, self.params)
            present = torch.nonzero(counts > 0).flatten().cpu().numpy()
        self.calls += 1
        norm = float(update.norm())
        if self.max_norm is not None and norm > self.max_norm:
            update = update * (self.max_norm / norm)
        _write_grad(update, self.params)
        logs = {f"nash/alpha/{k}": float(self.alpha[k]) for k in present.tolist()}
        logs["nash/grad_norm"] = norm
        return logs

    def state_dict(self) -> dict:
        return {"alpha": self.alpha.tolist(), "calls": self.calls}

    def load_state_dict(self, state) -> None:
        alpha = np.asarray(state["alpha"], dtype=np.float64)
        if alpha.shape != (self.num_clusters,):
            raise MtlError(f"Nash state is for {alpha.shape[0]} clusters but this run has {self.num_clusters}")
        self.alpha = alpha
        self.calls = int(state["calls"])
