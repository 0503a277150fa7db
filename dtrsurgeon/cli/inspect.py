"""``dtrsurgeon inspect MODEL_PY --entry NAME``: print the plan (a dry run).

    $ dtrsurgeon inspect model_zoo/dit.py --entry DiT_S_2 --spec dit-paper
    routed units of DiT (12), spec dit-paper
    path      class     mode   axis  C    K    mask                     called at
    blocks.0  DiTBlock  block  2     384  307  sliding power a=4 b=0.8  dit.py:243 DiT.forward
    ...

``--json`` prints the plan IR itself (stable, sorted keys).
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


def run(args) -> int:
    from dtrsurgeon.api import plan as make_plan
    from dtrsurgeon.cli._model import build_model

    model = build_model(args.model_py, args.entry, args.kwargs)
    spec = args.spec if args.spec is not None else {"version": 1}
    p = make_plan(model, spec, load_example_inputs(args.example_inputs))
    if args.json:
        print(p.to_json())
        return 0
    print(p.summary(args.spec or "<paper default>"), end="")
    return 0
