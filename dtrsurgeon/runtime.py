"""The code that runs inside a routed model, shared by both emitters.

The module emitter calls these definitions; the source emitter copies their
text into every generated file (see ``runtime_source`` in :mod:`dtrsurgeon.emit.source`), so a generated file
imports nothing from dtrsurgeon and both emitters compute the same numbers by
construction.  Everything here may use only ``bisect``, ``math``, ``warnings`` and ``torch``.

A block-mode unit computes ``y = unit(x * m) + x * (1 - m)``.  Written with plain
operators that costs three full passes over the stream forward and three in
backward (two masked products and the sum of the two gradients reaching ``x``).
:func:`dtr_route` and :func:`dtr_merge` are one autograd node pair that gives the
same values and gradients in two passes forward and one backward.  Masks are gathered as bool
and cast to the stream's dtype for the products: CUDA's broadcast kernels run about 20 %
faster on same-dtype operands (H100, ``benchmarks/results/mask-kernels-h100.txt``)::

    keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 2)   # [B, 1, C] bool
    x, skip = dtr_route(x, keep)       # x * keep, and x itself for the bypass
    ...                                # the unit's own code, unchanged
    return dtr_merge(x, skip, keep)    # x + skip * ~keep in one addcmul
"""

import bisect
import math

import torch


def dtr_mask_table(channels, channel_ratio, num_tasks, window_shift="sliding", curve="power", alpha=4.0, points=(), seed=0):
    """Row i: the K = int(channels * channel_ratio) channels task i uses, a window starting at
    round(w(i / (num_tasks - 1)) * (channels - K)) (half to even); "random": K seeded random channels."""
    k = max(1, int(channels * channel_ratio))
    if window_shift == "random":
        generator = torch.Generator().manual_seed(seed)
        table = torch.zeros(num_tasks, channels, dtype=torch.bool)
        for i in range(num_tasks):
            table[i, torch.randperm(channels, generator=generator)[:k]] = True
        return table
    starts = []
    for i in range(num_tasks):
        u = i / (num_tasks - 1)
        if window_shift == "fixed":
            w = 0.0
        elif curve == "power":
            w = u**alpha
        elif curve == "linear":
            w = u
        elif curve == "cosine":
            w = (1.0 - math.cos(math.pi * u)) / 2.0
        else:  # "table": piecewise linear through points
            j = max(1, bisect.bisect_left([p[0] for p in points], u))
            (u0, w0), (u1, w1) = points[j - 1], points[j]
            w = w0 + (w1 - w0) * (u - u0) / (u1 - u0)
        starts.append(round(w * (channels - k)))
    start = torch.tensor(starts)[:, None]
    channel = torch.arange(channels)[None, :]
    return (channel >= start) & (channel < start + k)


def dtr_task_index(t, t0, t1, num_tasks, reverse):
    """Timesteps in [t0, t1] -> task indices 0 .. num_tasks - 1 (rounded, clamped: -inf counts as t0,
    +inf as t1, NaN as t0); tensor ops only, so torch.compile sees one graph for every t."""
    t = torch.nan_to_num(torch.as_tensor(t).to(torch.float32), nan=t0, posinf=t1, neginf=t0)
    task = ((t - t0) * ((num_tasks - 1) / (t1 - t0))).round().clamp(0, num_tasks - 1).long()
    return (num_tasks - 1) - task if reverse else task


def dtr_channel_mask(table, task, like, axis):
    """The rows of `table` for `task` ([B], 0-d, or [1, B] for a sequence-first stream), bool, shaped to
    broadcast along like's channel axis: [B, 1, C] for tokens, [B, C, 1, 1] for feature maps, [1, B, C]
    for sequence-first tokens.  No table (None): the module runs its class's routed forward without being
    a routed unit itself, and nothing is masked.  No task (None): the unit was called on a path the
    analysis did not see; it runs unrouted, with a warning."""
    if table is None:
        return None
    if task is None:
        dtr_warn_unrouted()
        return None
    shape = [*task.shape, *[1] * (like.dim() - task.dim())]
    shape[axis] = table.shape[1]
    return table[task].view(shape)


def dtr_masked(x, table, task, axis):
    """x with the channels its task does not use zeroed (x itself where the module has no table)."""
    keep = dtr_channel_mask(table, task, x, axis)
    if keep is None:
        return x
    fused = dtr_fused(x)
    masked = None if fused is None else fused.masked(x, keep)
    return x * keep.to(x.dtype) if masked is None else masked


def dtr_warn_unrouted():
    """A routed unit called without dtr_task: a call on a path the example inputs did not take, that
    the source did not show to reach it (warned once per call site, by Python's default filter)."""
    import warnings

    warnings.warn("dtrsurgeon: a routed unit was called without dtr_task (from code the analysis did not see "
                  "run); it runs unrouted on this call", UserWarning, stacklevel=3)


class DTRRoute(torch.autograd.Function):
    """(x, keep) -> (x * keep, x).  Backward takes the gradient of the routed input where keep is
    set and the bypass gradient elsewhere: one pass instead of two products and a sum."""

    @staticmethod
    def forward(ctx, x, keep):
        ctx.save_for_backward(keep)
        return x * keep.to(x.dtype), x.view_as(x)

    @staticmethod
    def backward(ctx, grad_routed, grad_skip):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad_routed, grad_skip), None


class DTRMerge(torch.autograd.Function):
    """(out, skip, keep) -> out + skip * ~keep.  Its gradient for skip is passed on unmasked:
    DTRRoute's backward, the only consumer, keeps it only where keep is not set."""

    @staticmethod
    def forward(ctx, out, skip, keep):
        ctx.dtypes = (out.dtype, skip.dtype)
        return torch.addcmul(out, skip, (~keep).to(torch.promote_types(out.dtype, skip.dtype)))

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtypes[0]), grad.to(ctx.dtypes[1]), None


def dtr_route(x, keep):
    """The unit's input x * keep and the bypass x; pass the bypass only to dtr_merge."""
    if keep is None:
        return x, x
    fused = dtr_fused(x)
    routed = None if fused is None else fused.route(x, keep)
    return DTRRoute.apply(x, keep) if routed is None else routed


def dtr_merge(out, skip, keep):
    """The unit's output plus the channels its task does not use, taken from dtr_route's bypass."""
    if keep is None:
        return out
    fused = dtr_fused(out)
    merged = None if fused is None else fused.merge(out, skip, keep)
    return DTRMerge.apply(out, skip, keep) if merged is None else merged


def dtr_fused(x):
    """The fused kernels (:mod:`dtrsurgeon.kernels`, Triton) for a CUDA tensor x, or None: the plain
    path (CPU, torch.compile, which fuses the plain ops itself, DTRSURGEON_FUSED=0, no Triton, or no
    kernels handed over by :func:`dtr_use_fused_kernels`).  Loaded on first use, so CPU runs never load
    Triton.  Generated files carry a dtr_fused that always answers None: they import nothing but torch."""
    if not x.is_cuda or torch.compiler.is_compiling() or _fused_kernels is None:
        return None
    kernels = _fused_kernels()
    return kernels if kernels.enabled() else None


#: A function returning the fused-kernel module, set by the package; the runtime imports nothing of it.
_fused_kernels = None


def dtr_use_fused_kernels(loader):
    """Hands the runtime the way to its fused kernels: ``loader()`` returns a module with ``enabled``,
    ``route``, ``masked`` and ``merge`` (:mod:`dtrsurgeon.kernels`).  The package does this on import
    (``dtrsurgeon/__init__.py``), so the runtime, copied into generated files, names no module of it;
    ``dtr_use_fused_kernels(None)`` keeps every call on the plain path."""
    global _fused_kernels
    _fused_kernels = loader


def dtr_plain(x):
    """dtr_fused as generated files define it (``runtime_source`` names it so): always the plain path."""
    return None


def dtr_bind_task(module, task):
    """module with its dtr_task bound, for checkpoint functions that pass no keyword arguments on
    (diffusers' _gradient_checkpointing_func); bound now, so a recompute in backward sees the same."""
    return lambda *args, **kwargs: module(*args, dtr_task=task, **kwargs)


def dtr_bind_children(functions, task):
    """The children checkpoint_sequential(functions, segments, x) calls one by one (it never runs the
    Sequential's own forward), each whose forward takes dtr_task with the task bound:
    ``checkpoint_sequential(self.blocks, 2, x)`` -> ``checkpoint_sequential(dtr_bind_children(self.blocks,
    dtr_task), 2, x)``.  Children that take no task (a Dropout between blocks) are passed as they are; no task
    (a helper its caller gave none): ``functions`` unchanged."""
    if task is None:
        return functions
    children = list(functions.children()) if isinstance(functions, torch.nn.Sequential) else list(functions)
    return [dtr_bind_task(f, task) if dtr_takes_task(f) else f for f in children]


def dtr_takes_task(fn):
    """Whether fn (for a module: its forward) has a parameter named dtr_task; a forward decorated with
    functools.wraps (``wrapper(*args, **kwargs)``, which hands dtr_task on) is judged by the function it wraps."""
    forward = getattr(fn, "forward", fn)
    forward = getattr(forward, "__func__", forward)
    while hasattr(forward, "__wrapped__"):
        forward = forward.__wrapped__
    code = getattr(getattr(forward, "__func__", forward), "__code__", None)
    return code is not None and "dtr_task" in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]


def dtr_merge_outputs(outs, merges):
    """A unit returning several streams (MMDiT: ``(encoder_hidden_states, hidden_states)``): the tuple
    with each routed item merged, ``merges`` holding one (position, bypass, keep) per routed stream."""
    outs = list(outs)
    for index, skip, keep in merges:
        outs[index] = dtr_merge(outs[index], skip, keep)
    return tuple(outs)


def dtr_fold_task(task, like, fold):
    """The task index per row of a stream whose batch axis holds F rows per sample (video models
    fold frames into the batch): "interleave" puts sample b on rows b*F .. b*F+F-1 (x.reshape(B*F, ...)),
    "repeat" on rows b, b+B, ... (x.repeat(F, ...)).  A sequence-first stream [L, B, C] ("sequence_first")
    takes the task as [1, B], so that its mask is [1, B, C].  A 0-d task, or one row per sample, is returned as is."""
    if task.dim() == 0:
        return task
    if fold == "sequence_first":
        return task.view(1, -1)
    if like.shape[0] == task.shape[0]:
        return task
    frames = like.shape[0] // task.shape[0]
    return task.repeat_interleave(frames) if fold == "interleave" else task.repeat(frames)
