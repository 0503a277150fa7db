"""``dtrsurgeon plot SPEC --channels C [C ...] -o masks.png``: draw mask tables.

One panel per channel width: tasks (timesteps) down, channels across, active
channels dark.  The sliding window's drift and its speed-up at high noise
(the task-weight curve) are visible at a glance.
"""

from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a spec's mask tables (tasks x channels)", description=__doc__)
    p.add_argument("spec", help="routing spec")
    p.add_argument("--channels", type=int, nargs="+", required=True, help="channel width(s) C, one panel each")
    p.add_argument("--match", default=None, help="module path whose overrides apply (default: the global routing)")
    p.add_argument("-o", "--output", default="masks.png", help="PNG file to write (default masks.png)")
    p.set_defaults(run=run)


def run(args) -> int:
    from dtrsurgeon.cli._model import ModelFileError
    from dtrsurgeon.masks import mask_table
    from dtrsurgeon.spec import load_spec

    spec = load_spec(args.spec)
    if any(c < 1 for c in args.channels):
        raise ModelFileError(f"--channels: expected positive widths, got {args.channels}")
    tables = [(c, mask_table(spec, c, args.match)) for c in sorted(set(args.channels))]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.2), squeeze=False)
    for ax, (c, table) in zip(axes[0], tables):
        k = int(table[0].sum())
        ax.imshow(table.numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set_title(f"C={c}, K={k}")
        ax.set_xlabel("channel")
        ax.set_ylabel("task (timestep index)")
    params = spec.routing if args.match is None else spec.mask_params_for(args.match)
    fig.suptitle(f"{os.path.basename(args.spec)}: {params.window_shift}, {params.task_weights.curve}, "
                 f"beta={params.channel_ratio:g}, N={params.num_tasks}")
    fig.tight_layout()
    tmp = args.output + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return 0
