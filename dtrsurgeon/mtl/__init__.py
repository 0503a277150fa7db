"""ANT (Addressing Negative Transfer, Go et al., NeurIPS 2023) for diffusion training.

Interval clustering of timesteps, task-affinity estimation, cluster-balanced
timestep sampling and per-cluster loss weighting (UW, PCGrad, Nash-MTL, and
Min-SNR as a baseline), all configurable from a spec's ``mtl`` section through
:func:`from_spec`.  See ``docs/mtl.md`` and :mod:`dtrsurgeon.mtl.setup` for a
training loop.

Nothing here imports rich or matplotlib at import time (the progress bar and
the CLI plot import them when used).
"""

from dtrsurgeon.mtl.affinity import (
    estimate_task_affinity,
    expand_affinity,
    load_affinity,
    sample_timesteps_evenly,
)
from dtrsurgeon.mtl.clustering import (
    CONVENTIONS,
    COSTS,
    cluster_ids,
    interval_clustering,
    interval_cost,
    partition_cost,
    uniform_intervals,
    validate_intervals,
)
from dtrsurgeon.mtl.errors import MtlError
from dtrsurgeon.mtl.gradients import (
    NashMTL,
    PCGrad,
    cluster_gradients,
    nash_weights,
    pcgrad_project,
)
from dtrsurgeon.mtl.sampler import ClusterBalancedSampler, UniformTimestepSampler
from dtrsurgeon.mtl.schedules import (
    SCHEDULES,
    NoiseSchedule,
    load_alphas_cumprod,
    make_schedule,
    schedule_from_alphas_cumprod,
)
from dtrsurgeon.mtl.setup import WEIGHTINGS, AntSetup, MtlConfig, from_spec
from dtrsurgeon.mtl.weighting import (
    PREDICTIONS,
    MinSNRWeighting,
    UncertaintyWeighting,
    cluster_mean_losses,
    min_snr_weights,
)

__all__ = [
    "CONVENTIONS",
    "COSTS",
    "PREDICTIONS",
    "SCHEDULES",
    "WEIGHTINGS",
    "AntSetup",
    "ClusterBalancedSampler",
    "MinSNRWeighting",
    "MtlConfig",
    "MtlError",
    "NashMTL",
    "NoiseSchedule",
    "PCGrad",
    "UncertaintyWeighting",
    "UniformTimestepSampler",
    "cluster_gradients",
    "cluster_ids",
    "cluster_mean_losses",
    "estimate_task_affinity",
    "expand_affinity",
    "from_spec",
    "interval_clustering",
    "interval_cost",
    "load_affinity",
    "load_alphas_cumprod",
    "make_schedule",
    "min_snr_weights",
    "nash_weights",
    "partition_cost",
    "pcgrad_project",
    "sample_timesteps_evenly",
    "schedule_from_alphas_cumprod",
    "uniform_intervals",
    "validate_intervals",
]
