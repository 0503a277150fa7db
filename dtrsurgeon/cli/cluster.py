"""``dtrsurgeon cluster``: split diffusion timesteps into ANT interval clusters.

    $ dtrsurgeon cluster --schedule cosine --k 5
    (a table: each cluster's timesteps, width, SNR and log-SNR at its ends, cost)
    $ dtrsurgeon cluster --schedule linear --k 5 --json
    {"clusters": [...], ..., "intervals": [[0, 0], [1, 1], [2, 6], [7, 21], [22, 999]], ...}
    $ dtrsurgeon cluster --affinity affinity.npy --k 5 --plot clusters.png
    $ dtrsurgeon cluster --schedule sigmoid
    dtrsurgeon cluster: error: unknown noise schedule 'sigmoid'; expected one of: linear, cosine, scaled_linear ...
    (exit 2, nothing written)

The clustering is exact (``--convention reference`` reproduces the intervals
the authors' released script prints).  Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from dtrsurgeon.mtl.errors import MtlError

_COSTS = ("snr", "log_snr", "timestep", "affinity", "uniform")


def register(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="group diffusion timesteps into k interval clusters (ANT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--schedule", metavar="NAME", help="noise schedule: linear (default), cosine, scaled_linear")
    p.add_argument("--alphas-cumprod", metavar="FILE.npy", help="use this alphas_cumprod array instead of a named schedule")
    p.add_argument("--timesteps", type=int, metavar="T", help="number of timesteps T (default 1000, or the size of the given file)")
    p.add_argument("--k", type=int, default=5, help="number of clusters (default 5)")
    p.add_argument(
        "--cost",
        metavar="COST",
        help=f"interval cost: {', '.join(_COSTS)} (default snr; affinity when --affinity is given)",
    )
    p.add_argument("--convention", default="exact", metavar="C", help="exact (default, the optimum) or reference (the authors' script's output)")
    p.add_argument("--affinity", metavar="FILE.npy", help="T x T task-affinity matrix for --cost affinity")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="OUT.png", help="also write a plot of log-SNR over t with the clusters shaded")
    p.add_argument("--force", action="store_true", help="with --plot: replace a read-only image")
    p.set_defaults(run=run)


def _schedule(args, default_timesteps: int):
    from dtrsurgeon.mtl.schedules import load_alphas_cumprod, make_schedule
    from dtrsurgeon.mtl.setup import MAX_CLUSTERS, MAX_TIMESTEPS

    if args.alphas_cumprod and args.schedule:
        raise MtlError("give --schedule or --alphas-cumprod, not both")
    if args.timesteps is not None and not 1 <= args.timesteps <= MAX_TIMESTEPS:
        raise MtlError(f"--timesteps must be between 1 and {MAX_TIMESTEPS}, got {args.timesteps}")
    if not 1 <= args.k <= MAX_CLUSTERS:
        raise MtlError(f"--k must be between 1 and {MAX_CLUSTERS}, got {args.k}")
    if args.alphas_cumprod:
        sched = load_alphas_cumprod(args.alphas_cumprod)
        if sched.num_timesteps > MAX_TIMESTEPS:
            raise MtlError(f"{args.alphas_cumprod} holds {sched.num_timesteps} values; ANT clusters at most {MAX_TIMESTEPS} timesteps")
        if args.timesteps is not None and args.timesteps != sched.num_timesteps:
            raise MtlError(f"--timesteps {args.timesteps} disagrees with {args.alphas_cumprod}, which holds {sched.num_timesteps} values")
        return sched
    return make_schedule(args.schedule or "linear", args.timesteps or default_timesteps)


def _check_plot_path(args) -> None:
    """Before any work or output: a bad --plot target must not come after a printed table."""
    from dtrsurgeon.cli._output import check_output, image_formats

    check_output(args.plot, flag="--plot", formats=image_formats(), force=args.force, replace_existing=True,
                 inputs=[("affinity matrix", args.affinity), ("alphas_cumprod", args.alphas_cumprod)])


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def compute(args):
    """``(result, schedule)``: everything ``cluster`` prints, as a
    JSON-serialisable dict, and the schedule behind it.  No output, no files."""
    from dtrsurgeon.mtl.affinity import load_affinity
    from dtrsurgeon.mtl.clustering import (
        CONVENTIONS,
        interval_clustering,
        interval_cost,
        uniform_intervals,
    )

    cost = args.cost or ("affinity" if args.affinity else "snr")
    if cost not in _COSTS:
        raise MtlError(f"unknown --cost {cost!r}; expected one of: {', '.join(_COSTS)}")
    if args.convention not in CONVENTIONS:
        raise MtlError(f"unknown --convention {args.convention!r}; expected one of: {', '.join(CONVENTIONS)}")
    if cost == "affinity" and not args.affinity:
        raise MtlError("--cost affinity needs --affinity FILE.npy (a T x T matrix from dtrsurgeon.mtl.estimate_task_affinity)")
    if args.affinity and cost != "affinity":
        raise MtlError(f"--affinity only applies to --cost affinity, not {cost!r}")
    affinity = load_affinity(args.affinity) if args.affinity else None
    sched = _schedule(args, 1000 if affinity is None else affinity.shape[0])
    T = sched.num_timesteps
    if affinity is not None:
        affinity = load_affinity(args.affinity, T)
    if cost == "uniform":
        intervals = uniform_intervals(T, args.k)
    else:
        intervals = interval_clustering(sched.snr if affinity is None else affinity, args.k, cost, args.convention)
    snr, log_snr = sched.snr, sched.log_snr
    clusters = []
    for f, l in intervals:
        c = None
        if cost != "uniform":
            c = interval_cost(sched.snr if affinity is None else affinity, f, l, cost)
        clusters.append(
            {
                "first": f,
                "last": l,
                "width": l - f + 1,
                "snr_first": _finite(snr[f]),
                "snr_last": _finite(snr[l]),
                "log_snr_first": _finite(log_snr[f]),
                "log_snr_last": _finite(log_snr[l]),
                "cost": c,
            }
        )
    objective = None if cost == "uniform" else float(sum(c["cost"] for c in clusters))
    result = {
        "schedule": sched.name,
        "num_timesteps": T,
        "k": len(intervals),
        "cost": cost,
        "convention": args.convention if cost != "uniform" else None,
        "objective": objective,
        "intervals": [[f, l] for f, l in intervals],
        "clusters": clusters,
    }
    return result, sched


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    conv = f", {result['convention']}" if result["convention"] else ""
    title = f"{result['k']} clusters of T={result['num_timesteps']} timesteps ({result['schedule']} schedule, cost {result['cost']}{conv})"
    table = Table(title=title, caption=None if result["objective"] is None else f"objective {result['objective']:.6g}")
    for col in ("cluster", "t", "width", "SNR (first → last)", "log SNR", "cost"):
        table.add_column(col, justify="right")
    for n, c in enumerate(result["clusters"]):
        table.add_row(
            str(n),
            f"{c['first']}–{c['last']}",
            str(c["width"]),
            f"{_fmt(c['snr_first'])} → {_fmt(c['snr_last'])}",
            f"{_fmt(c['log_snr_first'])} → {_fmt(c['log_snr_last'])}",
            _fmt(c["cost"]),
        )
    Console(highlight=False).print(table)


def _plot(result: dict, log_snr: np.ndarray, path: str) -> None:
    from matplotlib.figure import Figure

    from dtrsurgeon.cli._output import write_output

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    t = np.arange(log_snr.shape[0])
    finite = np.isfinite(log_snr)
    ax.plot(t[finite], log_snr[finite], color="black", lw=1.5, label="log SNR(t)")
    for n, (f, l) in enumerate(result["intervals"]):
        ax.axvspan(f - 0.5, l + 0.5, color=f"C{n % 10}", alpha=0.25, lw=0)
        if n:
            ax.axvline(f - 0.5, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("timestep t (0 = least noise)")
    ax.set_ylabel("log SNR")
    ax.set_xlim(-0.5, log_snr.shape[0] - 0.5)
    ax.set_title(f"{result['k']} clusters, {result['schedule']} schedule, cost {result['cost']}")
    ax.legend(loc="upper right")
    write_output(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:].lower()), flag="--plot")


def run(args) -> int:
    if args.plot:
        _check_plot_path(args)
    result, sched = compute(args)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        _table(result)
    if args.plot:
        _plot(result, sched.log_snr, os.fspath(args.plot))
    return 0
