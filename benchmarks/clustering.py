#!/usr/bin/env python
"""Interval clustering: our prefix-sum DP against the authors' algorithm as released.

The baseline is a plain re-implementation of the ANT reference script's SNR-based
clustering (its rules, not its code): a Python triple loop over (clusters,
end timestep, split point) that recomputes each interval cost
``sum |SNR(t) - SNR(center)|`` with numpy inside the innermost loop, treats a
zero total as infeasible, lets the split point start at the layer index, and
reports every later interval one step early.  It runs once (it takes seconds).

Ours, :func:`dtrsurgeon.mtl.interval_clustering`, runs ``--repeats`` times
(median reported, plus the first call) in both conventions:

* ``reference``: the same search and the same printed output as the script --
  the boundaries must agree exactly;
* ``exact``: the true optimum of the objective -- its objective must never be
  worse than the script's.

    python benchmarks/clustering.py                      # T=1000, k=5, linear schedule
    python benchmarks/clustering.py --schedule cosine --k 8

Exit status 1 if the reference boundaries disagree or the exact objective is worse.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from dtrsurgeon.mtl import interval_clustering, make_schedule, partition_cost  # noqa: E402


def script_clustering(snr: np.ndarray, k: int):
    """The reference script's algorithm.  Returns (printed intervals, its DP's own
    intervals, its DP objective); the last interval ends at T-1 (the script: 1000)."""
    n = snr.shape[0]
    D = np.zeros((n, k))
    S = np.zeros((n, k), dtype=np.int64)

    def cost(left, right):
        if left == right:
            return 0.0
        center = round((left + right + 1) / 2)
        return np.abs(snr[left : right + 1] - snr[center]).sum()

    for j in range(k):
        for i in reversed(range(n)):
            if j == 0:
                D[i, j] = cost(0, i)
            elif i >= j:
                items = np.zeros(i)
                for L in range(j, i):
                    items[L] = D[L, j - 1] + cost(L + 1, i)
                items[items == 0] = np.inf
                D[i, j] = items.min()
                S[i, j] = items.argmin()
    ends = []  # last timestep of each earlier interval in the script's DP solution
    b = n - 1
    for j in range(k - 1, 0, -1):
        b = int(S[b, j])
        ends.append(b)
    ends = ends[::-1]
    printed_starts = [0] + ends
    dp_starts = [0] + [e + 1 for e in ends]

    def intervals(starts):
        return [(starts[m], starts[m + 1] - 1 if m + 1 < k else n - 1) for m in range(k)]

    return intervals(printed_starts), intervals(dp_starts), float(D[n - 1, k - 1])


def time_ours(snr, k, convention, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = interval_clustering(snr, k, "snr", convention)
        times.append(time.perf_counter() - t0)
    return out, times[0], statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--schedule", default="linear")
    ap.add_argument("--repeats", type=int, default=50, help="runs of our DP per convention (median reported)")
    args = ap.parse_args()

    snr = make_schedule(args.schedule, args.timesteps).snr
    print(f"interval clustering, cost snr, {args.schedule} schedule, T={args.timesteps}, k={args.k}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
        f"python {platform.python_version()}, numpy {np.__version__}; load average {os.getloadavg()[0]:.2f} at start"
    )

    t0 = time.perf_counter()
    printed, script_dp, script_obj = script_clustering(snr, args.k)
    t_script = time.perf_counter() - t0
    print(f"authors' algorithm (Python triple loop, one run): {t_script:.3f} s")

    ref, ref_first, ref_med = time_ours(snr, args.k, "reference", args.repeats)
    exact, ex_first, ex_med = time_ours(snr, args.k, "exact", args.repeats)
    print(f"ours, reference convention: median {ref_med * 1e3:.3f} ms over {args.repeats} runs (first run {ref_first * 1e3:.3f} ms)")
    print(f"ours, exact convention:     median {ex_med * 1e3:.3f} ms over {args.repeats} runs (first run {ex_first * 1e3:.3f} ms)")
    print(f"speed-up, reference convention: {t_script / ref_med:,.0f}x (first run {t_script / ref_first:,.0f}x)")
    print(f"speed-up, exact convention:     {t_script / ex_med:,.0f}x (first run {t_script / ex_first:,.0f}x)")

    agree = ref == printed
    print(f"script prints:           {printed}")
    print(f"ours, reference:         {ref}  -> boundaries agree: {'yes' if agree else 'NO'}")
    obj_printed = partition_cost(snr, printed, "snr")
    obj_exact = partition_cost(snr, exact, "snr")
    print(f"script's DP solution:    {script_dp}  objective {script_obj:.6f}")
    print(f"script's printed output: objective {obj_printed:.6f}")
    print(f"ours, exact:             {exact}  objective {obj_exact:.6f}")
    not_worse = obj_exact <= min(script_obj, obj_printed) * (1 + 1e-12)
    print(f"exact objective never worse: {'yes' if not_worse else 'NO'} ({obj_exact / script_obj:.4f} of the script's DP objective)")
    return 0 if agree and not_worse else 1


if __name__ == "__main__":
    sys.exit(main())
