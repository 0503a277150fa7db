"""ANT in the training loop: :mod:`dtrsurgeon.mtl` behind the objective interface of ``objective.py``.

``dtrsurgeon.mtl.from_spec`` builds the clusters, the cluster-balanced sampler and the weighting
(UW, Min-SNR, PCGrad, Nash, none) from a spec's ``mtl`` section. This wrapper adds what the
training script needs around it:

* the mtl section's noise schedule must be the one the script trains with (SNR clustering is
  computed from it), checked on construction;
* under DistributedDataParallel and gradient accumulation each forward pass holds one equal part
  of the global batch; UW's loss is taken with ``whole_batch_ids`` (the global batch's cluster ids),
  which makes every cluster mean that of the global batch, so the gradient summed over the passes and
  averaged by DDP equals the one-process, one-pass gradient (UW averages its own log-variance
  gradients across ranks in ``step``). PCGrad and Nash are refused with more than one process or
  pass (they need the forward under ``no_sync()`` and their own all-reduce, one step per pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples.diffusion import Schedule


class AntError(Exception):
    """The mtl section does not fit this training run."""


class Ant:
    name = "ant"

    def __init__(self, setup):
        self.setup = setup

    @classmethod
    def from_section(cls, section: dict[str, Any], schedule: Schedule, model: torch.nn.Module | None = None,
                     base_dir: str | Path | None = None, world: int = 1, accum: int = 1, device=None) -> "Ant":
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
        if accum > 1 and setup.config.weighting in ("pcgrad", "nash"):
            raise AntError(f"mtl weighting {setup.config.weighting!r} needs the whole batch in one pass; "
                           "drop --grad-accum or use uw, min_snr or none")
        return cls(setup)

    # -- the objective interface --------------------------------------------------------------

    def sample_t(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return self.setup.sample_timesteps(batch, generator=generator)

    def backward(self, mse: torch.Tensor, t: torch.Tensor, batch_t: torch.Tensor, accum: int = 1) -> None:
        w = self.setup.weighting
        if self.setup.config.weighting == "uw":
            # every cluster mean is the global batch's: exact over ranks and micro-batches
            whole = self.setup.cluster_ids(batch_t)
            (w.loss(mse, self.setup.cluster_ids(t), whole_batch_ids=whole) / accum).backward()
        elif self.setup.config.weighting in ("min_snr", "none"):
            (self.setup.loss(mse, t) / accum).backward()
        else:  # pcgrad, nash: per-cluster gradients written to .grad (single process, one pass)
            self.setup.backward(mse, t)

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
        """UW's cluster weights exp(-s_k)/2 as w0..w{k-1} (read at log steps only: it syncs)."""
        if self.setup.config.weighting == "uw":
            return {f"w{i}": v for i, v in enumerate(self.setup.weighting.weights().tolist())}
        return {}
