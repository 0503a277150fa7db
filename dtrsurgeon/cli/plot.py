"""``dtrsurgeon plot SPEC (--channels C [C ...] | --model MODEL_PY --entry NAME) -o masks.png``.

Draws mask tables, one panel per distinct channel width (with ``--model``:
the widths of the units the spec routes in that model, e.g. one per U-Net
level): tasks (timesteps) down, channels across, active channels dark.  The
window's drift and its speed-up at high noise (the task-weight curve) are
visible at a glance.  The output's suffix names its format (``.png``, ``.pdf``,
``.svg``, ...); an existing output is replaced, a read-only one only with ``--force``.
"""

from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a spec's mask tables (tasks x channels)", description=__doc__)
    p.add_argument("spec", help="routing spec")
    p.add_argument("--channels", type=int, nargs="+", help="channel width(s) C, one panel each")
    p.add_argument("--model", default=None, help="take the widths from the units routed in this model file")
    p.add_argument("--entry", default=None, help="with --model: class or factory in MODEL_PY")
    p.add_argument("--kwargs", default=None, help="with --model: JSON object of arguments for ENTRY")
    p.add_argument("--match", default=None, help="module path whose overrides apply (default: the global routing)")
    p.add_argument("-o", "--output", default="masks.png",
                   help="image to write; its suffix names the format: .png, .pdf, .svg, ... (default masks.png)")
    p.add_argument("--force", action="store_true", help="replace a read-only output file")
    p.set_defaults(run=run)


def run(args) -> int:
    from dtrsurgeon.cli._model import ModelFileError
    from dtrsurgeon.cli._output import check_output, image_formats, write_output
    from dtrsurgeon.masks import mask_table
    from dtrsurgeon.spec import load_spec

    out = check_output(args.output, formats=image_formats(), inputs=[("spec", args.spec), ("model file", args.model)],
                       force=args.force, replace_existing=True)
    spec = load_spec(args.spec)
    if (args.channels is None) == (args.model is None):
        raise ModelFileError("give either --channels C [C ...] or --model MODEL_PY --entry NAME")
    if args.model is not None:
        from dtrsurgeon.api import plan as make_plan
        from dtrsurgeon.cli._model import build_model

        if args.entry is None:
            raise ModelFileError("--model needs --entry NAME")
        units = make_plan(build_model(args.model, args.entry, args.kwargs), spec).units
        widths = {}
        for u in units:
            widths.setdefault(u.channels, u.path)
        panels = [(c, path, f"C={c} ({sum(u.channels == c for u in units)} units)") for c, path in sorted(widths.items())]
    else:
        if any(c < 1 for c in args.channels):
            raise ModelFileError(f"--channels: expected positive widths, got {args.channels}")
        panels = [(c, args.match, f"C={c}") for c in sorted(set(args.channels))]
    tables = [(c, title, mask_table(spec, c, path)) for c, path, title in panels]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.2), squeeze=False)
    for ax, (_, title, table) in zip(axes[0], tables):
        k = int(table[0].sum())
        ax.imshow(table.numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set_title(f"{title}, K={k}")
        ax.set_xlabel("channel")
        ax.set_ylabel("task (timestep index)")
    params = spec.routing if args.match is None else spec.mask_params_for(args.match)
    fig.suptitle(f"{os.path.basename(args.spec)}: {params.window_shift}, {params.task_weights.curve}, "
                 f"beta={params.channel_ratio:g}, N={params.num_tasks}")
    fig.tight_layout()
    try:
        write_output(out, lambda tmp: fig.savefig(tmp, dpi=110, format=out.suffix[1:].lower()))
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    return 0
