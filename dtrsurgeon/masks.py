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

import operator

import torch

from dtrsurgeon.errors import SpecError
from dtrsurgeon.runtime import dtr_mask_table, dtr_task_index
from dtrsurgeon.spec.document import preview
from dtrsurgeon.spec.model import MaskParams, Spec, TimestepMap

# N x C cells of one mask table: at 2**25 (32 MiB of bool; 10000 tasks x 3355 channels, or 1000 x
# 33554) a table builds in 0.5-5 s on one loaded CPU core, 110 MiB above the inputs at its peak
# (benchmarks/results/limits-cpu.txt).
MAX_TABLE_CELLS = 1 << 25


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


def check_channels(channels, argument: str = "channels") -> int:
    """``channels`` as an int, or a one-line TypeError / ValueError naming ``argument``.

    ``mask_table(spec, 2.5)`` is refused: a width is a count, not a measure.
    """
    try:
        if isinstance(channels, bool):
            raise TypeError
        channels = operator.index(channels)
    except TypeError:
        raise TypeError(f"{argument} must be a positive int, got {type(channels).__name__} {preview(channels)}") from None
    if channels < 1:
        raise ValueError(f"{argument} must be a positive int, got {channels}")
    return channels


def check_table_size(params: MaskParams, channels: int, where: str = "") -> None:
    """Refuse a table of more than :data:`MAX_TABLE_CELLS` cells before building it.

    The bound is the spec's ``num_tasks`` against a width the model decides, so the
    error points at ``/timestep/num_tasks`` and says which N would fit.
    """
    cells = params.num_tasks * channels
    if cells > MAX_TABLE_CELLS:
        unit = f"unit {where} has" if where else "a unit of"
        raise SpecError("/timestep/num_tasks", f"{params.num_tasks} tasks x {channels} channels = {cells} mask cells; "
                        f"at most {MAX_TABLE_CELLS} ({unit} width {channels}: num_tasks <= {MAX_TABLE_CELLS // channels})")


def mask_table_for(params: MaskParams, channels: int) -> torch.Tensor:
    """The [N, C] boolean mask table of one unit."""
    channels = check_channels(channels)
    check_table_size(params, channels)
    return dtr_mask_table(channels, **mask_settings(params))


def mask_table(spec, channels: int, module_path: str | None = None) -> torch.Tensor:
    """``torch.BoolTensor[N, C]``: row i is the channel set of task i.

    ``spec`` is anything :func:`dtrsurgeon.load_spec` accepts.  With
    ``module_path`` the spec's overrides for that unit apply.
    """
    from dtrsurgeon.spec import load_spec

    channels = check_channels(channels)
    if module_path is not None and not isinstance(module_path, str):
        raise TypeError(f"module_path must be a str (a named_modules() name), got {type(module_path).__name__}")
    spec = load_spec(spec)
    params = spec.routing if module_path is None else spec.mask_params_for(module_path)
    return mask_table_for(params, channels)


def task_index(t: torch.Tensor, tmap: TimestepMap) -> torch.Tensor:
    """Map timesteps to task indices (long, same shape as ``t``).

    ``task = clamp(round((t - t0) * (N - 1) / (t1 - t0)), 0, N - 1)``, flipped
    when ``tmap.reverse``.  Pure tensor ops: no host sync, no data-dependent
    Python, so ``torch.compile`` sees one graph for every t.
    """
    if isinstance(tmap, Spec):
        tmap = tmap.timestep
    if not isinstance(tmap, TimestepMap):
        raise TypeError(f"task_index: tmap must be a TimestepMap (spec.timestep) or a Spec, got {type(tmap).__name__}")
    try:
        t = torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"task_index: t must be a tensor of timesteps, got {type(t).__name__} {preview(t)}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"task_index: t must hold real timesteps, got dtype {t.dtype}")
    return dtr_task_index(t, tmap.t0, tmap.t1, tmap.num_tasks, tmap.reverse)
