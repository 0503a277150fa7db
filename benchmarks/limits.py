#!/usr/bin/env python
"""Time and peak memory of what a spec can ask for at the largest sizes it is allowed.

The spec's bounds (README, "The spec") are chosen so the largest allowed request builds in
seconds and a few hundred MiB on one CPU core:

* ``mask_table``: ``num_tasks`` <= 10000 and N x C <= 2**25 cells (``MAX_TABLE_CELLS``), measured
  at both corners (N = 10000 with the widest C, and N = 1000) for each window shift and curve;
* ANT clustering (``dtrsurgeon.mtl.interval_clustering``): ``num_timesteps`` T <= 4096 and
  ``clustering.k`` <= 100, for the SNR cost (both conventions) and the T x T affinity cost.

Each case runs in a fresh process on one thread, so its peak resident memory (``ru_maxrss``) is its
own; "added by the call" subtracts what the process held before the call (imports and inputs).

    python benchmarks/limits.py                     # every case
    python benchmarks/limits.py --only mask         # the mask tables only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cases():
    from dtrsurgeon.masks import MAX_TABLE_CELLS
    from dtrsurgeon.mtl.setup import MAX_TIMESTEPS

    schema = json.loads((ROOT / "dtrsurgeon/spec/routing.schema.json").read_text())
    max_tasks = schema["properties"]["timestep"]["properties"]["num_tasks"]["maximum"]
    mtl = json.loads((ROOT / "dtrsurgeon/mtl/mtl.schema.json").read_text())
    max_k = mtl["properties"]["clustering"]["properties"]["k"]["maximum"]
    max_points = schema["$defs"]["task_weights"]["allOf"][2]["then"]["properties"]["points"]["maxItems"]
    cases = {}
    for n in (max_tasks, 1000):
        c = MAX_TABLE_CELLS // n
        for shift, curve in (("sliding", "power"), ("sliding", "table"), ("random", "power")):
            cases[f"mask N={n} C={c} {shift} {curve}"] = ("mask", n, c, shift, curve, max_points)
    for cost, convention in (("snr", "exact"), ("snr", "reference"), ("affinity", "exact")):
        cases[f"cluster T={MAX_TIMESTEPS} k={max_k} {cost} {convention}"] = ("cluster", MAX_TIMESTEPS, max_k, cost, convention)
    return cases


def _table_spec(n: int, shift: str, curve: str, points: int) -> dict:
    weights = {"curve": "power", "alpha": 4.0}
    if curve == "table":  # the most points allowed, on the power curve
        weights = {"curve": "table", "points": [[i / (points - 1), (i / (points - 1)) ** 4] for i in range(points)]}
    return {"version": 1, "timestep": {"num_tasks": n},
            "routing": {"window_shift": shift, "task_weights": weights, "seed": 0}}


def _run_case(case) -> dict:
    """Measure one case in this process; returns seconds and peak RSS (MiB) before and after."""
    import numpy as np
    import torch

    import dtrsurgeon
    from dtrsurgeon.mtl import interval_clustering, make_schedule

    if case[0] == "mask":
        _, n, c, shift, curve, points = case
        spec = dtrsurgeon.load_spec(_table_spec(n, shift, curve, points))
        run = lambda: dtrsurgeon.mask_table(spec, c)  # noqa: E731
    else:
        _, t, k, cost, convention = case
        if cost == "affinity":
            a = np.random.default_rng(0).random((t, t))
            values = (a + a.T) / 2
        else:
            values = make_schedule("linear", t).snr
        run = lambda: interval_clustering(values, k, cost=cost, convention=convention)  # noqa: E731
    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "base_mib": base}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["mask", "cluster"], help="run only these cases")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, in a child process
    args = p.parse_args()
    cases = _cases()
    if args.case:
        print(json.dumps(_run_case(cases[args.case])))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
          f"python {platform.python_version()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'case':<48} {'time':>9} {'peak RSS':>10} {'added by the call':>18}")
    for name, case in cases.items():
        if args.only and case[0] != args.only:
            continue
        child = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, check=True)
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{name:<48} {r['seconds']:>8.2f}s {r['peak_mib']:>7.0f} MiB {r['peak_mib'] - r['base_mib']:>14.0f} MiB",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
