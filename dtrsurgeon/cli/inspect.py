"""``dtrsurgeon inspect MODEL_PY --entry NAME``: print the plan (a dry run).

    $ dtrsurgeon inspect model_zoo/dit.py --entry DiT_S_2 --spec dit-paper
    routed units of DiT (12), spec dit-paper
    path      class     mode   axis  C    K    mask                     called at
    blocks.0  DiTBlock  block  2     384  307  sliding power a=4 b=0.8  dit.py:243 DiT.forward
    ...

``--json`` prints the plan IR itself (stable, sorted keys).

``--edits`` prints the edit plan instead: which function of which file gets which edit (take the
task, pass it on at a call, route or mask the stream), as ``apply`` writes them (``--form source``,
or ``library`` where the routed code spans files) or as ``transform`` compiles them (``--form
module``); with ``--json``, as JSON::

    $ dtrsurgeon inspect model_zoo/dit.py --entry tiny_dit --edits
    edits (source form): 7 in 4 functions
    function                kind          where / what
    dit.py:150 DiTBlock...  take_task     required
                            route_stream  dtr_keep = dtr_channel_mask(self.dtr_mask, dtr_task, x, 2); ...
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show which modules a spec routes (dry run)", description=__doc__,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("model_py", help="Python file that defines the model")
    p.add_argument("--entry", required=True, help="class or factory function in MODEL_PY")
    p.add_argument("--kwargs", default=None, help="JSON object of arguments for ENTRY")
    p.add_argument("--spec", default=None, help="routing spec (default: the paper's DiT setting, every unit)")
    p.add_argument("--example-inputs", default=None, help="a .pt file holding (args, kwargs) for one forward call")
    p.add_argument("--json", action="store_true", help="print the plan (or with --edits, the edit plan) as JSON")
    p.add_argument("--edits", action="store_true", help="print the edit plan: which function gets which source edit")
    p.add_argument("--form", choices=("source", "library", "module"), default=None,
                   help="with --edits: the edits of `apply` (source, or library where the routed code spans "
                        "files: the default) or of `transform` (module)")
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


def run(args) -> int:
    from dtrsurgeon.api import plan as make_plan
    from dtrsurgeon.cli._model import build_model

    model = build_model(args.model_py, args.entry, args.kwargs)
    spec = args.spec if args.spec is not None else {"version": 1}
    p = make_plan(model, spec, load_example_inputs(args.example_inputs))
    if args.edits:
        return print_edits(model, p, args)
    if args.json:
        print(p.to_json())
        return 0
    print(p.summary(args.spec or "<paper default>"), end="")
    return 0


def print_edits(model, plan, args) -> int:
    """The edit plan of ``--edits``, in the form ``apply`` would write unless ``--form`` says."""
    from dtrsurgeon.emit.lower import edit_plan
    from dtrsurgeon.emit.source import other_files

    form = args.form or ("library" if other_files(model, plan, args.model_py) else "source")
    edits = edit_plan(model, plan, form, args.model_py)
    print(edits.to_json() if args.json else edits.table(), end="\n" if args.json else "")
    return 0
