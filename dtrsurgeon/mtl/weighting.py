"""Loss weightings: Min-SNR-gamma (baseline) and uncertainty weighting (ANT-UW).

Both turn a batch's unreduced losses into one scalar to ``backward()``.  They
take each sample's own timestep or cluster id, never its position in the batch
(the authors' scripts slice the batch by position, which silently assumes the
sampler's order).

Min-SNR-gamma (Hang et al., 2023) caps the effective weight of low-noise
timesteps.  Its weight depends on what the network predicts, because the loss
is written in that target's units:

=============  =====================================
prediction     weight on the per-sample MSE
=============  =====================================
``epsilon``    ``min(SNR, gamma) / SNR``
``v``          ``min(SNR, gamma) / (SNR + 1)``
``x0``         ``min(SNR, gamma)``
=============  =====================================

Uncertainty weighting (Kendall et al., 2018), per cluster k with a learnable
log-variance ``s_k``: ``L = sum_k (L_k * exp(-s_k) + s_k) / 2``, where ``L_k``
is the mean loss of the samples whose timestep falls in cluster k.  Clusters
absent from a batch contribute nothing.  The authors' scripts divide each
``L_k`` by k first; that equals our formula with every ``s_k`` started at
``ln k`` instead of 0 (``init_log_var``): same gradients, same weights.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dtrsurgeon.mtl.errors import MtlError

PREDICTIONS = ("epsilon", "v", "x0")


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _check_loss(per_sample_loss: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if per_sample_loss.ndim != 1:
        raise MtlError(f"expected unreduced per-sample losses of shape [B], got shape {tuple(per_sample_loss.shape)}")
    if other.shape != per_sample_loss.shape:
        raise MtlError(f"{what} has shape {tuple(other.shape)} but the losses have shape {tuple(per_sample_loss.shape)}")


def cluster_mean_losses(per_sample_loss: torch.Tensor, cluster_ids: torch.Tensor, num_clusters: int):
    """``(means, counts)``: the mean loss of each cluster's samples (0 where a
    cluster has none) and how many samples each cluster has, both of length k."""
    _check_loss(per_sample_loss, cluster_ids, "cluster_ids")
    if per_sample_loss.numel() == 0:
        raise MtlError("got an empty batch of losses; every step needs at least one sample")
    ids = cluster_ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_clusters):
        raise MtlError(f"cluster ids must lie in 0..{num_clusters - 1}, got {int(ids.min())}..{int(ids.max())}")
    loss = per_sample_loss.float()
    # a masked sum, not index_add: CUDA's index_add adds with atomics in no fixed order, which made
    # two identical GPU runs drift apart after a few dozen steps
    members = ids[:, None] == torch.arange(num_clusters, device=ids.device)
    sums = torch.where(members, loss[:, None], 0.0).sum(0)
    counts = torch.bincount(ids, minlength=num_clusters).to(loss.device)
    return sums / counts.clamp(min=1).to(loss.dtype), counts


def min_snr_weights(snr: torch.Tensor, gamma: float = 5.0, prediction: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma weights for SNR values (see the module docstring).

    The epsilon weight is written ``1 where SNR <= gamma else gamma / SNR`` so a
    zero-terminal-SNR timestep gets 1, not 0/0.
    """
    if prediction not in PREDICTIONS:
        raise MtlError(f"unknown prediction type {prediction!r}; expected one of: {', '.join(PREDICTIONS)}")
    if not gamma > 0:
        raise MtlError(f"min_snr gamma must be > 0, got {gamma}")
    capped = torch.clamp(snr, max=gamma)
    if prediction == "epsilon":
        return torch.where(snr <= gamma, torch.ones_like(snr), gamma / snr.clamp(min=gamma))
    if prediction == "v":
        return capped / (snr + 1.0)
    return capped


class MinSNRWeighting:
    """Min-SNR-gamma: ``mean(w(t) * loss)``; ``snr`` is the schedule's SNR curve (length T)."""

    name = "min_snr"

    def __init__(self, snr: Sequence[float] | np.ndarray, gamma: float = 5.0, prediction: str = "epsilon"):
        self.snr = torch.as_tensor(np.asarray(snr, dtype=np.float64))
        self.gamma = float(gamma)
        self.prediction = prediction
        self.table = min_snr_weights(self.snr, self.gamma, prediction).float()

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """The weight of each sample's timestep (float32, on t's device)."""
        return self.table.to(t.device)[t.long()]

    def loss(self, per_sample_loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_loss(per_sample_loss, t, "t")
        return (per_sample_loss.float() * self.weights(t)).mean()


class UncertaintyWeighting:
    """ANT-UW: one learnable log-variance per cluster, with its own optimiser.

    The optimiser is AdamW over ``log_vars`` only (the authors: lr 0.025, no
    weight decay, default betas); every setting is a constructor argument.  Call
    :meth:`step` after your model's optimiser step.  :meth:`state_dict` holds the
    log-variances and the optimiser state, so a resumed run continues exactly.
    Under ``torch.distributed`` the log-variance gradients are averaged across
    ranks before the step, so every rank keeps the same weights.
    """

    name = "uw"

    def __init__(
        self,
        num_clusters: int,
        *,
        lr: float = 0.025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        init_log_var: float = 0.0,
        device: torch.device | str | None = None,
    ):
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
            raise MtlError(f"num_clusters must be an integer >= 1, got {num_clusters!r}")
        self.num_clusters = num_clusters
        self.log_vars = torch.nn.Parameter(torch.full((num_clusters,), float(init_log_var), device=device))
        self.optimizer = torch.optim.AdamW([self.log_vars], lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def loss(
        self,
        per_sample_loss: torch.Tensor,
        cluster_ids: torch.Tensor,
        *,
        global_batch: bool = False,
        whole_batch_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The UW loss of this batch.

        ``global_batch=True`` under ``torch.distributed`` (more than one rank)
        makes each ``L_k`` the mean over the whole global batch: each rank's
        cluster means are rescaled to ``world * S_k^rank / N_k`` (``N_k`` the
        all-reduced count) and every cluster present on any rank contributes its
        ``s_k / 2``, so DDP's gradient average plus :meth:`step`'s average give
        exactly the gradients of one process on the global batch.  Without it,
        each rank weights its own cluster means (exact when the ranks' cluster
        counts agree).

        ``whole_batch_ids`` does the same without communication when the caller
        knows the cluster ids of the whole batch this call's samples are one of
        ``P`` equal parts of (gradient accumulation, possibly across ranks): the
        means become ``P * S_k^part / N_k``, so the average of the ``P`` parts'
        losses (DDP's mean over ranks times ``1 / accumulation steps``) is the
        whole batch's loss::

            for part in parts:  # 2 micro-batches of 64 out of 128
                (uw.loss(mse(part), ids[part], whole_batch_ids=ids) / 2).backward()
        """
        means, counts = cluster_mean_losses(per_sample_loss, cluster_ids, self.num_clusters)
        present = counts > 0
        world = world_size()
        if whole_batch_ids is not None:
            parts = whole_batch_ids.numel() / max(1, cluster_ids.numel())
            if parts != int(parts) or parts < 1:
                raise MtlError(f"whole_batch_ids has {whole_batch_ids.numel()} ids, not a whole multiple of this "
                               f"part's {cluster_ids.numel()}")
            whole = whole_batch_ids.reshape(-1).long().cpu()
            if int(whole.min()) < 0 or int(whole.max()) >= self.num_clusters:
                raise MtlError(f"whole_batch_ids must lie in 0..{self.num_clusters - 1}, "
                               f"got {int(whole.min())}..{int(whole.max())}")
            total = torch.bincount(whole, minlength=self.num_clusters).to(means.device)
            if bool((counts > total).any()):
                raise MtlError("whole_batch_ids does not contain this part's cluster ids")
            means = means * (parts * counts / total.clamp(min=1)).to(means.dtype)
            present = total > 0
        elif global_batch and world > 1:
            total = counts.clone()
            torch.distributed.all_reduce(total)
            means = means * (world * counts / total.clamp(min=1)).to(means.dtype)
            present = total > 0
        s = self.log_vars.to(means.device)
        terms = 0.5 * (means * torch.exp(-s) + s)
        return terms[present].sum()

    def weights(self) -> torch.Tensor:
        """The current weight ``exp(-s_k) / 2`` of each cluster's loss (detached)."""
        return (0.5 * torch.exp(-self.log_vars)).detach()

    def step(self, scaler: Any | None = None) -> None:
        """Average gradients across ranks (if distributed), step, and zero them.
        Pass your ``torch.amp.GradScaler`` if the loss was scaled."""
        if self.log_vars.grad is None:
            self.log_vars.grad = torch.zeros_like(self.log_vars)
        world = world_size()
        if world > 1:
            torch.distributed.all_reduce(self.log_vars.grad)
            self.log_vars.grad.div_(world)
        if scaler is not None:
            scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_clusters": self.num_clusters,
            "log_vars": self.log_vars.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not live tensors
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["num_clusters"]) != self.num_clusters:
            raise MtlError(
                f"UW state is for {state['num_clusters']} clusters but this run has {self.num_clusters}; "
                "the checkpoint was made with a different clustering k"
            )
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"].to(self.log_vars.device))
        self.optimizer.load_state_dict(state["optimizer"])
