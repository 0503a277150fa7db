"""Training objectives: how timesteps are drawn and how per-sample losses become one loss.

* :class:`Uniform`: t uniform over ``0 .. T-1``, the plain mean of the per-sample MSE (DDPM's
  "simple" loss).
* :class:`examples.ant.Ant` (Go et al. 2023), built from a spec's ``mtl`` section: timesteps
  grouped into k intervals, cluster-balanced batches, and a per-cluster weighting such as
  uncertainty weighting (UW) from :mod:`dtrsurgeon.mtl`.

An objective has ``sample_t(batch, generator)`` (the global batch's timesteps, drawn on the CPU),
``backward(per_sample_mse, t)`` (local slice), ``step()`` (after the model's optimiser step),
``state_dict``/``load_state_dict`` (saved in the checkpoint), ``describe()`` and ``log()``.

Every objective is exact under DistributedDataParallel: the global batch is drawn identically on
every rank and sliced, and a loss that needs global statistics (per-cluster means) all-reduces
them, so N processes follow the same objective as one process with the same global batch.
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

    def backward(self, mse: torch.Tensor, t: torch.Tensor) -> None:
        # DDP averages gradients over ranks: the mean of equal-sized local means is the global mean.
        mse.mean().backward()

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
