"""Fused Triton kernels for DTR's masking on CUDA tensors, one pass each.

:func:`dtrsurgeon.runtime.dtr_fused` loads this module through the loader the package hands the runtime
(``dtr_use_fused_kernels``), the first time a routing helper sees a CUDA tensor outside ``torch.compile``
(inductor fuses the plain ops itself), so CPU runs never load Triton.  ``DTRSURGEON_FUSED=0`` turns the kernels off for A/B runs.  This module imports nothing from
dtrsurgeon: it sits at the bottom of the package with the runtime.

The plain runtime computes, per block-mode unit and step, ``x * keep`` and ``addcmul(out, skip, ~keep)``
forward and ``where(keep, g_routed, g_skip)`` backward with PyTorch's broadcast kernels (1.7-2.2x a
copy's time each on an H200, each reading every operand in full; ``benchmarks/fused_check.py``).  Here each is one Triton kernel over the stream
viewed as ``[B, R, L]`` with the mask row of sample ``b`` loaded once per tile, and the operands a
result does not need in a channel are not read there::

    route     y = x * keep                         reads x,               writes y
    merge     y = out + skip * ~keep               reads out, skip[~keep], writes y
    merge_    out[~keep] += skip[~keep]            reads and writes only the unused channels (in place)
    select    g = where(keep, g_routed, g_skip)    reads g_routed[keep], g_skip[~keep], writes g

``merge_`` runs only on a block output that is fresh: made by an out-of-place op (version 0, not a
view), held by nothing else (no view of it, not saved by autograd as an op's input, one Python
reference above the caller's), and produced by an op whose backward does not need its result.
Anything else takes ``merge``.  Every function returns None for a layout it does not handle
(a stream with gaps or the batch not outermost in memory, operands with different strides, a mask
that is not a per-sample channel row); the runtime then takes the plain path.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import torch

ROUTE, MERGE, MERGE_INPLACE, SELECT = 0, 1, 2, 3
TILE = 4096  # elements per program
WARPS = 8
# grad_fn classes of ops that allocate their result and do not save it for backward
_UNSAVED_RESULT = frozenset({"AddBackward0", "SubBackward0", "AddcmulBackward0", "MulBackward0"})


def enabled() -> bool:
    """False when DTRSURGEON_FUSED=0 or Triton cannot be imported."""
    return os.environ.get("DTRSURGEON_FUSED", "1") != "0" and _kernel() is not None


@functools.lru_cache(maxsize=None)
def _kernel():
    """The Triton kernel, compiled on first use; None where Triton is missing."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def dtr_mask_kernel(a_ptr, b_ptr, keep_ptr, y_ptr, R, L, keep_stride, tiles_r, tiles_l,
                        OP: tl.constexpr, CHANNEL_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
        pid = tl.program_id(0)
        tiles = tiles_r * tiles_l
        b = pid // tiles
        rest = pid % tiles
        rows = (rest // tiles_l) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = (rest % tiles_l) * BLOCK_L + tl.arange(0, BLOCK_L)
        inside = (rows < R)[:, None] & (cols < L)[None, :]
        if CHANNEL_LAST:  # [B, R, C]: the mask row runs along the tile's columns
            keep = (tl.load(keep_ptr + b * keep_stride + cols, mask=cols < L, other=0) != 0)[None, :]
        else:  # [B, C, S]: one mask entry per tile row
            keep = (tl.load(keep_ptr + b * keep_stride + rows, mask=rows < R, other=0) != 0)[:, None]
        offs = (b.to(tl.int64) * R + rows[:, None]) * L + cols[None, :]
        if OP == 0:
            a = tl.load(a_ptr + offs, mask=inside)
            tl.store(y_ptr + offs, a * keep.to(a.dtype), mask=inside)
        elif OP == 1:
            a = tl.load(a_ptr + offs, mask=inside).to(tl.float32)
            s = tl.load(b_ptr + offs, mask=inside & ~keep, other=0).to(tl.float32)
            tl.store(y_ptr + offs, (a + s).to(y_ptr.dtype.element_ty), mask=inside)
        elif OP == 2:
            unused = inside & ~keep
            a = tl.load(a_ptr + offs, mask=unused).to(tl.float32)
            s = tl.load(b_ptr + offs, mask=unused).to(tl.float32)
            tl.store(a_ptr + offs, (a + s).to(a_ptr.dtype.element_ty), mask=unused)
        else:
            g = tl.load(a_ptr + offs, mask=inside & keep, other=0)
            s = tl.load(b_ptr + offs, mask=inside & ~keep, other=0)
            tl.store(y_ptr + offs, tl.where(keep, g, s), mask=inside)

    return triton, dtr_mask_kernel


def layout(x, keep):
    """(B, R, L, channel_last, keep_stride): x's memory viewed as [B, R, L] with keep's channel axis
    innermost ([B, T, C]: R = T, L = C) or outermost after the batch ([B, C, H, W]: R = C, L = H * W);
    None otherwise.  x may be any dense layout with the batch outermost: DiT's stream, made by a
    transpose, is [B, T, C] with the tokens innermost in memory (the second case)."""
    if (keep is None or keep.dtype != torch.bool or x.dim() < 2 or keep.dim() != x.dim() or x.numel() == 0
            or keep.device != x.device or keep.shape[0] not in (1, x.shape[0])):
        return None
    axes = [d for d in range(1, x.dim()) if keep.shape[d] != 1]
    if len(axes) != 1 or keep.shape[axes[0]] != x.shape[axes[0]] or keep.stride(axes[0]) != 1:
        return None
    order = memory_order(x)
    if order is None:
        return None
    axis = axes[0]
    at = order.index(axis)
    before, after = math.prod(x.shape[d] for d in order[:at]), math.prod(x.shape[d] for d in order[at + 1:])
    keep_stride = keep.stride(0) if keep.shape[0] > 1 else 0
    if after == 1:
        return x.shape[0], before, x.shape[axis], True, keep_stride
    if before == 1:
        return x.shape[0], x.shape[axis], after, False, keep_stride
    return None


def memory_order(x):
    """x's dims after the batch, outermost first in memory, where x is dense (no gaps, no overlap)
    with the batch outermost; None otherwise."""
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    expected = 1
    for d in reversed(order):
        if x.shape[d] != 1 and x.stride(d) != expected:
            return None
        expected *= x.shape[d]
    if x.shape[0] != 1 and x.stride(0) != expected:
        return None
    return order


def _launch(op, a, b, keep, shape, y):
    triton, kernel = _kernel()
    batch, rows, cols, channel_last, keep_stride = shape
    block_l = min(triton.next_power_of_2(cols), TILE)
    block_r = min(max(1, TILE // block_l), triton.next_power_of_2(rows))
    tiles_r, tiles_l = triton.cdiv(rows, block_r), triton.cdiv(cols, block_l)
    kernel[(batch * tiles_r * tiles_l,)](a, a if b is None else b, keep.view(torch.uint8), a if y is None else y,
                                         rows, cols, keep_stride, tiles_r, tiles_l, OP=op, CHANNEL_LAST=channel_last,
                                         BLOCK_R=block_r, BLOCK_L=block_l, num_warps=WARPS)
    return y


def _select(keep, g_routed, g_skip):
    """where(keep, g_routed, g_skip): fused where both gradients are contiguous like the stream."""
    shape = layout(g_routed, keep)
    if shape is None or g_skip.shape != g_routed.shape or g_skip.stride() != g_routed.stride() or g_skip.dtype != g_routed.dtype:
        return torch.where(keep, g_routed, g_skip)
    return _launch(SELECT, g_routed, g_skip, keep, shape, torch.empty_like(g_routed))


class FusedRoute(torch.autograd.Function):
    """(x, keep) -> (x * keep, x); backward where(keep, g_routed, g_skip), both one kernel."""

    @staticmethod
    def forward(ctx, x, keep, shape):
        ctx.save_for_backward(keep)
        return _launch(ROUTE, x, None, keep, shape, torch.empty_like(x)), x.view_as(x)

    @staticmethod
    def backward(ctx, grad_routed, grad_skip):
        (keep,) = ctx.saved_tensors
        return _select(keep, grad_routed, grad_skip), None, None


class FusedMerge(torch.autograd.Function):
    """(out, skip, keep) -> out + skip * ~keep, into a new tensor or into a fresh out (mark_dirty)."""

    @staticmethod
    def forward(ctx, out, skip, keep, shape, in_place):
        ctx.dtypes = (out.dtype, skip.dtype)
        if in_place:
            _launch(MERGE_INPLACE, out, skip, keep, shape, None)
            ctx.mark_dirty(out)
            return out
        y = torch.empty_like(out, dtype=torch.promote_types(out.dtype, skip.dtype))
        return _launch(MERGE, out, skip, keep, shape, y)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtypes[0]), grad.to(ctx.dtypes[1]), None, None, None


class FusedMasked(torch.autograd.Function):
    """x * keep forward and g * keep backward, one kernel each."""

    @staticmethod
    def forward(ctx, x, keep, shape):
        ctx.save_for_backward(keep)
        return _launch(ROUTE, x, None, keep, shape, torch.empty_like(x))

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        shape = layout(grad, keep)
        if shape is None:
            return grad * keep.to(grad.dtype), None, None
        return _launch(ROUTE, grad, None, keep, shape, torch.empty_like(grad)), None, None


def _tracks_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def route(x, keep):
    """(x * keep, x) as dtrsurgeon.runtime.dtr_route computes them, or None for the plain path."""
    shape = layout(x, keep)
    if shape is None:
        return None
    if _tracks_grad(x):
        return FusedRoute.apply(x, keep, shape)
    return _launch(ROUTE, x, None, keep, shape, torch.empty_like(x)), x


def masked(x, keep):
    """x * keep as dtrsurgeon.runtime.dtr_masked computes it, or None for the plain path."""
    shape = layout(x, keep)
    if shape is None:
        return None
    if _tracks_grad(x):
        return FusedMasked.apply(x, keep, shape)
    return _launch(ROUTE, x, None, keep, shape, torch.empty_like(x))


def merge(out, skip, keep):
    """out + skip * ~keep as dtrsurgeon.runtime.dtr_merge computes it, or None for the plain path.
    Called as dtr_merge(out, ...) -> merge(out, ...): see fresh() for when it writes into out."""
    shape = layout(out, keep)
    if shape is None or skip.shape != out.shape or skip.stride() != out.stride():
        return None
    refs = sys.getrefcount(out)  # before out is pushed as an argument
    in_place = fresh(out, refs) and out.dtype == torch.promote_types(out.dtype, skip.dtype)
    if _tracks_grad(out, skip):
        return FusedMerge.apply(out, skip, keep, shape, in_place)
    if in_place:
        _launch(MERGE_INPLACE, out, skip, keep, shape, None)
        return out
    y = torch.empty_like(out, dtype=torch.promote_types(out.dtype, skip.dtype))
    return _launch(MERGE, out, skip, keep, shape, y)


def fresh(out, python_refs: int) -> bool:
    """Whether out may be overwritten: an out-of-place op's result (version 0, not a view) that no
    view, no autograd node and no Python name beside the caller's holds, from an op whose backward
    does not read its own result.  ``python_refs``: sys.getrefcount(out) in merge(), compared with what
    a tensor held only by one local of dtr_merge's caller shows there (:data:`_CALLER_REFS`)."""
    if (not out.is_inference() and out._version != 0) or out._base is not None or out._use_count() != 1 or python_refs > _CALLER_REFS:
        return False
    if out.requires_grad and torch.is_grad_enabled():
        return out.grad_fn is not None and type(out.grad_fn).__name__ in _UNSAVED_RESULT
    return not out.requires_grad


def _refs_in_merge(value):  # stands for merge(out, ...), called by dtr_merge, called by a forward
    return sys.getrefcount(value)


def _refs_in_dtr_merge(value):
    return _refs_in_merge(value)


def _refs_of_a_local():
    local = object()
    return _refs_in_dtr_merge(local)


_CALLER_REFS = _refs_of_a_local()
