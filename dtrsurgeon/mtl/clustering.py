"""Interval clustering of denoising tasks (ANT, Go et al., NeurIPS 2023).

Split the timesteps ``0 .. T-1`` into ``k`` contiguous intervals
``[(first, last), ...]`` (inclusive, in order, covering every t) that minimise
the sum of per-interval costs.  The DP is exact; tie-breaks are deterministic
(see below).

Costs, for an interval ``[f, l]`` with center ``c``:

- ``"snr"``, ``"log_snr"``, ``"timestep"``: ``sum_{t=f..l} |v(t) - v(c)|`` with
  ``v`` = SNR, log SNR, or t itself, and the authors' center
  ``c = round((f + l + 1) / 2)`` (Python ``round``: half to even), so results
  match the released reference code.  For ``f < l`` that center lies in
  ``[f + 1, l]``.  For a 1-wide interval the formula would give ``f`` or
  ``f + 1`` (and ``T`` past the end of the array when ``f = T - 1`` is odd); the
  authors' code special-cases ``f == l`` to cost 0, i.e. the only member is its
  own center, and so do we -- no clamping is ever needed.
- ``"affinity"``: ``-sum_{t=f..l} A[c, t]`` for a T x T task-affinity matrix
  ``A`` (see :mod:`dtrsurgeon.mtl.affinity`), with the authors' center for this
  cost, ``c = int((f + l + 1) / 2)`` (truncation, not rounding).  A 1-wide
  interval costs ``-A[f, f]``: -1 for a cosine-similarity matrix, the constant
  the reference code hard-codes.

Algorithm: ``D[j, i]`` = best cost of ``j + 1`` intervals covering ``0 .. i``;
``D[j, i] = min_{s <= i} D[j-1, s-1] + C(s, i)``.  Interval costs come from
prefix sums, so every cost is O(1) array work and the DP is O(k T^2), done in
row blocks that stay in cache.  For a monotone ``v`` (every real schedule) a
cost is ``+/-(g[s + i] + S[s] + S[i + 1])`` with ``S`` the prefix sum of ``v``
and ``g`` a length-2T table -- a Hankel matrix, read through a stride view; for
other curves and for affinity it is a difference of two per-center prefix sums.

Tie-break: among equally good splits the one whose last interval starts
earliest wins, recursively -- the first-minimum rule of ``numpy.argmin``, which is
also what the reference code does.

    >>> from dtrsurgeon.mtl import interval_clustering
    >>> interval_clustering([0.0, 0.0, 5.0, 5.0, 9.0], 3, cost="snr")
    [(0, 1), (2, 3), (4, 4)]
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from dtrsurgeon.mtl.errors import MtlError

COSTS = ("snr", "log_snr", "timestep", "affinity")
CONVENTIONS = ("exact", "reference")
_BLOCK = 128  # DP row-block height: a 128 x T float64 block stays in L2 cache for T ~ 1000


# --- inputs -----------------------------------------------------------------


def _check_cost(cost: str) -> None:
    if cost not in COSTS:
        raise MtlError(f"unknown clustering cost {cost!r}; expected one of: {', '.join(COSTS)}")


def _prepare(values, cost: str) -> np.ndarray:
    """The curve v(t) (1-D costs) or the affinity matrix, validated, as float64."""
    _check_cost(cost)
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MtlError(f"clustering values must be numbers: {e}") from None
    if cost == "affinity":
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
            raise MtlError(
                f"an affinity matrix must be square (T x T), got shape {tuple(arr.shape)}; "
                "estimate one with dtrsurgeon.mtl.estimate_task_affinity"
            )
        if not np.all(np.isfinite(arr)):
            i, j = (int(x) for x in np.argwhere(~np.isfinite(arr))[0])
            raise MtlError(f"the affinity matrix has a non-finite entry at [{i}, {j}] ({arr[i, j]}); fill or re-estimate it")
        return arr
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise MtlError(f"cost {cost!r} needs a non-empty 1-D SNR curve, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise MtlError(f"the SNR curve has a non-finite value at t={bad} ({arr[bad]})")
    if cost == "timestep":
        return np.arange(arr.shape[0], dtype=np.float64)
    if cost == "log_snr":
        if np.any(arr <= 0):
            bad = int(np.flatnonzero(arr <= 0)[0])
            raise MtlError(f"cost 'log_snr' needs SNR > 0, but SNR(t={bad}) = {arr[bad]}; use cost 'snr' for this schedule")
        return np.log(arr)
    return arr


def _check_k(k, num_timesteps: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise MtlError(f"k (the number of clusters) must be an integer, got {k!r}")
    if k < 1:
        raise MtlError(f"k (the number of clusters) must be >= 1, got {k}")
    if k > num_timesteps:
        raise MtlError(f"k = {k} clusters cannot be formed from T = {num_timesteps} timesteps; use k <= {num_timesteps}")
    return int(k)


# --- centers and costs ----------------------------------------------------------


def _center(first: int, last: int, cost: str) -> int:
    if cost == "affinity":
        return (first + last + 1) // 2
    if first == last:
        return first
    return round((first + last + 1) / 2)


def _centers_by_sum(num_timesteps: int, cost: str) -> np.ndarray:
    """center(s, i) as a function of m = s + i, for m = 0 .. 2T-2 (int64).

    The 1-D rule's 1-wide case (s == i) is not represented here: callers zero it.
    """
    m1 = np.arange(2 * num_timesteps - 1, dtype=np.int64) + 1  # f + l + 1
    if cost == "affinity":
        return m1 // 2
    half = m1 // 2
    # round-half-even of m1 / 2: when m1 is odd, go to the even neighbour
    return half + ((m1 & 1) & (half & 1))


def _cost_of(v: np.ndarray, first: int, last: int, cost: str) -> float:
    c = _center(first, last, cost)
    if cost == "affinity":
        return float(-v[c, first : last + 1].sum())
    return float(np.abs(v[first : last + 1] - v[c]).sum())


def interval_cost(values, first: int, last: int, cost: str = "snr") -> float:
    """The cost of one interval ``[first, last]`` (inclusive), summed directly.

    This is the reference definition (see the module docstring); the DP computes
    the same numbers through prefix sums.  ``values`` as in :func:`interval_clustering`.
    """
    v = _prepare(values, cost)
    n = v.shape[0]
    if not (0 <= first <= last < n):
        raise MtlError(f"interval ({first}, {last}) is not inside 0..{n - 1} with first <= last")
    return _cost_of(v, first, last, cost)


def partition_cost(values, intervals: Sequence[tuple[int, int]], cost: str = "snr") -> float:
    """The objective of a partition: the sum of its interval costs, summed directly."""
    v = _prepare(values, cost)
    pairs = validate_intervals(intervals, v.shape[0])
    return float(sum(_cost_of(v, f, l, cost) for f, l in pairs))


# --- partitions -----------------------------------------------------------------


def validate_intervals(intervals: Iterable[Sequence[int]], num_timesteps: int) -> list[tuple[int, int]]:
    """Check that ``intervals`` are contiguous, ordered, inclusive and cover
    ``0 .. num_timesteps-1``; return them as a list of int tuples."""
    out: list[tuple[int, int]] = []
    expect = 0
    for n, pair in enumerate(intervals):
        try:
            first, last = (int(x) for x in pair)
        except (TypeError, ValueError):
            raise MtlError(f"interval #{n} must be a (first, last) pair of integers, got {pair!r}") from None
        if first != expect or last < first:
            raise MtlError(
                f"interval #{n} is ({first}, {last}); intervals must be contiguous and ordered, "
                f"so it must start at {expect} and end at or after its start"
            )
        out.append((first, last))
        expect = last + 1
    if not out or expect != num_timesteps:
        raise MtlError(f"intervals must cover timesteps 0..{num_timesteps - 1}; they end at {expect - 1}")
    return out


def uniform_intervals(num_timesteps: int, k: int) -> list[tuple[int, int]]:
    """``k`` equal-width intervals (widths differ by at most one; the wider ones
    come last), the grouping the authors' training scripts use.

    The reference scripts use ``int(T / k * j)`` as the j-th start; this is the
    same for every T divisible by k.
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise MtlError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}")
    k = _check_k(k, int(num_timesteps))
    starts = [int(num_timesteps * j // k) for j in range(k)] + [int(num_timesteps)]
    return [(starts[j], starts[j + 1] - 1) for j in range(k)]


def cluster_ids(t, intervals: Sequence[tuple[int, int]]):
    """The cluster index of each timestep in ``t`` (a tensor of ints; the
    result has t's shape, dtype int64, on t's device).  Out-of-range t is an error."""
    import torch

    starts = torch.tensor([f for f, _ in intervals[1:]], dtype=torch.long, device=t.device)
    last = intervals[-1][1]
    tl = t.long()
    if tl.numel() and (int(tl.min()) < 0 or int(tl.max()) > last):
        raise MtlError(f"timesteps must lie in 0..{last}, got values in {int(tl.min())}..{int(tl.max())}")
    return torch.bucketize(tl, starts, right=True)


def _to_intervals(starts: list[int], num_timesteps: int) -> list[tuple[int, int]]:
    ends = [s - 1 for s in starts[1:]] + [num_timesteps - 1]
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


# --- the DP ---------------------------------------------------------------------


def _hankel(g: np.ndarray, n: int) -> np.ndarray:
    """Read-only view H[i, s] = g[i + s] (n x n) of a length 2n-1 array."""
    return np.lib.stride_tricks.as_strided(g, shape=(n, n), strides=(g.strides[0], g.strides[0]), writeable=False)


def _monotone_terms(v: np.ndarray):
    """For a monotone curve, C(s, i) = g[s+i] + S[s] + S[i+1] (signs folded in),
    so a cost block is a Hankel view of g: nothing T x T is ever built."""
    n = v.shape[0]
    sgn = 1.0 if v[-1] >= v[0] else -1.0
    S = np.concatenate(([0.0], np.cumsum(v)))
    m = np.arange(2 * n - 1, dtype=np.int64)
    # the 1-wide interval at T-1 may round its center to T; singletons are overridden anyway
    c = np.minimum(_centers_by_sum(n, "snr"), n - 1)
    g = sgn * (v[c] * (2 * c - m - 1) - 2.0 * S[c])
    S *= sgn
    hankel = _hankel(g, n)
    return (lambda a, b: hankel[a:b, :b]), S[:n], S[1:], np.zeros(n), True


def _prefix_terms(v: np.ndarray, cost: str):
    """For any curve or an affinity matrix, C(s, i) = P[c, i+1] - P[c, s], where
    P[c] is the prefix sum of row c of |v - v[c]| (or of -A): gathered per block."""
    n = v.shape[0]
    rows = -v if cost == "affinity" else np.abs(v[None, :] - v[:, None])
    P = np.zeros((n, n + 1))
    np.cumsum(rows, axis=1, out=P[:, 1:])
    flat = P.ravel()
    base = _hankel(np.minimum(_centers_by_sum(n, cost), n - 1) * (n + 1), n)
    diag = -np.diagonal(v).copy() if cost == "affinity" else np.zeros(n)

    def block(a: int, b: int) -> np.ndarray:
        hb = base[a:b, :b]
        return flat[hb + np.arange(a + 1, b + 1)[:, None]] - flat[hb + np.arange(b)[None, :]]

    return block, np.zeros(n), np.zeros(n), diag, cost != "affinity"


def _solve(terms, n: int, k: int, reference: bool = False) -> list[int]:
    """Starts of the optimal k intervals.

    ``terms = (block, col, row, diag, nonneg)`` describe the costs: for s < i,
    ``C(s, i) = block(a, b)[i - a, s] + col[s] + row[i]`` (rows a..b-1 of a
    block); ``C(i, i) = diag[i]``; ``nonneg``: no cost is negative (so a zero
    total needs a zero-cost prefix, which the reference rules exploit).
    ``D[j, i]``, the best cost of j+1 intervals over 0..i, is filled block by
    block, every layer per block, so each block is read while still in cache.  ``reference`` applies the released script's
    search rules (see :func:`interval_clustering`) and returns its reported starts.
    """
    block, col, row, diag, nonneg = terms
    D = np.full((k, n), np.inf)
    arg = np.zeros((k, n), dtype=np.int64)  # start of the last interval of the best split
    buf = np.empty(_BLOCK * n)  # flat, so every work block is C-contiguous
    upper = np.triu(np.full((_BLOCK, _BLOCK), np.inf), k=1)
    shifted = np.empty(n)
    for a in range(0, n, _BLOCK):
        b = min(a + _BLOCK, n)
        B = block(a, b)
        D[0, a:b] = B[:, 0] + col[0] + row[a:b]
        if a == 0:
            D[0, 0] = diag[0]
        for j in range(1, k):
            r0 = 0
            if j == k - 1:
                if b < n:
                    break  # the last layer is only needed at i = T-1
                r0 = b - a - 1
            lo = a + r0
            shifted[0] = np.inf  # s = 0 cannot start interval j >= 1
            np.add(D[j - 1, : b - 1], col[1:b], out=shifted[1:b])
            W = np.add(B[r0:], shifted[:b], out=buf[: (b - lo) * b].reshape(b - lo, b))  # + row[i]: constant per row
            W[:, a:b] += upper[r0 : b - a, : b - a]  # s > i is not an interval
            ii = np.arange(max(lo, 1), b)
            W[ii - lo, ii] = D[j - 1, ii - 1] + diag[ii] - row[ii]  # 1-wide last interval
            if reference:  # the script's rules: a zero total is infeasible, and s = j is never tried
                cols = np.flatnonzero(D[j - 1, : b - 1] == 0.0) + 1 if nonneg else np.arange(b)
                sub = W[:, cols]
                sub[(sub + row[lo:b, None]) == 0.0] = np.inf
                W[:, cols] = sub
                if j < b:
                    W[:, j] = np.inf
            best = W.argmin(axis=1)
            arg[j, lo:b] = best
            D[j, lo:b] = W[np.arange(b - lo), best] + row[lo:b]
    if not np.isfinite(D[k - 1, n - 1]):
        raise MtlError(
            f"the reference convention finds no split of T = {n} into k = {k} "
            "(it needs T > k and treats a zero-cost candidate as infeasible); use convention 'exact'"
        )
    starts = []
    i = n - 1
    for j in range(k - 1, 0, -1):
        s = int(arg[j, i])
        starts.append(s - 1 if reference else s)
        i = s - 1
    starts.append(0)
    return starts[::-1]


def interval_clustering(values, k: int, cost: str = "snr", convention: str = "exact") -> list[tuple[int, int]]:
    """Optimal split of ``0 .. T-1`` into ``k`` contiguous intervals.

    ``values`` is the SNR curve (length T) for the costs ``"snr"``, ``"log_snr"``
    (its log is taken) and ``"timestep"`` (only its length is used), or the T x T
    task-affinity matrix for ``"affinity"``.  Returns ``[(first, last), ...]``,
    inclusive, ordered, covering every timestep.

    ``convention="exact"`` (default) is the true minimum of the objective.
    ``convention="reference"`` reproduces what the authors' released script
    prints, for users who need the published clusters: that script (1) never
    lets the first ``j`` of ``j + 1`` intervals cover only ``j`` timesteps (so
    the first interval has at least two), (2) treats a candidate whose total
    cost is exactly 0 as infeasible, and (3) reports each later interval as
    starting one step early (at the last timestep of the previous interval of
    its own DP solution).  Its last interval ends at a hard-coded 1000; here it
    ends at T-1.  On curves with flat stretches (exact zero costs) prefix-sum
    rounding can make rule (2) fire differently.  The exact convention never
    has a worse objective.

        >>> from dtrsurgeon.mtl import make_schedule
        >>> interval_clustering(make_schedule("linear", 1000).snr, 5)
        [(0, 0), (1, 1), (2, 6), (7, 21), (22, 999)]
        >>> interval_clustering(make_schedule("linear", 1000).snr, 5, convention="reference")
        [(0, 0), (1, 2), (3, 7), (8, 26), (27, 999)]
    """
    if convention not in CONVENTIONS:
        raise MtlError(f"unknown clustering convention {convention!r}; expected one of: {', '.join(CONVENTIONS)}")
    v = _prepare(values, cost)
    n = v.shape[0]
    k = _check_k(k, n)
    if cost != "affinity" and n > 1:
        d = np.diff(v)
        monotone = bool(np.all(d >= 0) or np.all(d <= 0))
    else:
        monotone = cost != "affinity"
    terms = _monotone_terms(v) if monotone else _prefix_terms(v, cost)
    return _to_intervals(_solve(terms, n, k, reference=convention == "reference"), n)
