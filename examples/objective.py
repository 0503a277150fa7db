"""Training objectives: how timesteps are drawn and how per-sample losses become one loss.

* :class:`Uniform`: t uniform over ``0 .. T-1``, the plain mean of the per-sample MSE (DDPM's
  "simple" loss).
* :class:`examples.ant.Ant` (Go et al. 2023), built from a spec's ``mtl`` section: timesteps
  grouped into k intervals, cluster-balanced batches, and a per-cluster weighting such as
  uncertainty weighting (UW) from :mod:`dtrsurgeon.mtl`.

An objective has ``sample_t(batch, generator)`` (the global batch's timesteps, drawn on the CPU),
``backward(per_sample_mse, t, batch_t, accum)`` (one forward pass's slice of the global batch, the
global batch's timesteps, and how many passes this process makes per optimiser step), ``step()``
(after the model's optimiser step), ``state_dict``/``load_state_dict`` (saved in the checkpoint),
``describe()`` and ``log()``.

Every objective is exact under DistributedDataParallel and gradient accumulation: the global batch
is drawn identically on every rank and cut into equal parts (ranks, then micro-batches), each
pass's loss is scaled by ``1 / accum`` (DDP averages over ranks), and a loss that needs statistics
of the whole batch (per-cluster means) takes them from ``batch_t``, so N processes with M
micro-batches each follow the same objective as one process on the whole global batch (what the
model itself draws per forward pass, such as label dropout, differs).
"""

from __future__ import annotations

from typing import Any

import torch


class Uniform:
    """t ~ U{0, T-1}; loss = mean over the global batch of the per-sample MSE."""

    name = "uniform"

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def sample_t(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator)

    def backward(self, mse: torch.Tensor, t: torch.Tensor, batch_t: torch.Tensor, accum: int = 1) -> None:
        # DDP averages over ranks and the passes add up: the mean of equal-sized part means is the global mean.
        (mse.mean() / accum).backward()

    def step(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def log(self) -> dict[str, float]:
        return {}
