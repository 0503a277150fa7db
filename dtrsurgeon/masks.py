"""DTR mask tables and the timestep -> task map.

For N tasks, C channels, channel ratio beta and a window curve w(u)::

    K       = floor(C * beta)                  (Python int(C * beta))
    u_i     = i / (N - 1)                      i = 0 .. N-1
    start_i = round(w(u_i) * (C - K))          round half to even (numpy.round)
    m[i, c] = start_i <= c < start_i + K

with w(u) = u ** alpha for the paper's "power" curve (alpha = 4 on DiT), so
task 0 (least noise) uses channels [0, K) and task N-1 uses [C-K, C).  The
"fixed" shift uses start_i = 0 for every task; "random" draws K channels per
task from ``torch.randperm`` seeded with ``seed``.
"""

from __future__ import annotations

import bisect
import math

import torch

from dtrsurgeon.spec.model import MaskParams, TaskWeights, TimestepMap


def active_channels(channels: int, channel_ratio: float) -> int:
    """K = floor(C * beta), at least 1."""
    return max(1, int(channels * channel_ratio))


def window_curve(u: float, weights: TaskWeights) -> float:
    """w(u) in [0, 1]: where the window of task u = i / (N - 1) starts, as a
    fraction of the free range C - K.  Plain Python floats (libm ``pow`` and
    ``cos``), so generated code that repeats this reproduces it bit for bit."""
    if weights.curve == "power":
        return u**weights.alpha
    if weights.curve == "linear":
        return u
    if weights.curve == "cosine":
        return (1.0 - math.cos(math.pi * u)) / 2.0
    points = weights.points
    j = max(1, bisect.bisect_left([p[0] for p in points], u))
    (u0, w0), (u1, w1) = points[j - 1], points[j]
    return w0 + (w1 - w0) * (u - u0) / (u1 - u0)


def window_starts(params: MaskParams, channels: int) -> list[int]:
    """start_i for every task, sliding or fixed (``round`` is half to even)."""
    k = active_channels(channels, params.channel_ratio)
    n = params.num_tasks
    if params.window_shift == "fixed":
        return [0] * n
    return [round(window_curve(i / (n - 1), params.task_weights) * (channels - k)) for i in range(n)]


def mask_table_for(params: MaskParams, channels: int) -> torch.Tensor:
    """The [N, C] boolean mask table of one unit."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    k = active_channels(channels, params.channel_ratio)
    n = params.num_tasks
    if params.window_shift == "random":
        gen = torch.Generator().manual_seed(params.seed)
        table = torch.zeros(n, channels, dtype=torch.bool)
        for i in range(n):
            table[i, torch.randperm(channels, generator=gen)[:k]] = True
        return table
    starts = torch.tensor(window_starts(params, channels))
    c = torch.arange(channels)
    return (c[None, :] >= starts[:, None]) & (c[None, :] < starts[:, None] + k)


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


def dtr_task_index(t: torch.Tensor, t0: float, t1: float, num_tasks: int, reverse: bool) -> torch.Tensor:
    """:func:`task_index` with the map's numbers spelled out (what emitted code calls)."""
    task = ((torch.as_tensor(t).to(torch.float32) - t0) * ((num_tasks - 1) / (t1 - t0))).round().clamp(0, num_tasks - 1).long()
    return (num_tasks - 1) - task if reverse else task


def dtr_channel_mask(table: torch.Tensor, task: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Rows of ``table`` for ``task`` ([B] or 0-d), in ``like``'s dtype, shaped to
    broadcast along ``like``'s channel ``axis``: [B, 1, C] for tokens, [B, C, 1, 1]
    for feature maps."""
    shape = [1] * like.dim()
    shape[0] = -1
    shape[axis] = table.shape[1]
    return table[task].to(like.dtype).view(shape)


def dtr_masked(x: torch.Tensor, table: torch.Tensor, task: torch.Tensor, axis: int) -> torch.Tensor:
    """``x`` with the channels its task does not use zeroed (pre_output placement)."""
    return x * dtr_channel_mask(table, task, x, axis)
