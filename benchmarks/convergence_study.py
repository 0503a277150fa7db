"""The multi-seed study behind ``benchmarks/convergence.py --study``: does routing help beyond seed noise?

Every (backbone, variant, seed) trains through ``examples/train.py`` with the seed as its only
difference from the other seeds (initial weights, data order, timesteps, noise); variants of one
seed share all of those. Every ``--eval-every`` steps a run checkpoints (``--work``, resumable: a
killed or deadline-stopped run continues from its last checkpoint when the command is repeated with
the same ``--work``) and records, on held-out data with fixed timesteps and noise:

* the EMA's and the raw weights' epsilon-MSE, and the EMA's per band of 100 timesteps;
* FD (Frechet distance of the benchmark's fixed classifier's features, DDIM samples vs the test
  images) and label accuracy of the samples;
* ``call_elapsed_s``: seconds since the run's process started in this call (compile included), for
  planning the next call's budget.

With ``--jobs N`` every run is a process of its own, spread over the visible GPUs (run i on GPU
i mod n); ``--compile`` compiles every run's training forward alike (evaluation stays eager).

``summarize`` turns the per-run records into mean +- std over seeds per checkpoint, the steps each
run needed to reach vanilla's final FD, and per metric whether a variant differs from vanilla by
more than twice the standard error of the difference ("separates").

    python benchmarks/convergence.py --study --jobs 30 --steps-per-backbone dit:1000,unet:2000 \\
        --work /tmp/study --out-dir benchmarks/results --tag h200
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dtrsurgeon.spec.document import preset_path

ROOT = Path(__file__).resolve().parent.parent

STUDY_VARIANTS = {
    "dit": ("vanilla", "dtr", "ant-uw", "ant-uw+dtr", "dtr-random", "dtr-fixed"),
    "unet": ("vanilla", "dtr", "ant-uw", "ant-uw+dtr"),
}
METRICS = ("mse_ema", "mse_raw", "fd", "label_acc")


def study_runs(args) -> list[tuple[str, str, int]]:
    """(backbone, variant, seed) for every run the arguments ask for."""
    seeds = [int(s) for s in str(args.seeds).split(",")]
    backbones = args.backbones.split(",")
    wanted = set(args.variants.split(",")) if args.variants else None
    return [(b, v, s) for b in backbones for v in STUDY_VARIANTS[b] if wanted is None or v in wanted for s in seeds]


def backbone_steps(args, backbone: str) -> int:
    """``--steps-per-backbone dit:1000,unet:2000`` overrides ``--steps`` per backbone."""
    for item in (args.steps_per_backbone or "").split(","):
        if item:
            name, steps = item.split(":")
            if name == backbone:
                return int(steps)
    return args.steps


def spec_file(backbone: str, variant: str, cfg: dict, work: Path) -> Path | None:
    """The spec a variant trains with: the backbone's paper spec, or (``dtr-random``,
    ``dtr-fixed``) a copy with that ``routing.window_shift``, the paper's ablations."""
    if "dtr" not in variant:
        return None
    path = preset_path(cfg["spec"]) or ROOT / cfg["spec"]
    if variant in ("dtr-random", "dtr-fixed"):
        doc = json.loads(path.read_text())
        doc["routing"]["window_shift"] = variant.split("-")[1]
        path = work / f"{backbone}-{variant}.spec.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def train_argv(args, backbone: str, variant: str, seed: int, cfg: dict, out: Path, mtl_file: Path) -> list[str]:
    argv = ["--model", cfg["model"], "--model-kwargs", json.dumps(cfg["model_kwargs"]), "--data", args.data,
            "--image-size", str(args.image_size), "--steps", str(backbone_steps(args, backbone)),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", str(args.warmup),
            "--seed", str(seed), "--device", args.device, "--out", str(out), "--num-samples", "0",
            "--log-every", str(args.eval_every), "--no-progress", "--ckpt-every", str(args.eval_every),
            "--resume", "auto"]
    if args.mnist_wheel:
        argv += ["--mnist-wheel", args.mnist_wheel]
    if args.compile:
        argv.append("--compile")
    spec = spec_file(backbone, variant, cfg, out.parent)
    if spec is not None:
        argv += ["--spec", str(spec)]
    if "ant" in variant:
        argv += ["--mtl", str(mtl_file)]
    return argv


def run_name(backbone: str, variant: str, seed: int) -> str:
    return f"{backbone}-{variant}-s{seed}"


def _write_json(path: Path, doc) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, path)


class Evaluator:
    """Everything a checkpoint's evaluation needs, fixed for every run: held-out batches, the
    classifier, the test images' features, the sampling noise."""

    def __init__(self, conv, args, data, classifier, real_feats):
        from examples.diffusion import Schedule

        self.conv, self.args, self.data = conv, args, data
        self.classifier, self.real_feats = classifier, real_feats
        self.schedule = Schedule.make("linear", 1000)
        self.held = conv.HeldOut(data, self.schedule, args.eval_images, args.band_images, seed=0)

    def __call__(self, step: int, model, ema) -> dict:
        from examples.diffusion import ddim_sample
        from examples.models import is_conditional

        conv, held = self.conv, self.held
        dev = next(model.parameters()).device
        bf16 = dev.type == "cuda"
        cond = is_conditional(model)
        entry = {"step": step, "mse_ema": held.mse(ema, held.curve, cond, dev, bf16),
                 "mse_raw": held.mse(model, held.curve, cond, dev, bf16),
                 "band_mse_ema": [held.mse(ema, b, cond, dev, bf16) for b in held.bands]}
        n = self.args.fd_samples
        labels = torch.arange(n) % self.data.num_classes
        gen = torch.Generator().manual_seed(7)
        shape = (n, self.data.channels, self.data.image_size, self.data.image_size)
        samples = ddim_sample(ema, self.schedule, shape, labels if cond else None, steps=self.args.sample_steps,
                              generator=gen, device=dev, autocast_dtype=torch.bfloat16 if bf16 else None,
                              batch_size=1000)
        entry["fd"] = conv.frechet_distance(conv.features(self.classifier, samples, dev), self.real_feats)
        entry["label_acc"] = conv.accuracy(self.classifier, samples, labels, dev) if cond else None
        entry["samples_u8"] = ((samples[:10].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1).tolist()
        return entry


def run_one(conv, args, backbone: str, variant: str, seed: int, evaluator: Evaluator) -> dict:
    """Train (or continue) one run, evaluating at every checkpoint; returns its record."""
    from examples import train

    cfg = conv.BACKBONES[backbone]
    work = Path(args.work)
    out = work / run_name(backbone, variant, seed)
    out.mkdir(parents=True, exist_ok=True)
    mtl_file = work / "ant-uw.json"
    mtl_file.write_text(json.dumps(conv.ANT_UW, indent=1))
    record_path = out / "record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {
        "backbone": backbone, "variant": variant, "seed": seed, "model": cfg["model"], "spec": cfg["spec"],
        "steps": backbone_steps(args, backbone), "checkpoints": [], "train_s": 0.0, "status": "running"}

    def callback(step, model, ema):
        entry = {**evaluator(step, model, ema), "call_elapsed_s": time.perf_counter() - t0}
        # a run resumed from an earlier checkpoint than its last evaluation repeats those steps
        record["checkpoints"] = [c for c in record["checkpoints"] if c["step"] < step] + [entry]
        _write_json(record_path, record)
        print(f"  [{run_name(backbone, variant, seed)}] step {step}: mse ema {entry['mse_ema']:.4f} "
              f"FD {entry['fd']:.2f}", flush=True)

    targs = train.build_parser().parse_args(train_argv(args, backbone, variant, seed, cfg, out, mtl_file))
    t0 = time.perf_counter()
    res = train.run(targs, callback=callback, callback_every=args.eval_every)
    record.update(status="done", train_s=record["train_s"] + time.perf_counter() - t0,
                  objective=res.metrics["objective"], routed=res.metrics["routed"])
    _write_json(record_path, record)
    return record


def run_env(env: dict[str, str], index: int, gpu_count: int) -> dict[str, str]:
    """The environment of the ``index``-th run: with several GPUs visible, the runs take them in
    turn (run i on GPU i mod n), so that each GPU trains an equal share.

    >>> run_env({"CUDA_VISIBLE_DEVICES": "2,3"}, 3, 2)["CUDA_VISIBLE_DEVICES"]
    '3'
    """
    env = {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if gpu_count > 1:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpu_count)]
        env["CUDA_VISIBLE_DEVICES"] = ids[index % gpu_count].strip()
    return env


def spawn_runs(conv, args, runs, argv) -> list[str]:
    """One process per run, spread over the visible GPUs; those still going at ``--deadline``
    are killed (they continue from their checkpoints next time). Returns the runs that did not finish."""
    logs = Path(args.work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gpu_count = torch.cuda.device_count() if args.device == "cuda" else 0
    base = list(argv)
    for option in ("--jobs", "--backbones", "--variants", "--seeds"):
        base = conv._drop_option(base, option)
    procs = {}
    for i, (b, v, s) in enumerate(runs):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "convergence.py"), *base, "--jobs", "1", "--no-merge",
               "--backbones", b, "--variants", v, "--seeds", str(s)]
        log = open(logs / f"{run_name(b, v, s)}.log", "a")
        env = run_env(dict(os.environ), i, gpu_count)
        procs[run_name(b, v, s)] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    t0, unfinished = time.perf_counter(), []
    for name, (proc, log) in procs.items():
        left = None if args.deadline is None else max(1.0, args.deadline - (time.perf_counter() - t0))
        try:
            rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "stopped at the deadline"
        log.close()
        if rc != 0:
            unfinished.append(f"{name}: {rc}")
            if rc != "stopped at the deadline":
                print(f"!! {name} failed ({rc}); its log's end:\n"
                      + "".join(open(logs / f"{name}.log").readlines()[-12:]), flush=True)
    print(f"runs ended after {time.perf_counter() - t0:.0f} s; unfinished: {unfinished or 'none'}", flush=True)
    return unfinished


def study(conv, args, argv) -> int:
    """``--study``: the classifier first, then every run (in this process with ``--jobs 1``,
    else one process each), then the summary, the JSON and the plots."""
    runs = study_runs(args)
    clf_path = Path(args.classifier or Path(args.work) / "classifier.pt")
    args.classifier = str(clf_path)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    from examples.data import load_dataset

    data = load_dataset(args.data, args.image_size, args.mnist_wheel)
    classifier, clf_acc = conv.get_classifier(args, data, device)
    failed: list[str] = []
    if args.jobs > 1:
        argv = conv._drop_option(list(sys.argv[1:] if argv is None else argv), "--classifier")
        argv += ["--classifier", str(clf_path)]
        failed = spawn_runs(conv, args, runs, argv)
    else:
        real_feats = conv.features(classifier, data.test_x, device)
        evaluator = Evaluator(conv, args, data, classifier, real_feats)
        for b, v, s in runs:
            run_one(conv, args, b, v, s, evaluator)
    if args.no_merge:
        return 0
    real_feats = conv.features(classifier, data.test_x, device)
    floor = conv.frechet_distance(conv.features(classifier, data.train_x[: len(data.test_x)], device), real_feats)
    meta = {"command": "python benchmarks/convergence.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "data": args.data, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
            "eval_every": args.eval_every, "fd_samples": args.fd_samples, "sample_steps": args.sample_steps,
            "eval_images": args.eval_images, "band_images": args.band_images, "ant_uw": conv.ANT_UW,
            "compile": bool(args.compile), "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
            "backbones": {b: {**conv.BACKBONES[b], "steps": backbone_steps(args, b)} for b in args.backbones.split(",")},
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "classifier_test_acc": clf_acc, "fd_floor_train_vs_test": floor,
            "unfinished": failed}
    records = [json.loads(p.read_text()) for b, v, s in runs
               if (p := Path(args.work) / run_name(b, v, s) / "record.json").is_file()]
    doc = {"meta": meta, "summary": summarize(records), "runs": records}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / f"convergence-study-{args.tag}.json", doc)
    for backbone in doc["summary"]:
        plot_backbone(doc, backbone, out_dir / f"convergence-study-{args.tag}-{backbone}.png")
    print(table(doc))
    print(table_common(doc))
    return 1 if any(not f.endswith("stopped at the deadline") for f in failed) else 0


def resummarize(conv, args) -> int:
    """``--study --plot-only``: recompute the summary, the plots and the table from the runs in
    ``--out-dir``'s ``convergence-study-TAG.json`` (no training, no GPU)."""
    path = Path(args.out_dir) / f"convergence-study-{args.tag}.json"
    doc = json.loads(path.read_text())
    doc["summary"] = summarize(doc["runs"])
    _write_json(path, doc)
    for backbone in doc["summary"]:
        plot_backbone(doc, backbone, path.with_name(f"{path.stem}-{backbone}.png"))
    print(table(doc))
    print(table_common(doc))
    return 0


# -- summary -----------------------------------------------------------------------------------

def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the values not None."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def separation(a: dict, b: dict) -> dict:
    """``a - b`` with the standard error of that difference; "separates" when the difference
    exceeds twice it (a rough two-sided check, at 3 seeds a coarse one)."""
    if not a["n"] or not b["n"]:
        return {"diff": None, "se": None, "separates": False}
    diff = a["mean"] - b["mean"]
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    return {"diff": diff, "se": se, "separates": bool(abs(diff) > 2 * se)}


def steps_to_reach(checkpoints: list[dict], target: float, last_step: int) -> int | None:
    """The first checkpoint step (up to ``last_step``) whose FD is at or below ``target``."""
    for c in checkpoints:
        if c["step"] <= last_step and c["fd"] is not None and c["fd"] <= target:
            return c["step"]
    return None


def summarize(records: list[dict]) -> dict:
    """Per backbone and variant: per-checkpoint mean/std over seeds (checkpoints every seed has),
    the final values, steps to reach vanilla's final FD, and the comparison with vanilla."""
    out: dict[str, dict] = {}
    for backbone in dict.fromkeys(r["backbone"] for r in records):
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["backbone"] == backbone:
                groups.setdefault(r["variant"], []).append(r)
        summary = {v: _summarize_variant(rs) for v, rs in groups.items()}
        base = summary.get("vanilla")
        target = base["final"]["fd"]["mean"] if base and base["final"] else None
        for v, s in summary.items():
            if target is not None and s["final"]:
                steps = [steps_to_reach(r["checkpoints"], target, s["final"]["step"]) for r in groups[v]]
                s["steps_to_vanilla_final_fd"] = {**mean_std(steps), "per_seed": steps, "target_fd": target,
                                                  "searched_up_to": s["final"]["step"]}
            if base and v != "vanilla":
                s["vs_vanilla"] = _compare_at_steps(s, base)
            if v == "ant-uw+dtr" and "ant-uw" in summary:  # what routing adds on top of ANT-UW
                s["vs_ant_uw"] = _compare_at_steps(s, summary["ant-uw"])
        out[backbone] = summary
    return out


def common_step(summary: dict) -> int | None:
    """The last checkpoint step that every seed of every variant reached (None if there is none)."""
    steps = [set(s["steps"]) for s in summary.values()]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def _compare_at_steps(s: dict, base: dict) -> dict:
    """Per checkpoint step that the variant and vanilla both have (every seed), each metric's
    difference from vanilla at that same step; ``"final"`` is the variant's last such step."""
    per_step = {}
    for i, step in enumerate(s["steps"]):
        if step not in base["steps"]:
            continue
        j = base["steps"].index(step)
        per_step[str(step)] = {m: separation(s["curves"][m][i], base["curves"][m][j]) for m in METRICS}
    out = {"per_step": per_step, "final": None}
    if per_step:
        last = max(per_step, key=int)
        out["final"] = {"step": int(last), **per_step[last]}
        i, j = s["steps"].index(int(last)), base["steps"].index(int(last))
        out["final"]["band_mse_ema"] = [separation(mean_std(a), mean_std(b))
                                        for a, b in zip(s["band_curves"][i], base["band_curves"][j])]
    return out


def _summarize_variant(rs: list[dict]) -> dict:
    common = set.intersection(*[{c["step"] for c in r["checkpoints"]} for r in rs]) if rs else set()
    steps = sorted(common)
    by_step = [{c["step"]: c for c in r["checkpoints"]} for r in rs]
    curves = {m: [mean_std([b[s][m] for b in by_step]) for s in steps] for m in METRICS}
    final = None
    if steps:
        last = steps[-1]
        final = {"step": last, **{m: curves[m][-1] for m in METRICS},
                 "band_mse_ema": [mean_std([b[last]["band_mse_ema"][i] for b in by_step])
                                  for i in range(len(by_step[0][last]["band_mse_ema"]))]}
    # per step, per band: the seeds' values (vanilla's are compared at other variants' last steps)
    band_curves = [[[b[s]["band_mse_ema"][i] for b in by_step] for i in range(len(by_step[0][s]["band_mse_ema"]))]
                   for s in steps]
    return {"seeds": [r["seed"] for r in rs], "done": [r["status"] == "done" for r in rs], "steps": steps,
            "curves": curves, "final": final, "band_curves": band_curves}


def table(doc: dict) -> str:
    """A markdown table: every variant at its last checkpoint that all its seeds reached (mean
    +- std over seeds) and its difference from vanilla at that same step (+- the standard error
    of the difference; a star where it exceeds twice that)."""
    rows = [("| backbone | variant | step | seeds | held-out MSE (EMA) | vs vanilla, same step | FD "
             "| vs vanilla, same step | label acc | steps to vanilla's final FD |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
    for backbone, summary in doc["summary"].items():
        for v, s in summary.items():
            f = s["final"]
            if not f:
                continue
            vs = (s.get("vs_vanilla") or {}).get("final") or {}
            vs = vs if vs.get("step") == f["step"] else {}
            rows.append(f"| {backbone} | {v} | {f['step']} | {f['fd']['n']} | {_cell(f['mse_ema'], 5)} | "
                        f"{_diff_cell(vs.get('mse_ema'), 5)} | {_cell(f['fd'], 1)} | {_diff_cell(vs.get('fd'), 1)} | "
                        f"{_cell(f['label_acc'], 3)} | {_reach_cell(s.get('steps_to_vanilla_final_fd'))} |")
    return "\n".join(rows)


def table_common(doc: dict) -> str:
    """A markdown table of every variant at ``common_step`` (the last step all runs reached), so
    that variants which ran further are still compared at one step: mean +- std over seeds, the
    difference from vanilla (+- its standard error, a star beyond twice that) and, for
    ANT-UW + DTR, from ANT-UW."""
    rows = [("| backbone | variant | step | held-out MSE (EMA) | vs vanilla | FD | vs vanilla | label acc "
             "| vs vanilla | FD vs ANT-UW |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for backbone, summary in doc["summary"].items():
        step = common_step(summary)
        if step is None:
            continue
        for v, s in summary.items():
            i = s["steps"].index(step)
            vs = (s.get("vs_vanilla") or {}).get("per_step", {}).get(str(step), {})
            vs_ant = (s.get("vs_ant_uw") or {}).get("per_step", {}).get(str(step), {})
            c = {m: s["curves"][m][i] for m in METRICS}
            rows.append(f"| {backbone} | {v} | {step} | {_cell(c['mse_ema'], 5)} | {_diff_cell(vs.get('mse_ema'), 5)} | "
                        f"{_cell(c['fd'], 1)} | {_diff_cell(vs.get('fd'), 1)} | {_cell(c['label_acc'], 3)} | "
                        f"{_diff_cell(vs.get('label_acc'), 3)} | {_diff_cell(vs_ant.get('fd'), 1)} |")
    return "\n".join(rows)


def _cell(x: dict, digits: int) -> str:
    return "-" if x["mean"] is None else f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"


def _diff_cell(sep: dict | None, digits: int) -> str:
    if not sep or sep["diff"] is None:
        return "-"
    return f"{sep['diff']:+.{digits}f} ± {sep['se']:.{digits}f}{' *' if sep['separates'] else ''}"


def _reach_cell(reach: dict | None) -> str:
    if not reach:
        return "-"
    total = len(reach["per_seed"])
    if not reach["n"]:
        return f"not by step {reach['searched_up_to']} (0/{total})"
    return f"{reach['mean']:.0f} ± {reach['std']:.0f} ({reach['n']}/{total})"


# -- plots -------------------------------------------------------------------------------------

COLORS = {"vanilla": "k", "dtr": "tab:blue", "ant-uw": "tab:orange", "ant-uw+dtr": "tab:green",
          "dtr-random": "tab:purple", "dtr-fixed": "tab:brown"}


def plot_backbone(doc: dict, backbone: str, path: Path) -> None:
    """Held-out MSE, FD and label accuracy against steps (mean, band = +- std over seeds), the
    final per-band MSE relative to vanilla's, and a row of seed-0 samples per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = doc["summary"][backbone]
    fig = plt.figure(figsize=(16, 4.2 + 0.7 * len(summary)), dpi=110)
    grid = fig.add_gridspec(2, 4, height_ratios=[4.2, 0.7 * len(summary)])
    titles = {"mse_ema": "held-out eps-MSE (EMA)", "fd": "FD (classifier features)", "label_acc": "label accuracy"}
    for i, m in enumerate(titles):
        ax = fig.add_subplot(grid[0, i])
        for v, s in summary.items():
            pts = [(st, c["mean"], c["std"]) for st, c in zip(s["steps"], s["curves"][m]) if c["mean"] is not None]
            if not pts:
                continue
            x, mu, sd = map(np.array, zip(*pts))
            ax.plot(x, mu, color=COLORS.get(v), label=v, lw=1.2, marker="o", ms=3)
            ax.fill_between(x, mu - sd, mu + sd, color=COLORS.get(v), alpha=0.15)
        if m != "label_acc":
            ax.set_yscale("log")
        ax.set_title(titles[m], fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, 3])
    base, step = summary.get("vanilla"), common_step(summary)
    for v, s in summary.items():
        if base is None or step is None:
            break
        bands = s["band_curves"][s["steps"].index(step)]
        base_bands = base["band_curves"][base["steps"].index(step)]
        ratio = [np.mean(a) / np.mean(b) for a, b in zip(bands, base_bands)]
        ax.plot(np.arange(len(ratio)) * 100 + 50, ratio, marker="o", ms=3, color=COLORS.get(v), label=v)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_title(f"held-out MSE per t band / vanilla's, step {step} (all runs)", fontsize=9)
    ax.set_xlabel("timestep band (centre)")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, :])
    strips, names = [], []
    for v in summary:
        run = next((r for r in doc["runs"] if r["backbone"] == backbone and r["variant"] == v
                    and r["checkpoints"]), None)
        if run is not None:
            strips.append(np.concatenate(list(np.array(run["checkpoints"][-1]["samples_u8"], dtype=np.uint8)), axis=1))
            names.append(f"{v} (seed {run['seed']}, step {run['checkpoints'][-1]['step']})")
    if strips:
        ax.imshow(np.concatenate(strips, axis=0), cmap="gray", vmin=0, vmax=255)
        h = strips[0].shape[0]
        ax.set_yticks([h * i + h / 2 for i in range(len(names))], names, fontsize=7)
        ax.set_xticks([])
    fig.suptitle(f"{doc['meta']['backbones'][backbone]['model']} on {doc['meta']['data']}: mean ± std over seeds",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
