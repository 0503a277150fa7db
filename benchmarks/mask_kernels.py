#!/usr/bin/env python
"""Device time of the candidate kernels for DTR's masking, at DiT-B/2's stream shape (GPU).

A block-mode unit needs x * keep (forward), out + skip * ~keep (forward) and where(keep, a, b)
(backward) on an fp32 [B, T, C] stream with a per-sample [B, 1, C] channel mask.  This times each
formulation, eager and inductor-compiled, against a plain copy and a contiguous add of the same
size; ``dtrsurgeon.runtime`` uses the fastest eager one.

The masks are DTR's: each sample keeps a window of ``--ratio`` of the channels, so the channels it
does not use are a (cyclic) run of ``C - K`` that ``gather``/``scatter`` can address. Those rows time
formulations that touch only the unused channels: they need an in-place write (into the block's
output in forward, or into the incoming gradient in backward, which autograd's contract forbids) and
show what the three-pass floor of the out-of-place formulas costs. The last line is the bandwidth floor:
an ideal fused out-of-place implementation moves 6.2 stream-sized tensors per block and step (route:
read x, write x * keep; merge: read out, read 20 % of x, write; backward: read 80 % of the routed
gradient and 20 % of the bypass gradient, write), timed at the copy's bandwidth.

    python benchmarks/mask_kernels.py --out benchmarks/results/mask-kernels-h100.txt
"""

import argparse
import sys

import torch


def bench(fn, n=200) -> float:
    """Mean µs per call over ``n`` calls after a warm-up, by CUDA events."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="64,256,768", help="B,T,C of the stream")
    p.add_argument("--ratio", type=float, default=0.8, help="channel_ratio: the share of channels each task keeps")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    b, t, c = map(int, args.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(b, t, c, device="cuda")
    out, g1, g2 = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    k = int(c * args.ratio)
    start = torch.randint(0, c - k + 1, (b, 1, 1), device="cuda")
    channel = torch.arange(c, device="cuda")
    keep = (channel >= start) & (channel < start + k)  # [B, 1, C]: one window per sample, as DTR's tables
    unused = ((start + k + torch.arange(c - k, device="cuda")) % c).expand(b, t, c - k)  # the other channels
    out_inplace, g_inplace = out.clone(), g1.clone()
    keepf, nkeepf = keep.float(), (~keep).float()
    keepfull = keep.expand(b, t, c).contiguous()
    mul = torch.compile(lambda x, k: x * k, dynamic=False)
    merge = torch.compile(lambda o, x, k: torch.addcmul(o, x, ~k), dynamic=False)
    where = torch.compile(lambda k, a, b: torch.where(k, a, b), dynamic=False)
    cases = [
        ("x.clone() (reference: one read, one write)", lambda: x.clone()),
        ("x + out (reference: contiguous add)", lambda: x + out),
        ("x * keep (bool mask, broadcast)", lambda: x * keep),
        ("x * keep (float mask, broadcast)", lambda: x * keepf),
        ("where(keep, x, 0)", lambda: torch.where(keep, x, 0.0)),
        ("x * keep (bool mask, contiguous)", lambda: x * keepfull),
        ("addcmul(out, x, ~keep) (bool)", lambda: torch.addcmul(out, x, ~keep)),
        ("addcmul(out, x, ~keep) (float)", lambda: torch.addcmul(out, x, nkeepf)),
        ("where(keep, out, out + x)", lambda: torch.where(keep, out, out + x)),
        ("where(keep, g1, g2) (backward)", lambda: torch.where(keep, g1, g2)),
        ("compiled x * keep", lambda: mul(x, keep)),
        ("compiled addcmul(out, x, ~keep)", lambda: merge(out, x, keep)),
        ("compiled where(keep, g1, g2)", lambda: where(keep, g1, g2)),
        ("lerp(g2, g1, keep) (backward select)", lambda: torch.lerp(g2, g1, keepf)),
        ("x.gather(unused) (20 % of channels)", lambda: x.gather(2, unused)),
        ("out.scatter_add_(unused, x) in place (merge)", lambda: out_inplace.scatter_add_(2, unused, x.gather(2, unused))),
        ("g1.scatter(unused, g2) (backward)", lambda: g1.scatter(2, unused, g2.gather(2, unused))),
        ("g1.scatter_(unused, g2) in place (backward)", lambda: g_inplace.scatter_(2, unused, g2.gather(2, unused))),
    ]
    assert torch.equal(torch.lerp(g2, g1, keepf), torch.where(keep, g1, g2))
    assert torch.equal(out.clone().scatter_add_(2, unused, x.gather(2, unused)), torch.addcmul(out, x, nkeepf))
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp32 stream [{b}, {t}, {c}], "
             f"windows of {k} channels"]
    timed = {name: bench(fn) for name, fn in cases}
    lines += [f"{name:45s} {us:7.1f} µs" for name, us in timed.items()]
    copy_us = timed["x.clone() (reference: one read, one write)"]
    floor = 6.2 / 2 * copy_us
    lines.append(f"{'floor: 6.2 tensors moved at the copy bandwidth':45s} {floor:7.1f} µs per block and step")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
