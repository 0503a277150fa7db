#!/usr/bin/env python
"""Does a routed run under ``torchrun --nproc_per_node=N`` follow the single-process loss curve?

``examples/train.py`` draws every step's global batch (images, timesteps, noise) from the step
number alone and gives rank r the r-th slice, so one process and N processes with the same
global batch see identical data; the objective is written so that the N-process gradient equals
the single-process one (ANT-UW's per-cluster means are made global, see ``examples/ant.py``).
What remains are floating-point differences (gradient all-reduce order, bf16), which grow slowly
as the runs proceed. Label dropout is switched off (``class_dropout_prob 0``): it draws per rank.

For each pair (routed DTR; DTR + ANT-UW) this runs the single-process and the N-process
training and compares the per-step loss (median and max relative difference), 50-step window
means (max relative difference) and the final weights (relative L2 distance).

In bf16 the one-pass run and the N-process run drift apart because they run different kernel
shapes (a batch of 128 against N of 128/N), which rounds differently from the first step. The
control (``--control accum``, the default) is one process with ``--grad-accum N``: the same global
batch in the same N micro-batches as the N ranks, so what remains between it and the DDP run is DDP
itself (the all-reduce). Both comparisons are reported (the control under ``accum_control``); a
pair's ``passed`` and the exit status are judged on the control when there is one
(``passed_vs_one_pass`` keeps the other verdict).

    python benchmarks/ddp_match.py --nproc 2 --out benchmarks/results/ddp-h200x2.json

``--fsdp`` runs the N processes with ``examples/train.py --fsdp`` (FSDP2, ``fully_shard`` per
routed unit, bf16 parameters and float32 gradient reduction on CUDA) instead of DDP; their final
weights are read from the sharded checkpoint (``torch.distributed.checkpoint``). The one-process
runs stay plain (bf16 autocast over float32 weights), so in bf16 the comparison includes FSDP's
bf16 parameters; in fp32 it is FSDP alone::

    python benchmarks/ddp_match.py --fsdp --nproc 2 --steps 400 --out benchmarks/results/fsdp-h200x2.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from benchmarks.convergence import ANT_UW
from dtrsurgeon.spec.document import preset_path

# NVLink multicast stays off on shared hosts (see the device notes); children inherit this.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--model", default="dit:S/4")
    p.add_argument("--spec", default="dit-paper")
    p.add_argument("--data", default="mnist")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--pairs", default="dtr,dtr+ant-uw")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--model-kwargs", default="{}")
    p.add_argument("--control", default="accum", choices=("accum", "none"),
                   help="also run one process with --grad-accum NPROC and judge DDP against it")
    p.add_argument("--fsdp", action="store_true", help="the N processes shard with FSDP2 (train.py --fsdp)")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--tol-window", type=float, default=0.01, help="max relative difference of window means")
    p.add_argument("--tol-median", type=float, default=0.01, help="max median per-step relative difference")
    p.add_argument("--work", default="out/ddp_match")
    p.add_argument("--out", default="benchmarks/results/ddp-local.json")
    return p.parse_args(argv)


def train_argv(args, pair: str, out: Path, mtl_file: Path, accum: int = 1) -> list[str]:
    kwargs = {"class_dropout_prob": 0.0, **json.loads(args.model_kwargs)}
    argv = [str(ROOT / "examples" / "train.py"), "--model", args.model, "--model-kwargs", json.dumps(kwargs),
            "--data", args.data, "--image-size", str(args.image_size), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--device", args.device,
            "--precision", args.precision, "--out", str(out), "--num-samples", "0", "--log-every", "50",
            "--no-progress", "--spec", str(preset_path(args.spec) or ROOT / args.spec), "--grad-accum", str(accum)]
    if "ant" in pair:
        argv += ["--mtl", str(mtl_file)]
    return argv


def run(cmd: list[str]) -> float:
    env = {**os.environ, **SAFE_ENV, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"ddp_match: {' '.join(cmd[:6])} ... failed with exit code {proc.returncode}")
    return time.perf_counter() - t0


def final_weights(run_dir: Path) -> dict:
    """The trained model's state dict: ``ckpt.pt``'s, or rebuilt whole from the sharded
    checkpoint ``ckpt/state`` that ``--fsdp`` writes."""
    if (run_dir / "ckpt.pt").is_file():
        return torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=False)["model"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = run_dir / "ckpt" / "whole.pt"
    dcp_to_torch_save(run_dir / "ckpt" / "state", whole)
    return torch.load(whole, map_location="cpu", weights_only=False)["model"]


def compare(single: Path, ddp: Path, window: int) -> dict:
    a = np.array(json.loads((single / "metrics.json").read_text())["loss"])
    b = np.array(json.loads((ddp / "metrics.json").read_text())["loss"])
    rel = np.abs(a - b) / np.abs(a)
    n = len(a) // window * window
    wa, wb = a[:n].reshape(-1, window).mean(1), b[:n].reshape(-1, window).mean(1)
    ca, cb = final_weights(single), final_weights(ddp)
    num = sum(float((ca[k].float() - cb[k].float()).pow(2).sum()) for k in ca)
    den = sum(float(ca[k].float().pow(2).sum()) for k in ca)
    return {
        "steps": len(a), "median_step_rel_diff": float(np.median(rel)), "max_step_rel_diff": float(rel.max()),
        "first_10_step_max_rel_diff": float(rel[:10].max()),
        "window": window, "window_means_single": wa.tolist(), "window_means_ddp": wb.tolist(),
        "max_window_rel_diff": float((np.abs(wa - wb) / wa).max()),
        "final_weight_rel_l2": (num / den) ** 0.5,
        "loss_single": a.tolist(), "loss_ddp": b.tolist(),
    }


def within(c: dict, args) -> bool:
    return c["max_window_rel_diff"] <= args.tol_window and c["median_step_rel_diff"] <= args.tol_median


def summary(label: str, c: dict, args) -> None:
    print(f"== {label}: median step rel diff {c['median_step_rel_diff']:.2e}, max {c['max_step_rel_diff']:.2e}; "
          f"max {args.window}-step window rel diff {c['max_window_rel_diff']:.2e}; final weights rel L2 "
          f"{c['final_weight_rel_l2']:.2e}; {'PASS' if c['passed'] else 'FAIL'} (wall {c['wall_s_single']:.0f} s)",
          flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.update(SAFE_ENV)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mtl_file = work / "ant-uw.json"
    mtl_file.write_text(json.dumps(ANT_UW))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"meta": {"command": "python benchmarks/ddp_match.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "nproc": args.nproc, "sharding": "fsdp2" if args.fsdp else "ddp", "model": args.model,
                       "spec": args.spec, "data": args.data,
                       "steps": args.steps, "global_batch": args.batch_size, "lr": args.lr, "ant_uw": ANT_UW,
                       "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "gpus": torch.cuda.device_count(), "torch": torch.__version__,
                       "tolerance": {"max_window_rel_diff": args.tol_window, "median_step_rel_diff": args.tol_median}},
              "pairs": []}
    for pair in args.pairs.split(","):
        kind = "fsdp" if args.fsdp else "ddp"
        s_dir, d_dir = work / f"{pair}-single", work / f"{pair}-{kind}{args.nproc}"
        t_single = run([sys.executable] + train_argv(args, pair, s_dir, mtl_file))
        t_ddp = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
                    + train_argv(args, pair, d_dir, mtl_file) + (["--fsdp"] if args.fsdp else []))
        c = compare(s_dir, d_dir, args.window)
        c.update(name=pair, wall_s_single=t_single, wall_s_ddp=t_ddp, passed=within(c, args))
        summary(f"{pair}, 1 process vs {args.nproc}", c, args)
        if args.control == "accum" and args.nproc > 1:
            a_dir = work / f"{pair}-single-accum{args.nproc}"
            t_accum = run([sys.executable] + train_argv(args, pair, a_dir, mtl_file, accum=args.nproc))
            control = compare(a_dir, d_dir, args.window)
            control.update(wall_s_single=t_accum, passed=within(control, args))
            summary(f"{pair}, 1 process with --grad-accum {args.nproc} vs {args.nproc}", control, args)
            c["accum_control"] = control
            c["passed_vs_one_pass"], c["passed"] = c["passed"], control["passed"]
        result["pairs"].append(c)
        out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    return 0 if all(p["passed"] for p in result["pairs"]) else 1


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = result["pairs"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.5), dpi=120, squeeze=False)
    for ax, p in zip(axes[0], pairs):
        steps = np.arange(1, p["steps"] + 1)
        ax.plot(steps, p["loss_single"], lw=0.8, label="1 process")
        if "accum_control" in p:
            ax.plot(steps, p["accum_control"]["loss_single"], lw=0.8, ls=":",
                    label=f"1 process, --grad-accum {result['meta']['nproc']}")
        ax.plot(steps, p["loss_ddp"], lw=0.8, ls="--", label=f"{result['meta']['nproc']} processes ({result['meta'].get('sharding', 'ddp').upper()})")
        ax.set_yscale("log")
        ax.set_title(f"{result['meta']['model']} {p['name']}: train loss, global batch {result['meta']['global_batch']}",
                     fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
