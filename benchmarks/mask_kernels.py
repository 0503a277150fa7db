#!/usr/bin/env python
"""Device time of the candidate kernels for DTR's masking, at DiT-B/2's stream shape (GPU).

A block-mode unit needs x * keep (forward), out + skip * ~keep (forward) and where(keep, a, b)
(backward) on an fp32 [B, T, C] stream with a per-sample [B, 1, C] channel mask.  This times each
formulation, eager and inductor-compiled, against a plain copy and a contiguous add of the same
size; ``dtrsurgeon.emit.runtime`` uses the fastest eager one.

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
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    b, t, c = map(int, args.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(b, t, c, device="cuda")
    out, g1, g2 = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    keep = torch.rand(b, 1, c, device="cuda") > 0.2
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
    ]
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fp32 stream [{b}, {t}, {c}]"]
    lines += [f"{name:45s} {bench(fn):7.1f} µs" for name, fn in cases]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
