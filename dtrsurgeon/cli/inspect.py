"""``dtrsurgeon inspect MODEL_PY --entry NAME``: print the plan (a dry run).

    $ dtrsurgeon inspect model_zoo/dit.py --entry DiT_S_2 --spec specs/dit-paper.json
    routed units of DiT (12), spec specs/dit-paper.json
    path      class     mode   axis  C    K    mask                     called at
    blocks.0  DiTBlock  block  2     384  307  sliding power a=4 b=0.8  dit.py:243 DiT.forward
    ...

``--json`` prints the plan IR itself (stable, sorted keys).
"""

from __future__ import annotations

import os
from collections import Counter


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show which modules a spec routes (dry run)", description=__doc__,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("model_py", help="Python file that defines the model")
    p.add_argument("--entry", required=True, help="class or factory function in MODEL_PY")
    p.add_argument("--kwargs", default=None, help="JSON object of arguments for ENTRY")
    p.add_argument("--spec", default=None, help="routing spec (default: the paper's DiT setting, every unit)")
    p.add_argument("--example-inputs", default=None, help="a .pt file holding (args, kwargs) for one forward call")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=run)


def load_example_inputs(path: str | None):
    if path is None:
        return None
    import torch

    from dtrsurgeon.cli._model import ModelFileError

    try:
        value = torch.load(path, weights_only=True)
    except Exception as e:  # unreadable file: one line, exit 2
        raise ModelFileError(f"--example-inputs {path}: cannot load: {e}") from None
    return value


def _mask_summary(unit) -> str:
    m = unit.mask
    tw = m.task_weights
    curve = f"power a={tw.alpha:g}" if tw.curve == "power" else tw.curve
    return f"{m.window_shift} {curve} b={m.channel_ratio:g}"


def _stream_summary(arg, axis, channels, active, out_index) -> str:
    return f"{arg} (axis {axis}, C={channels}, K={active}, returned at [{out_index}])"


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from dtrsurgeon.api import plan as make_plan
    from dtrsurgeon.cli._model import build_model

    model = build_model(args.model_py, args.entry, args.kwargs)
    spec = args.spec if args.spec is not None else {"version": 1}
    p = make_plan(model, spec, load_example_inputs(args.example_inputs))
    if args.json:
        print(p.to_json())
        return 0
    console = Console(width=200)
    title = f"routed units of {p.model.rsplit('.', 1)[1]} ({len(p.units)}), spec {args.spec or '<paper default>'}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in ("path", "class", "mode", "axis", "C", "K", "mask", "masked at", "called at"):
        table.add_column(col, no_wrap=True)
    for u in p.units:
        call = u.call_path[-1]
        mode = u.mode + (" *" if u.mode_note else "")
        table.add_row(u.path, u.cls.rsplit(".", 1)[1], mode, str(u.channel_axis), str(u.channels), str(u.active),
                      _mask_summary(u), u.masked_at, f"{os.path.basename(call.file)}:{call.line} {call.function}")
    console.print(table)
    widths = Counter(u.channels for u in p.units)
    console.print("widths: " + ", ".join(f"C={c} x{n}" for c, n in sorted(widths.items())))
    left_out = [(path, c) for path, c in p.unmatched if path not in dict(p.skipped)]  # skipped ones: below
    if left_out:
        console.print("not matched by targets: " + ", ".join(f"{path} (C={c})" for path, c in left_out))
    for u in p.units:
        if u.out_index is not None or u.streams:
            console.print(f"streams of {u.path}: " + ", ".join(_stream_summary(*s) for s in (
                (u.stream_arg, u.channel_axis, u.channels, u.active, u.out_index),
                *((s.arg, s.channel_axis, s.channels, s.active, s.out_index) for s in u.streams))))
        if u.fold is not None:
            console.print(f"folded batch in {u.path}: several rows per sample ({u.fold}); each row takes its sample's task")
    for u in p.units:
        if u.mode_note:
            console.print(f"* {u.path}: {u.mode_note}")
    for path, why in p.skipped:
        console.print(f"not routed: {path or '<root>'}: {why}")
    return 0
