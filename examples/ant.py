"""ANT in the training loop: :mod:`dtrsurgeon.mtl` behind the objective interface of ``objective.py``.

``dtrsurgeon.mtl.from_spec`` builds the clusters, the cluster-balanced sampler and the weighting
(UW, Min-SNR, PCGrad, Nash, none) from a spec's ``mtl`` section. This wrapper adds what the
training script needs around it:

* the mtl section's noise schedule must be the one the script trains with (SNR clustering is
  computed from it), checked on construction;
* under DistributedDataParallel each rank holds a slice of the global batch. Per-cluster means are
  made global: every sample's loss is scaled by ``world * local_count_k / global_count_k`` before
  UW sees it, so UW's local cluster mean is ``world * S_k^rank / N_k`` and the gradient DDP averages
  over ranks is that of the global cluster means ``S_k / N_k`` (UW averages its own log-variance
  gradients across ranks in ``step``). PCGrad and Nash compute per-cluster gradients outside DDP's
  reducer, so they are refused with more than one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from examples.diffusion import Schedule


class AntError(Exception):
    """The mtl section does not fit this training run."""


class Ant:
    name = "ant"

    def __init__(self, setup, world: int = 1):
        self.setup = setup
        self.world = world
        self._last: dict[str, float] = {}

    @classmethod
    def from_section(cls, section: dict[str, Any], schedule: Schedule, model: torch.nn.Module | None = None,
                     base_dir: str | Path | None = None, world: int = 1, device=None) -> "Ant":
        from dtrsurgeon.mtl import from_spec

        setup = from_spec({"version": 1, "mtl": section}, model, base_dir=base_dir or Path.cwd(), device=device)
        ours = schedule.alphas_cumprod.numpy()
        theirs = np.asarray(setup.schedule.alphas_cumprod, dtype=np.float64)
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=1e-6, atol=1e-9):
            raise AntError(f"the mtl section's schedule ({setup.schedule.name}, T={setup.schedule.num_timesteps}) "
                           f"is not the training schedule ({schedule.name}, T={schedule.num_timesteps}); "
                           "set mtl.schedule / mtl.num_timesteps or --schedule / --timesteps to agree")
        if world > 1 and setup.config.weighting in ("pcgrad", "nash"):
            raise AntError(f"mtl weighting {setup.config.weighting!r} is single-process only in train.py; "
                           "use uw, min_snr or none under torchrun")
        return cls(setup, world)

    # -- the objective interface --------------------------------------------------------------

    def sample_t(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return self.setup.sample_timesteps(batch, generator=generator)

    def _global_uw_loss(self, mse: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """This rank's share of UW's loss over the global batch: per-sample losses scaled so local
        cluster means become shares of the global ones, plus the ``s_k / 2`` term of every cluster
        present elsewhere in the global batch but absent from this rank's slice."""
        ids = self.setup.cluster_ids(t).to(mse.device)
        k = self.setup.num_clusters
        local = torch.bincount(ids, minlength=k)
        total = local.clone()
        dist.all_reduce(total)
        scale = (self.world * local.float() / total.clamp(min=1).float())[ids]
        log_vars = self.setup.weighting.log_vars
        missing = ((local == 0) & (total > 0)).to(log_vars.dtype)
        return self.setup.loss(mse * scale, t) + 0.5 * (log_vars * missing).sum()

    def backward(self, mse: torch.Tensor, t: torch.Tensor) -> None:
        if self.world > 1 and self.setup.config.weighting == "uw":
            self._global_uw_loss(mse, t).backward()
            self._last = {f"w{i}": v for i, v in enumerate(self.setup.weighting.weights().tolist())}
            return
        logs = self.setup.backward(mse, t)
        self._last = {k.replace("uw/weight/", "w"): v for k, v in logs.items() if k != "loss"}

    def step(self) -> None:
        self.setup.step()

    def state_dict(self) -> dict[str, Any]:
        return self.setup.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.setup.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {"name": "ant", **self.setup.describe()}

    def log(self) -> dict[str, float]:
        return dict(self._last)
