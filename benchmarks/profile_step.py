#!/usr/bin/env python
"""Where a routed step spends its extra GPU time: kernel totals, vanilla against routed.

Runs ``--steps`` eager (or ``--compile``) bf16 train steps (``--kind train``) or sampling forwards
(``--kind forward``: ``eval()``, ``no_grad``) of ``model_zoo`` DiT (vanilla, and routed by
``dtrsurgeon.transform``) under ``torch.profiler`` and prints, per kernel name, the summed device time of
each and the difference, largest first.  Use it when ``overhead.py`` shows a ratio above target:

    python benchmarks/profile_step.py --model B/2 --batch 64 --out benchmarks/results/profile-h100.txt
    python benchmarks/profile_step.py --model B/2 --batch 64 --kind forward
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F


def kernel_times(model, inputs, steps: int, compile_: bool, kind: str = "train") -> tuple[Counter, Counter]:
    """(name -> summed device µs, name -> launches) per step over ``steps`` steps after a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    x, t, y, target = inputs
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    fn = torch.compile(model) if compile_ else model

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(x, t, y)
        F.mse_loss(out.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fn(x, t, y)

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
    p.add_argument("--spec", default="dit-paper")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--kind", default="train", choices=("train", "forward"), help="train step or sampling forward")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)

    import dtrsurgeon
    from model_zoo.dit import dit

    torch.manual_seed(0)
    vanilla = dit(args.model, input_size=32, in_channels=4, num_classes=1000)
    routed = dtrsurgeon.transform(vanilla, args.spec)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(args.batch, 4, 32, 32, generator=g), torch.randint(0, 1000, (args.batch,), generator=g),
              torch.randint(0, 1000, (args.batch,), generator=g), torch.randn(args.batch, 8, 32, 32, generator=g))
    inputs = tuple(v.cuda() for v in inputs)
    (tv, cv), (tr, cr) = (kernel_times(copy.deepcopy(m).cuda(), inputs, args.steps, args.compile, args.kind) for m in (vanilla, routed))
    lines = [(f"DiT-{args.model} batch {args.batch} {'compiled' if args.compile else 'eager'} "
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
