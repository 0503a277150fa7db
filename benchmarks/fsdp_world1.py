#!/usr/bin/env python
"""FSDP2 on one GPU (world size 1): a routed model sharded with ``examples/train.py --fsdp`` against the
plain loop, a sharded checkpoint resumed halfway, and a routed model from a generated file.

Runs of ``examples/train.py`` (DiT-S/4 on MNIST routed by ``dit-paper``, label dropout off), each in
its own process, all from the same seed:

* ``plain``: ``transform()``, bf16 autocast over float32 weights, no sharding;
* ``fsdp``: the same with ``--fsdp``: ``fully_shard`` per routed unit and the root, bf16 parameters,
  float32 gradient reduction, the final state as a ``torch.distributed.checkpoint`` folder with
  ``dtr_config.json`` beside it;
* ``fsdp_resumed``: ``--fsdp`` for half the steps, then ``--resume auto`` to the end;
* ``fsdp_generated``: ``--fsdp`` on the routed file ``dtrsurgeon apply`` writes for the same model.

Compared (``benchmarks/ddp_match.compare``: per-step loss, 50-step windows, final weights):
``fsdp`` with ``plain`` (what FSDP's bf16 parameters change), ``fsdp_resumed`` with ``fsdp`` (the
checkpoint round trip) and ``fsdp_generated`` with ``fsdp`` (the two emitters under FSDP).

    python benchmarks/fsdp_world1.py --steps 300 --out benchmarks/results/fsdp-h200-ws1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch

from benchmarks.ddp_match import SAFE_ENV, compare, run
from dtrsurgeon.spec.document import preset_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="S/4", help="DiT config")
    p.add_argument("--spec", default="dit-paper")
    p.add_argument("--data", default="mnist")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--work", default="out/fsdp_world1")
    p.add_argument("--out", default="benchmarks/results/fsdp-local-ws1.json")
    return p.parse_args(argv)


def model_kwargs(args) -> dict:
    return {"input_size": args.image_size, "in_channels": 1, "num_classes": 10, "learn_sigma": False,
            "class_dropout_prob": 0.0}


def train(args, out: Path, steps: int, extra: list[str]) -> float:
    spec = str(preset_path(args.spec) or ROOT / args.spec)
    cmd = [sys.executable, str(ROOT / "examples" / "train.py"), "--data", args.data, "--image-size",
           str(args.image_size), "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--device", args.device, "--precision", args.precision, "--out", str(out), "--num-samples", "0",
           "--log-every", "100", "--no-progress", "--spec", spec] + extra
    return run(cmd)


def generated_file(args, work: Path) -> Path:
    from dtrsurgeon.cli import main as cli

    out = work / "dit_dtr.py"
    kwargs = json.dumps({"name": args.model, **model_kwargs(args)})
    rc = cli(["apply", str(preset_path(args.spec) or ROOT / args.spec), str(ROOT / "model_zoo" / "dit.py"),
              "--entry", "dit", "--kwargs", kwargs, "-o", str(out), "--force"])
    if rc != 0:
        raise SystemExit(f"fsdp_world1: dtrsurgeon apply failed (exit {rc})")
    return out


def checkpoint_config(run_dir: Path) -> dict:
    """What the sharded checkpoint folder holds beside the shards (a generated file's run has a spec
    but no plan: the routing is in its source)."""
    ckpt = run_dir / "ckpt"
    config = json.loads((ckpt / "dtr_config.json").read_text())
    spec, plan = config["spec"], config["plan"]
    return {"files": sorted(p.name for p in ckpt.iterdir()), "state_files": sorted(p.name for p in (ckpt / "state").iterdir()),
            "spec_channel_ratio": spec["routing"]["channel_ratio"] if spec else None,
            "plan_units": [u["path"] for u in plan["units"]] if plan else None}


def brief(c: dict) -> dict:
    keys = ("steps", "median_step_rel_diff", "max_step_rel_diff", "first_10_step_max_rel_diff", "max_window_rel_diff",
            "final_weight_rel_l2")
    return {k: c[k] for k in keys}


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = ["--model", f"dit:{args.model}", "--model-kwargs", json.dumps({"class_dropout_prob": 0.0})]
    gen = generated_file(args, work)
    generated = ["--generated", str(gen), "--entry", "dit", "--kwargs", json.dumps({"name": args.model, **model_kwargs(args)})]
    half = args.steps // 2
    wall = {
        "plain": train(args, work / "plain", args.steps, model),
        "fsdp": train(args, work / "fsdp", args.steps, model + ["--fsdp"]),
        "fsdp_resumed_first_half": train(args, work / "resumed", half, model + ["--fsdp"]),
        "fsdp_resumed_second_half": train(args, work / "resumed", args.steps, model + ["--fsdp", "--resume", "auto"]),
        "fsdp_generated": train(args, work / "generated", args.steps, generated + ["--fsdp"]),
    }
    comparisons = {
        "fsdp_vs_plain": compare(work / "plain", work / "fsdp", args.window),
        "fsdp_resumed_vs_fsdp": compare(work / "fsdp", work / "resumed", args.window),
        "fsdp_generated_vs_fsdp": compare(work / "fsdp", work / "generated", args.window),
    }
    result = {
        "meta": {"command": "python benchmarks/fsdp_world1.py " + " ".join(sys.argv[1:] if argv is None else argv),
                 "model": f"dit:{args.model}", "spec": args.spec, "data": args.data, "steps": args.steps,
                 "resume_at": half, "global_batch": args.batch_size, "lr": args.lr,
                 "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "world_size": 1, "env": SAFE_ENV},
        "wall_s": {k: round(v, 1) for k, v in wall.items()},
        "metrics": {name: {k: v for k, v in json.loads((work / name / "metrics.json").read_text()).items()
                           if k not in ("steps", "loss")} for name in ("plain", "fsdp", "resumed", "generated")},
        "checkpoint": {name: checkpoint_config(work / name) for name in ("fsdp", "resumed", "generated")},
        "comparisons": {k: brief(c) for k, c in comparisons.items()},
        "loss": {"plain": comparisons["fsdp_vs_plain"]["loss_single"], "fsdp": comparisons["fsdp_vs_plain"]["loss_ddp"],
                 "fsdp_resumed": comparisons["fsdp_resumed_vs_fsdp"]["loss_ddp"],
                 "fsdp_generated": comparisons["fsdp_generated_vs_fsdp"]["loss_ddp"]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for name, c in result["comparisons"].items():
        print(f"== {name}: median step rel diff {c['median_step_rel_diff']:.2e}, max {c['max_step_rel_diff']:.2e}, "
              f"max window rel diff {c['max_window_rel_diff']:.2e}, final weights rel L2 {c['final_weight_rel_l2']:.2e}",
              flush=True)
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"fsdp_world1: {time.perf_counter() - started:.0f} s", flush=True)
    sys.exit(code)
