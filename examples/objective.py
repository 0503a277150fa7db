"""Training objectives: how timesteps are drawn and how per-sample losses become one loss.

* :class:`Uniform`: t uniform over ``0 .. T-1``, the plain mean of the per-sample MSE (DDPM's
  "simple" loss).
* ANT (Go et al. 2023), built from a spec's ``mtl`` section by :func:`from_mtl_section`: timesteps
  grouped into k intervals, cluster-balanced batches, and a per-cluster weighting such as
  uncertainty weighting (UW) from :mod:`dtrsurgeon.mtl`.

Every objective is exact under DistributedDataParallel: the global batch is drawn identically on
every rank and sliced, and a loss that needs global statistics (per-cluster means) all-reduces
them, so N processes follow the same objective as one process with the same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class Uniform:
    """t ~ U{0, T-1}; loss = mean over the global batch of the per-sample MSE."""

    name = "uniform"

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def sample_t(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator)

    def loss(self, mse: torch.Tensor, t: torch.Tensor, world: int = 1) -> torch.Tensor:
        # DDP averages gradients over ranks: the mean of local means is the global mean.
        return mse.mean()

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def after_backward(self, world: int = 1) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def log(self) -> dict[str, float]:
        return {}


def all_reduce_mean_grads(params, world: int) -> None:
    """Average the gradients of parameters that DDP does not own (an objective's own)."""
    if world <= 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
