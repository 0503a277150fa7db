"""Timestep samplers for ANT training.

ANT draws batches cluster-balanced: every cluster gets an equal share of the
batch and ``t`` is uniform inside its cluster, so each cluster's loss is
measured from the same number of samples every step whatever the cluster widths
(a narrow low-noise cluster would otherwise be nearly absent).

When k does not divide the batch size, ``B // k`` samples go to every cluster
and the remaining ``B % k`` to distinct clusters drawn at random, so the shares
are equal in expectation and differ by at most one in any batch (the authors'
scripts return ``k * (B // k)`` timesteps, fewer than the batch, in that case).
The result is shuffled: nothing downstream may rely on positions.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dtrsurgeon.mtl.clustering import validate_intervals
from dtrsurgeon.mtl.errors import MtlError


def _check_batch(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MtlError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


class ClusterBalancedSampler:
    """Equal share per cluster, ``t`` uniform inside each cluster."""

    name = "balanced"

    def __init__(self, intervals: Sequence[tuple[int, int]]):
        if not intervals:
            raise MtlError("ClusterBalancedSampler needs at least one interval")
        self.intervals = validate_intervals(intervals, intervals[-1][1] + 1)

    def counts(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """How many samples each cluster gets in one batch (length k, sums to B)."""
        k = len(self.intervals)
        base, extra = divmod(_check_batch(batch_size), k)
        counts = torch.full((k,), base, dtype=torch.long)
        if extra:
            counts[torch.randperm(k, generator=generator)[:extra]] += 1
        return counts

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """A shuffled LongTensor of ``batch_size`` timesteps (drawn on the CPU
        from ``generator``, then moved to ``device``)."""
        parts = [
            torch.randint(first, last + 1, (int(n),), generator=generator)
            for (first, last), n in zip(self.intervals, self.counts(batch_size, generator).tolist())
        ]
        t = torch.cat(parts)
        return t[torch.randperm(t.numel(), generator=generator)].to(device)


class UniformTimestepSampler:
    """``t`` uniform over ``0 .. T-1``: the usual diffusion sampler (for the
    Min-SNR and unweighted baselines)."""

    name = "uniform"

    def __init__(self, num_timesteps: int):
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise MtlError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
        self.num_timesteps = num_timesteps

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (_check_batch(batch_size),), generator=generator).to(device)
