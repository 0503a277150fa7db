"""DTR mask tables and the timestep -> task map, from a spec.

For N tasks, C channels, channel ratio beta and a window curve w(u)::

    K       = floor(C * beta)                  (Python int(C * beta))
    u_i     = i / (N - 1)                      i = 0 .. N-1
    start_i = round(w(u_i) * (C - K))          round half to even (numpy.round)
    m[i, c] = start_i <= c < start_i + K

with w(u) = u ** alpha for the paper's "power" curve (alpha = 4 on DiT), so
task 0 (least noise) uses channels [0, K) and task N-1 uses [C-K, C).  The
"fixed" shift uses start_i = 0 for every task; "random" draws K channels per
task from ``torch.randperm`` seeded with ``seed``.

The arithmetic lives in :mod:`dtrsurgeon.runtime` (plain Python floats,
libm ``pow``/``cos``), the code generated files carry; this module maps a
spec's settings onto it.
"""

from __future__ import annotations

import torch

from dtrsurgeon.runtime import dtr_mask_table, dtr_task_index
from dtrsurgeon.spec.model import MaskParams, TimestepMap


def active_channels(channels: int, channel_ratio: float) -> int:
    """K = floor(C * beta), at least 1."""
    return max(1, int(channels * channel_ratio))


def mask_settings(params: MaskParams) -> dict:
    """The keyword arguments of ``dtr_mask_table`` for ``params`` (defaults left out)."""
    tw = params.task_weights
    settings = {"channel_ratio": params.channel_ratio, "num_tasks": params.num_tasks,
                "window_shift": params.window_shift, "curve": tw.curve}
    if tw.curve == "power":
        settings["alpha"] = tw.alpha
    if tw.curve == "table":
        settings["points"] = tuple(tuple(p) for p in tw.points)
    if params.window_shift == "random":
        settings["seed"] = params.seed
    return settings


def mask_table_for(params: MaskParams, channels: int) -> torch.Tensor:
    """The [N, C] boolean mask table of one unit."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return dtr_mask_table(channels, **mask_settings(params))


def mask_table(spec, channels: int, module_path: str | None = None) -> torch.Tensor:
    """``torch.BoolTensor[N, C]``: row i is the channel set of task i.

    ``spec`` is anything :func:`dtrsurgeon.load_spec` accepts.  With
    ``module_path`` the spec's overrides for that unit apply.
    """
    from dtrsurgeon.spec import load_spec

    spec = load_spec(spec)
    params = spec.routing if module_path is None else spec.mask_params_for(module_path)
    return mask_table_for(params, channels)


def task_index(t: torch.Tensor, tmap: TimestepMap) -> torch.Tensor:
    """Map timesteps to task indices (long, same shape as ``t``).

    ``task = clamp(round((t - t0) * (N - 1) / (t1 - t0)), 0, N - 1)``, flipped
    when ``tmap.reverse``.  Pure tensor ops: no host sync, no data-dependent
    Python, so ``torch.compile`` sees one graph for every t.
    """
    return dtr_task_index(t, tmap.t0, tmap.t1, tmap.num_tasks, tmap.reverse)
