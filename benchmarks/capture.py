#!/usr/bin/env python
"""What dtrsurgeon's analysis costs against torch.export of the same model, on CPU.

``plan()`` captures the model (``torch.export`` plus a forward that records which source lines call each
module), then analyses the graph; ``transform()`` adds the rewrite.  This times, on ``model_zoo``'s DiT
(``--model``, default XL/2 at 256 px latents), ``torch.export.export(model, ..., strict=False)`` alone,
``dtrsurgeon.plan`` and ``dtrsurgeon.transform`` with ``specs/dit-paper.json`` (which copies the model
first; ``inplace=True`` does not), each the best of
``--repeats`` runs in this process, and prints each against export.  The target (issue 14) is plan() at
most 2x export.

    python benchmarks/capture.py --out benchmarks/results/capture-cpu.txt
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch


def best_of(fn, repeats: int, setup=lambda: None) -> float:
    """Fastest of ``repeats`` calls of ``fn(setup())``; the setup is not timed."""
    times = []
    for _ in range(repeats):
        arg = setup()
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="XL/2")
    p.add_argument("--spec", default=str(ROOT / "specs" / "dit-paper.json"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import dtrsurgeon
    from model_zoo.dit import dit

    torch.manual_seed(0)
    model = dit(args.model, input_size=32, in_channels=4, num_classes=1000).eval()
    g = torch.Generator().manual_seed(0)
    call_args = (torch.randn(2, 4, 32, 32, generator=g), torch.tensor([10, 900]), torch.tensor([1, 2]))
    call_kwargs = {}
    example = (call_args, call_kwargs)  # plan and transform get the same inputs as export

    def export():
        with torch.no_grad():
            torch.export.export(model, tuple(call_args), dict(call_kwargs), strict=False)

    def forward():
        with torch.no_grad():
            model(*call_args, **call_kwargs)

    timed = {
        "torch.export.export (strict=False)": best_of(lambda _: export(), args.repeats),
        "one eager forward": best_of(lambda _: forward(), args.repeats),
        "dtrsurgeon.plan": best_of(lambda _: dtrsurgeon.plan(model, args.spec, example), args.repeats),
        "dtrsurgeon.transform": best_of(lambda _: dtrsurgeon.transform(model, args.spec, example), args.repeats),
        "dtrsurgeon.transform(inplace=True)": best_of(lambda m: dtrsurgeon.transform(m, args.spec, example, inplace=True),
                                                      args.repeats, setup=lambda: copy.deepcopy(model)),
    }
    ref = timed["torch.export.export (strict=False)"]
    lines = [f"DiT-{args.model} (model_zoo), CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, "
             f"best of {args.repeats}; inputs x [2, 4, 32, 32], t [2], y [2]"]
    lines += [f"{name:38s} {s:7.2f} s  {s / ref:5.2f}x export" for name, s in timed.items()]
    lines.append(f"target: plan() <= 2x export: {'met' if timed['dtrsurgeon.plan'] <= 2 * ref else 'missed'}")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
