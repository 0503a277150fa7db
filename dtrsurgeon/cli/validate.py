"""``dtrsurgeon validate SPEC``: check a spec; print the resolved document.

    $ dtrsurgeon validate dit-paper
    dit-paper: ok (1 override, mode block, beta 0.8)
    $ dtrsurgeon validate bad.json
    dtrsurgeon validate: error: spec /routing/channel_ratio: expected a number <= 1, got 1.5
    (exit 2)
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("validate", help="validate a routing spec (exit 2 on error)", description=__doc__)
    p.add_argument("spec", help="path to a spec JSON file")
    p.add_argument("--json", action="store_true", help="print the resolved spec (all defaults filled in)")
    p.set_defaults(run=run)


def run(args) -> int:
    from dtrsurgeon.spec import load_spec

    spec = load_spec(args.spec)
    if args.json:
        print(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    else:
        n = len(spec.overrides)
        print(
            f"{args.spec}: ok ({n} override{'s' if n != 1 else ''}, mode {spec.mode}, "
            f"beta {spec.routing.channel_ratio:g}, {spec.routing.window_shift}, N {spec.timestep.num_tasks})"
        )
    return 0
