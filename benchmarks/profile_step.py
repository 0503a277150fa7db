#!/usr/bin/env python
"""Where a routed step spends its extra GPU time: kernel totals, vanilla against routed.

Runs ``--steps`` eager (or ``--compile``) bf16 train steps (``--kind train``) or sampling forwards
(``--kind forward``: ``eval()``, ``no_grad``) of ``model_zoo`` DiT (vanilla, and routed by
``dtrsurgeon.transform``) under ``torch.profiler`` and prints, per kernel name, the summed device time of
each and the difference, largest first.  Use it when ``overhead.py`` shows a ratio above target.
``--model`` names a model as ``overhead.py``'s ``--models`` does, without the batch: a DiT config
(``B/2``), ``ADM-64`` or ``MMDiT-M``, each routed by the spec ``overhead.py`` gives it unless ``--spec``:

    python benchmarks/profile_step.py --model B/2 --batch 64 --out benchmarks/results/profile-h100.txt
    python benchmarks/profile_step.py --model MMDiT-M --batch 16 --kind forward --compile
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch
import torch.nn.functional as F


def kernel_times(model, inputs, steps: int, compile_: bool, kind: str = "train") -> tuple[Counter, Counter]:
    """(name -> summed device µs, name -> launches) per step over ``steps`` steps after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    *args, target = inputs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    fn = torch.compile(model) if compile_ else model

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(*args)
        F.mse_loss(out.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fn(*args)

    model.train(kind == "train")
    step = train_step if kind == "train" else forward_step

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    total, count = Counter(), Counter()
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            total[ev.name] += ev.device_time / steps
            count[ev.name] += 1 / steps
    return total, count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="B/2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--spec", default="auto", help="'auto': the spec overhead.py routes this model by")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--kind", default="train", choices=("train", "forward"), help="train step or sampling forward")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)

    from overhead import build_vanilla, make_inputs, parse_item, spec_for

    import dtrsurgeon

    family, config, _ = parse_item(f"{args.model}:{args.batch}")
    args.input_size = 32
    vanilla = build_vanilla(family, config, args)
    routed = dtrsurgeon.transform(vanilla, spec_for(family, args))
    positional, target = make_inputs(family, vanilla, args.batch, args)
    inputs = tuple(v.cuda() if torch.is_tensor(v) else v for v in (*positional, target))
    (tv, cv), (tr, cr) = (kernel_times(copy.deepcopy(m).cuda(), inputs, args.steps, args.compile, args.kind) for m in (vanilla, routed))
    lines = [(f"{family.label}-{config} batch {args.batch} {'compiled' if args.compile else 'eager'} "
             f"{'train step' if args.kind == 'train' else 'sampling forward'}, "
             f"{torch.cuda.get_device_name()}, per step: vanilla {sum(tv.values()) / 1e3:.2f} ms of kernels "
             f"({sum(cv.values()):.0f} launches), routed {sum(tr.values()) / 1e3:.2f} ms ({sum(cr.values()):.0f} launches)"),
             f"{'extra µs':>9s} {'vanilla µs':>10s} {'routed µs':>10s} {'n(v)':>6s} {'n(r)':>6s}  kernel"]
    names = sorted(set(tv) | set(tr), key=lambda n: -abs(tr[n] - tv[n]))
    for n in names[: args.top]:
        lines.append(f"{tr[n] - tv[n]:9.1f} {tv[n]:10.1f} {tr[n]:10.1f} {cv[n]:6.0f} {cr[n]:6.0f}  {n[:110]}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
