"""Interval clustering: optimal against brute force, invariants, hand-checked
cases, the authors' reference convention, and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtrsurgeon.mtl import (
    MtlError,
    cluster_ids,
    interval_clustering,
    interval_cost,
    make_schedule,
    partition_cost,
    uniform_intervals,
    validate_intervals,
)

# --- brute force -----------------------------------------------------------------


def all_partitions(n: int, k: int):
    for cuts in itertools.combinations(range(1, n), k - 1):
        starts = (0,) + cuts
        ends = tuple(c - 1 for c in cuts) + (n - 1,)
        yield list(zip(starts, ends))


def brute_force(values, k, cost):
    """Minimum objective, ties broken like the DP: smallest last start, then the
    one before, and so on."""
    best = None
    for part in all_partitions(np.shape(values)[0], k):
        key = (partition_cost(values, part, cost), tuple(f for f, _ in reversed(part)))
        if best is None or key < best[0]:
            best = (key, part)
    return best[1], best[0][0]


int_curves = st.integers(1, 9).flatmap(lambda n: st.lists(st.integers(-50, 50), min_size=n, max_size=n))


@settings(max_examples=150, deadline=None)
@given(curve=int_curves, data=st.data(), cost=st.sampled_from(["snr", "timestep"]), monotone=st.booleans())
def test_dp_equals_brute_force_on_integer_curves(curve, data, cost, monotone):
    # integer values make every sum exact, so the partition itself must match
    values = np.array(sorted(curve) if monotone else curve, dtype=float)
    k = data.draw(st.integers(1, len(values)))
    expected, _ = brute_force(values, k, cost)
    assert interval_clustering(values, k, cost) == expected


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_dp_equals_brute_force_on_integer_affinity(data):
    n = data.draw(st.integers(1, 8))
    A = np.array(data.draw(st.lists(st.integers(-5, 5), min_size=n * n, max_size=n * n)), dtype=float).reshape(n, n)
    k = data.draw(st.integers(1, n))
    expected, _ = brute_force(A, k, "affinity")
    assert interval_clustering(A, k, "affinity") == expected


@settings(max_examples=100, deadline=None)
@given(
    curve=st.integers(2, 9).flatmap(lambda n: st.lists(st.floats(1e-3, 1e4), min_size=n, max_size=n)),
    data=st.data(),
    cost=st.sampled_from(["snr", "log_snr"]),
    monotone=st.booleans(),
)
def test_dp_objective_is_minimal_on_float_curves(curve, data, cost, monotone):
    values = np.array(sorted(curve, reverse=True) if monotone else curve)
    k = data.draw(st.integers(1, len(values)))
    _, best = brute_force(values, k, cost)
    got = partition_cost(values, interval_clustering(values, k, cost), cost)
    assert got <= best + 1e-9 * max(1.0, abs(best))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(21, 400), data=st.data(), name=st.sampled_from(["linear", "cosine", "scaled_linear"]))
def test_partition_invariants(n, data, name):
    k = data.draw(st.integers(1, min(n, 12)))
    parts = interval_clustering(make_schedule(name, n).snr, k)
    assert len(parts) == k
    assert parts[0][0] == 0 and parts[-1][1] == n - 1
    assert all(f <= l for f, l in parts)
    assert all(parts[i][1] + 1 == parts[i + 1][0] for i in range(k - 1))
    assert all(isinstance(x, int) for p in parts for x in p)
    assert validate_intervals(parts, n) == parts


def simple_dp(values, k, cost):
    """A second, plain DP (minimum objective only) over interval costs summed
    directly from the definition, with the centers written out here."""
    v = np.asarray(values, dtype=float)
    n = v.shape[0]
    C = np.full((n, n), np.inf)
    for f in range(n):
        for l in range(f, n):
            if cost == "affinity":
                C[f, l] = -v[(f + l + 1) // 2, f : l + 1].sum()
            else:
                C[f, l] = 0.0 if f == l else np.abs(v[f : l + 1] - v[round((f + l + 1) / 2)]).sum()
    D = C[0].copy()
    for _ in range(1, k):
        D = np.concatenate(([np.inf], (D[:-1, None] + C[1:, :]).min(axis=0)[1:]))
    return D[n - 1]


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(132, 200),
    data=st.data(),
    kind=st.sampled_from(["monotone", "random", "affinity"]),
)
def test_dp_across_several_row_blocks(n, data, kind):
    # T > 128 spans several DP row blocks; k up to T exercises layers beyond a block
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    k = data.draw(st.sampled_from([2, 5, 131, n - 1, n]))
    if kind == "affinity":
        values, cost = rng.integers(-3, 4, size=(n, n)).astype(float), "affinity"
    else:
        values, cost = rng.integers(0, 1000, size=n).astype(float), "snr"
        if kind == "monotone":
            values = np.sort(rng.choice(100_000, size=n, replace=False).astype(float))[::-1]
    parts = interval_clustering(values, k, cost)
    assert len(parts) == k and validate_intervals(parts, n) == parts
    assert partition_cost(values, parts, cost) == simple_dp(values, k, cost)
    if kind == "monotone" and k <= n // 4:
        # the authors' convention counts a zero-cost split as infeasible: keep intervals wide (distinct values)
        ref = interval_clustering(values, k, cost, convention="reference")
        assert len(ref) == k and validate_intervals(ref, n) == ref


# --- hand-checked cases ----------------------------------------------------------

HAND = [
    # values, k, cost, expected clusters, expected objective
    ([0, 0, 5, 5, 9], 3, "snr", [(0, 1), (2, 3), (4, 4)], 0.0),
    ([4, 3, 2, 1], 1, "snr", [(0, 3)], 4.0),  # center round(4/2) = 2: |4-2|+|3-2|+0+|1-2|
    ([1, 2, 3], 1, "snr", [(0, 2)], 3.0),  # center round(3/2) = 2 (half to even): 2+1+0
    ([1, 2, 3, 4, 5], 1, "snr", [(0, 4)], 6.0),  # center round(5/2) = 2: 2+1+0+1+2
    ([9, 9, 9], 3, "snr", [(0, 0), (1, 1), (2, 2)], 0.0),
    ([0, 0, 0, 0], 2, "snr", [(0, 0), (1, 3)], 0.0),  # tie: the last cluster starts earliest
    # timestep cost, 4 optimal splits of cost 3; the tie-break takes the earliest last start (3),
    # then the earliest start before it: [1,2] has center 2 (cost 1), [3,5] center round(4.5) = 4 (cost 2)
    ([0] * 6, 3, "timestep", [(0, 0), (1, 2), (3, 5)], 3.0),
    ([100, 90, 1, 0], 2, "snr", [(0, 1), (2, 3)], 11.0),  # centers 1 and 3: |100-90| + |1-0|
    ([1, 1, 1, 1], 2, "log_snr", [(0, 0), (1, 3)], 0.0),
]


@pytest.mark.parametrize("values, k, cost, expected, objective", HAND)
def test_hand_checked(values, k, cost, expected, objective):
    got = interval_clustering(values, k, cost)
    assert got == expected
    assert partition_cost(values, got, cost) == pytest.approx(objective)


def test_affinity_hand_checked():
    # two blocks of mutually similar tasks; the center of [0, 2] is int(3/2) = 1
    A = np.array(
        [
            [1.0, 0.9, 0.8, 0.0, 0.0],
            [0.9, 1.0, 0.9, 0.1, 0.0],
            [0.8, 0.9, 1.0, 0.1, 0.0],
            [0.0, 0.1, 0.1, 1.0, 0.9],
            [0.0, 0.0, 0.0, 0.9, 1.0],
        ]
    )
    assert interval_clustering(A, 2, "affinity") == [(0, 2), (3, 4)]
    assert interval_cost(A, 0, 2, "affinity") == pytest.approx(-2.8)
    assert interval_cost(A, 3, 4, "affinity") == pytest.approx(-1.9)  # center int(8/2) = 4
    assert interval_cost(A, 2, 2, "affinity") == -1.0


def test_one_wide_interval_costs_zero_whatever_the_rounding():
    # round((2f+1)/2) is f+1 for odd f; the authors' code (and ours) gives a singleton cost 0,
    # including the last timestep, where f+1 would be outside the array
    v = np.array([5.0, 1.0, 7.0, 3.0])
    assert [interval_cost(v, f, f, "snr") for f in range(4)] == [0.0] * 4


def test_published_linear_schedule_clusters():
    snr = make_schedule("linear", 1000).snr
    assert interval_clustering(snr, 5) == [(0, 0), (1, 1), (2, 6), (7, 21), (22, 999)]


# --- the authors' reference convention -------------------------------------------------


def script(values, k, cost):
    """A plain re-implementation of the released script: its search, its output."""
    v = np.asarray(values, dtype=float)
    if cost == "log_snr":
        v = np.log(v)
    n = v.shape[0]
    D = np.zeros((n, k))
    S = np.zeros((n, k), dtype=int)

    def c(l, r):
        if l == r:
            return 0.0
        return np.abs(v[l : r + 1] - v[round((l + r + 1) / 2)]).sum()

    for j in range(k):
        for i in reversed(range(n)):
            if j == 0:
                D[i, j] = c(0, i)
            elif i >= j:
                items = np.zeros(i)
                for L in range(j, i):
                    items[L] = D[L, j - 1] + c(L + 1, i)
                items[items == 0] = np.inf
                D[i, j], S[i, j] = items.min(), items.argmin()
    bounds, b = [], 0
    for j in reversed(range(k)):
        b = S[-1, k - 1] if j == k - 1 else S[int(b), j]
        bounds.append(int(b))
    starts = bounds[::-1]
    return [(starts[m], starts[m + 1] - 1 if m + 1 < k else n - 1) for m in range(k)]


@settings(max_examples=80, deadline=None)
@given(curve=st.integers(3, 14).flatmap(lambda n: st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True)), data=st.data())
def test_reference_convention_reproduces_the_script(curve, data):
    values = np.array(sorted(curve, reverse=True), dtype=float)
    k = data.draw(st.integers(1, len(values) - 1))
    assert interval_clustering(values, k, "snr", convention="reference") == script(values, k, "snr")


def test_reference_convention_on_real_schedules():
    for name in ("linear", "cosine"):
        snr = make_schedule(name, 120).snr
        for k in (2, 5):
            ref = interval_clustering(snr, k, convention="reference")
            assert ref == script(snr, k, "snr")
            assert partition_cost(snr, interval_clustering(snr, k), "snr") <= partition_cost(snr, ref, "snr")


@pytest.mark.parametrize("k", [129, 139])
def test_reference_convention_with_more_clusters_than_a_dp_block(k):
    values = np.arange(140, 0, -1, dtype=float) ** 2
    ref = interval_clustering(values, k, convention="reference")
    assert len(ref) == k and validate_intervals(ref, 140) == ref
    assert partition_cost(values, interval_clustering(values, k), "snr") <= partition_cost(values, ref, "snr")


def test_reference_convention_needs_more_timesteps_than_clusters():
    with pytest.raises(MtlError, match="use convention 'exact'"):
        interval_clustering([3.0, 2.0, 1.0], 3, convention="reference")


# --- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, k, expected",
    [(10, 2, [(0, 4), (5, 9)]), (10, 3, [(0, 2), (3, 5), (6, 9)]), (5, 5, [(i, i) for i in range(5)]), (7, 1, [(0, 6)])],
)
def test_uniform_intervals(n, k, expected):
    assert uniform_intervals(n, k) == expected


def test_uniform_matches_the_scripts_grouping_when_k_divides_t():
    T, k = 1000, 5
    starts = [int(T / k * j) for j in range(k)]
    assert [f for f, _ in uniform_intervals(T, k)] == starts


def test_cluster_ids():
    import torch

    parts = [(0, 2), (3, 3), (4, 9)]
    t = torch.tensor([9, 0, 3, 2, 4, 5])
    assert cluster_ids(t, parts).tolist() == [2, 0, 1, 0, 2, 2]
    with pytest.raises(MtlError, match="0..9"):
        cluster_ids(torch.tensor([10]), parts)


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, k, cost, match",
    [
        ([1.0, 2.0], 3, "snr", "k = 3 clusters cannot be formed from T = 2"),
        ([1.0, 2.0], 0, "snr", "must be >= 1"),
        ([1.0, 2.0], -1, "snr", "must be >= 1"),
        ([1.0, 2.0], 1.5, "snr", "must be an integer"),
        ([1.0, 2.0], True, "snr", "must be an integer"),
        ([1.0, 2.0], 1, "sigma", "unknown clustering cost 'sigma'"),
        ([1.0, float("nan")], 1, "snr", "non-finite value at t=1"),
        ([], 1, "snr", "non-empty 1-D"),
        ([[1.0]], 1, "snr", "non-empty 1-D"),
        ([1.0, 0.0], 1, "log_snr", "needs SNR > 0"),
        (np.ones((3, 4)), 2, "affinity", "must be square"),
        (np.ones(3), 2, "affinity", "must be square"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), 1, "affinity", r"non-finite entry at \[0, 1\]"),
    ],
)
def test_bad_input(values, k, cost, match):
    with pytest.raises(MtlError, match=match) as info:
        interval_clustering(values, k, cost)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_convention():
    with pytest.raises(MtlError, match="unknown clustering convention"):
        interval_clustering([1.0, 2.0], 1, convention="paper")


@pytest.mark.parametrize(
    "parts, match",
    [([(0, 1), (3, 4)], "must start at 2"), ([(0, 1)], "end at 1"), ([(1, 4)], "must start at 0"), ([(0, 2), (3, 2)], "must start at 3")],
)
def test_validate_intervals_rejects(parts, match):
    with pytest.raises(MtlError, match=match):
        validate_intervals(parts, 5)
