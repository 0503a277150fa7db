#!/usr/bin/env python
"""The fused kernels (dtrsurgeon/kernels.py) against the plain path, on a GPU: values, gradients, timing.

Every case runs twice, with ``DTRSURGEON_FUSED=0`` (PyTorch's ops) and with the kernels, from the same
inputs and weights, and compares the outputs and the gradients of the stream and of the unit's weights:
fp32 and bf16; token streams ``[B, T, C]`` and feature maps ``[B, C, H, W]`` with odd widths; a task per
sample and one 0-d task for the batch; contiguous and non-contiguous streams (those take the plain path);
a unit whose output is fresh (merged in place) and one whose output is saved by its own backward (tanh:
merged out of place); the unit inside ``torch.utils.checkpoint`` (re-entrant and not); ``dtr_masked``;
and a whole DiT-B/2 routed by ``transform()``, trained one bf16 step and sampled once.  The elementwise
cases must agree exactly; the DiT rows print the largest difference.  Then the kernels' device time
against PyTorch's at DiT-B/2's and DiT-XL/2's stream shapes.

    python benchmarks/fused_check.py --out benchmarks/results/fused-check-h200.txt
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dtrsurgeon import kernels, runtime

LINES: list[str] = []
FAILED: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    LINES.append(line)


@contextlib.contextmanager
def fused(on: bool):
    old = os.environ.get("DTRSURGEON_FUSED")
    os.environ["DTRSURGEON_FUSED"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["DTRSURGEON_FUSED"]
        else:
            os.environ["DTRSURGEON_FUSED"] = old


def stream(shape, dtype, contiguous: bool):
    if contiguous:
        return torch.randn(shape, device="cuda", dtype=dtype)
    return torch.randn(shape[::-1], device="cuda", dtype=dtype).permute(*reversed(range(len(shape))))


def routed_unit(x, keep, w, b, axis, saves_result: bool, wrap: str, seen: dict):
    """y = unit(x * keep) + x * ~keep with unit(h) = h + (h * w + b) (or tanh of that)."""
    def body(x):
        routed, skip = runtime.dtr_route(x, keep)
        out = routed + (routed * w + b)
        if saves_result:
            out = torch.tanh(out)
        seen["out_ptr"] = out.data_ptr()
        y = runtime.dtr_merge(out, skip, keep)
        seen["in_place"] = y.data_ptr() == seen["out_ptr"]
        return y

    if wrap == "none":
        return body(x)
    return checkpoint(body, x, use_reentrant=wrap == "reentrant")


def compare(name, plain, fusedv, exact=True, rtol=0.0):
    worst = 0.0
    for a, b in zip(plain, fusedv):
        d = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        scale = a.float().abs().max().item() or 1.0
        worst = max(worst, d / scale if not exact else d)
    ok = worst == 0.0 if exact else worst <= rtol
    if not ok:
        FAILED.append(name)
    return ok, worst


def block_case(shape, axis, dtype, per_sample, contiguous, saves_result, wrap):
    c = shape[axis]
    table = runtime.dtr_mask_table(c, 0.8, 1000).cuda()
    task = torch.randint(0, 1000, (shape[0],), device="cuda") if per_sample else torch.tensor(517, device="cuda")
    torch.manual_seed(0)
    x0 = stream(shape, dtype, contiguous)
    pshape = [1] * len(shape)
    pshape[axis] = c
    w0 = torch.randn(pshape, device="cuda", dtype=dtype)
    b0 = torch.randn(pshape, device="cuda", dtype=dtype)
    g = torch.randn(shape, device="cuda", dtype=dtype)
    results = []
    for on in (False, True):
        x, w, b = (t.detach().clone().requires_grad_(True) for t in (x0, w0, b0))
        if not contiguous:
            x = x0.detach().clone().requires_grad_(True)
        seen = {}
        with fused(on):
            keep = runtime.dtr_channel_mask(table, task, x, axis)
            y = routed_unit(x, keep, w, b, axis, saves_result, wrap, seen)
            y.backward(g)
        results.append(((y.detach(), x.grad, w.grad, b.grad), seen.get("in_place", False)))
    ok, worst = compare("block", results[0][0], results[1][0])
    expect_fused = contiguous and kernels.layout(x0, runtime.dtr_channel_mask(table, task, x0, axis)) is not None
    return ok, worst, results[1][1], expect_fused


def run_block_cases():
    say("== block mode: dtr_route + unit + dtr_merge, values and gradients (x, w, b), plain vs fused")
    shapes = [((4, 33, 771), 2), ((3, 67, 9, 7), 1), ((5, 37), 1), ((64, 256, 768), 2)]
    for dtype in (torch.float32, torch.bfloat16):
        for shape, axis in shapes:
            for per_sample in (True, False):
                for contiguous in (True, False):
                    for saves_result in (False, True):
                        for wrap in ("none", "nonreentrant", "reentrant"):
                            if wrap != "none" and (not contiguous or saves_result):
                                continue
                            ok, worst, in_place, expect_fused = block_case(shape, axis, dtype, per_sample, contiguous,
                                                                           saves_result, wrap)
                            name = (f"{str(dtype)[6:]:8s} {str(list(shape)):18s} task={'per-sample' if per_sample else '0-d':10s} "
                                    f"{'contig' if contiguous else 'strided':7s} unit={'tanh' if saves_result else 'add':4s} "
                                    f"ckpt={wrap:12s}")
                            if not ok:
                                FAILED[-1] = name
                            say(f"  {'PASS' if ok else 'FAIL'} {name} max|diff| {worst:.3g}  "
                                f"path={'fused' if expect_fused else 'plain'} merge={'in place' if in_place else 'new tensor'}")


def run_masked_cases():
    say("== dtr_masked (branch / pre_output): values and gradients, plain vs fused")
    for dtype in (torch.float32, torch.bfloat16):
        for shape, axis in [((4, 33, 771), 2), ((3, 67, 9, 7), 1)]:
            table = runtime.dtr_mask_table(shape[axis], 0.8, 1000).cuda()
            task = torch.randint(0, 1000, (shape[0],), device="cuda")
            x0 = torch.randn(shape, device="cuda", dtype=dtype)
            g = torch.randn(shape, device="cuda", dtype=dtype)
            res = []
            for on in (False, True):
                x = x0.clone().requires_grad_(True)
                with fused(on):
                    y = runtime.dtr_masked(x * 2.0, table, task, axis)
                    y.backward(g)
                res.append((y.detach(), x.grad))
            ok, worst = compare("masked", *res)
            name = f"{str(dtype)[6:]:8s} {str(list(shape)):18s}"
            if not ok:
                FAILED[-1] = "masked " + name
            say(f"  {'PASS' if ok else 'FAIL'} {name} max|diff| {worst:.3g}")


def run_dit_case():
    import dtrsurgeon
    from model_zoo.dit import dit

    say("== DiT-B/2 routed by transform(dit-paper), batch 8, bf16 autocast: plain vs fused")
    torch.manual_seed(0)
    model = dtrsurgeon.transform(dit("B/2", input_size=32, in_channels=4, num_classes=1000), "dit-paper").cuda()
    x = torch.randn(8, 4, 32, 32, device="cuda")
    t = torch.randint(0, 1000, (8,), device="cuda")
    y = torch.randint(0, 1000, (8,), device="cuda")
    target = torch.randn(8, 8, 32, 32, device="cuda")
    res, launches, launch = [], {}, kernels._launch

    def counted(op, *rest):
        launches[op] = launches.get(op, 0) + 1
        return launch(op, *rest)

    kernels._launch = counted
    for on in (False, True):
        model.zero_grad(set_to_none=True)
        with fused(on):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x, t, y)
            F.mse_loss(out.float(), target).backward()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                sample = model(x, t, y)
        res.append([out.detach(), sample] + [p.grad for p in model.parameters() if p.grad is not None])
    kernels._launch = launch
    names = {kernels.ROUTE: "route", kernels.MERGE: "merge (new tensor)", kernels.MERGE_INPLACE: "merge in place",
             kernels.SELECT: "backward select"}
    say("  fused kernel launches in one train step and one sampling forward: "
        + (", ".join(f"{names[op]} {n}" for op, n in sorted(launches.items())) or "none (the plain path ran)"))
    ok, worst = compare("DiT-B/2", res[0], res[1], exact=False, rtol=1e-3)
    exact = all(torch.equal(a, b) for a, b in zip(*res))
    say(f"  {'PASS' if ok else 'FAIL'} train output, sample and {len(res[0]) - 2} parameter gradients: "
        f"largest difference relative to the tensor's max {worst:.3g} ({'bit-identical' if exact else 'not bit-identical'})")


def bench(fn, n=100) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1e3


def run_timing(shape):
    b, t, c = shape
    table = runtime.dtr_mask_table(c, 0.8, 1000).cuda()
    x = torch.randn(shape, device="cuda")
    out, g1, g2 = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    keep = runtime.dtr_channel_mask(table, torch.randint(0, 1000, (b,), device="cuda"), x, 2)
    lay = kernels.layout(x, keep)
    scratch = out.clone()
    cases = {
        "copy (x.clone())": lambda: x.clone(),
        "route, plain: x * keep": lambda: x * keep.to(x.dtype),
        "route, fused": lambda: kernels._launch(kernels.ROUTE, x, None, keep, lay, torch.empty_like(x)),
        "merge, plain: addcmul(out, x, ~keep)": lambda: torch.addcmul(out, x, (~keep).to(x.dtype)),
        "merge, fused into a new tensor": lambda: kernels._launch(kernels.MERGE, out, x, keep, lay, torch.empty_like(x)),
        "merge, fused in place": lambda: kernels._launch(kernels.MERGE_INPLACE, scratch, x, keep, lay, None),
        "select, plain: where(keep, g1, g2)": lambda: torch.where(keep, g1, g2),
        "select, fused": lambda: kernels._launch(kernels.SELECT, g1, g2, keep, lay, torch.empty_like(x)),
    }
    say(f"== device time per call, fp32 stream {list(shape)}, windows of {int(c * 0.8)} of {c} channels (µs)")
    timed = {name: bench(fn) for name, fn in cases.items()}
    for name, us in timed.items():
        say(f"  {name:40s} {us:7.1f}")
    plain = timed["route, plain: x * keep"] + timed["merge, plain: addcmul(out, x, ~keep)"] + timed["select, plain: where(keep, g1, g2)"]
    fz = timed["route, fused"] + timed["merge, fused in place"] + timed["select, fused"]
    say(f"  per block and train step: plain {plain:.1f} µs, fused {fz:.1f} µs (in-place merge), "
        f"{timed['route, fused'] + timed['merge, fused into a new tensor'] + timed['select, fused']:.1f} µs (new-tensor merge)")
    say("  tile sweep (elements per program, warps): route / select µs")
    for tile in (1024, 2048, 4096, 8192):
        for warps in (4, 8):
            kernels.TILE, kernels.WARPS = tile, warps
            r = bench(lambda: kernels._launch(kernels.ROUTE, x, None, keep, lay, torch.empty_like(x)))
            s = bench(lambda: kernels._launch(kernels.SELECT, g1, g2, keep, lay, torch.empty_like(x)))
            say(f"    {tile:5d} x {warps}: {r:6.1f} / {s:6.1f}")
    kernels.TILE, kernels.WARPS = 4096, 8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--skip-cases", action="store_true", help="only the DiT comparison and the timing")
    args = p.parse_args(argv)
    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, kernels enabled: {kernels.enabled()}")
    if not args.skip_cases:
        run_block_cases()
        run_masked_cases()
    run_dit_case()
    if not args.skip_timing:
        for shape in ((64, 256, 768), (32, 256, 1152)):
            run_timing(shape)
    say(f"{len(FAILED)} failed" + (": " + "; ".join(FAILED) if FAILED else ""))
    if args.out:
        Path(args.out).write_text("\n".join(LINES) + "\n")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
