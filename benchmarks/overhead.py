#!/usr/bin/env python
"""What DTR routing costs per training step and per sampling forward, against the vanilla model.

For each DiT config (``--models``, ``CONFIG:BATCH``), at 256 px latents (input_size 32, 4 channels,
1000 classes, learn_sigma on, as in the paper), the variants (``--variants``)

* ``vanilla``: ``model_zoo.dit.dit(CONFIG)``;
* ``transform``: the same weights routed by ``dtrsurgeon.transform(model, SPEC)``: on CUDA it runs the
  fused kernels of ``dtrsurgeon/kernels.py``;
* ``transform_plain``: the same model stepped with ``DTRSURGEON_FUSED=0`` (PyTorch's ops), the A/B;
* ``generated``: the routed copy of ``model_zoo/dit.py`` that ``dtrsurgeon apply`` writes (plain path:
  a generated file imports nothing but torch), loaded with the vanilla weights;
* ``authors``: DTR as the method's reference implementation does it (``../shared/method.md`` §1, §3),
  written here from those facts: a float mask table; before each forward the root writes each block's
  mask row as a module attribute; the block computes ``x * m``, runs, then adds ``x * (1 - m)``: three
  separate ops over the stream.

A train step is forward under bf16 autocast, an MSE loss in float32, backward and an AdamW step
(``foreach``); a sampling forward is ``eval()`` under ``no_grad`` and bf16 autocast.

Two measures per variant, both as a ratio to vanilla of the same model, batch, mode and kind:

* **kernel time** (primary): the sum of the CUDA kernels' durations per step from ``torch.profiler``,
  best of ``--windows`` windows of ``--window-steps`` steps; free of host jitter (about 0.2 %).
  Reported as the best over processes, and the spread of the per-process ratios;
* **wall clock** (secondary): ``--rounds`` interleaved rounds (the variants alternate, rotating the
  order; ``--iters`` steps per variant per round, CUDA events, garbage collector paused) in each of
  ``--processes`` separate processes (``--compile-processes`` for torch.compile); per round the
  variant's time over vanilla's in the same round; the median over all rounds and a bootstrap 90 %
  interval (processes resampled, then rounds within them).

Peak memory: the variant's own parameters and optimiser state plus the allocator's peak during one of
its steps above what was allocated before it (so the other resident variants do not count).

    python benchmarks/overhead.py --models B/2:64 --out benchmarks/results/overhead-h200-b2.json

The output is a JSON list of rows ``{model, batch, compile, kind, variant, kernel_ms, kernel_ratio,
ms, ratio, ratio_ci90, peak_gib, ...}``, each with the command, device and torch version. It is
rewritten after every finished group, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("vanilla", "transform", "transform_plain", "generated", "authors")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="B/2:64,XL/2:32", help="comma list of DiT CONFIG:BATCH")
    p.add_argument("--modes", default="eager,compile", help="eager and/or compile")
    p.add_argument("--kinds", default="train,forward", help="train and/or forward")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--spec", default="dit-paper")
    p.add_argument("--generated", default="auto",
                   help="'auto': write a routed model_zoo/dit.py per config with `dtrsurgeon apply`; or a FILE to import")
    p.add_argument("--work", default="out/overhead", help="where generated files and worker results go")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--processes", type=int, default=3, help="separate processes per eager group")
    p.add_argument("--compile-processes", type=int, default=1, help="separate processes per compiled group")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds per process")
    p.add_argument("--iters", type=int, default=5, help="steps per variant per round")
    p.add_argument("--windows", type=int, default=3, help="profiler windows per variant (the best counts)")
    p.add_argument("--window-steps", type=int, default=5, help="steps per profiler window")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before measuring")
    p.add_argument("--compile-scope", default="model", choices=("model", "blocks"),
                   help="torch.compile the whole model, or each transformer block (regional compilation)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results/overhead.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # CONFIG:BATCH:MODE, run by the parent
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class AuthorsBlock(nn.Module):
    """A DiT block routed as the reference implementation does: the root sets ``dtr_m`` (float
    [B, 1, C]) before each forward; y = block(x * m) + x * (1 - m), three ops over the stream."""

    def __init__(self, block):
        super().__init__()
        self.block = block
        self.dtr_m = None

    def forward(self, x, c):
        m = self.dtr_m
        out = self.block(x * m, c)
        return out + x * (1 - m)


class AuthorsDTR(nn.Module):
    """The root of the authors-style baseline: its float table row per sample, written into every
    block before the model runs (task = the timestep, 1000 tasks)."""

    def __init__(self, model, table):
        super().__init__()
        self.model = model
        model.blocks = nn.ModuleList(AuthorsBlock(b) for b in model.blocks)
        self.register_buffer("dtr_table", table.float(), persistent=False)

    def forward(self, x, t, y):
        m = self.dtr_table[t.long()][:, None, :]
        for block in self.model.blocks:
            block.dtr_m = m
        return self.model(x, t, y)


def authors_variant(vanilla, spec_path):
    from dtrsurgeon.runtime import dtr_mask_table
    from dtrsurgeon.spec.document import preset_path

    routing = json.loads((preset_path(spec_path) or Path(spec_path)).read_text())["routing"]
    weights = routing.get("task_weights", {})
    table = dtr_mask_table(vanilla.pos_embed.shape[-1], routing["channel_ratio"], 1000,
                           routing.get("window_shift", "sliding"), weights.get("curve", "power"), weights.get("alpha", 4.0))
    return AuthorsDTR(copy.deepcopy(vanilla), table)


def build_variants(args, config: str, generated: Path | None) -> dict[str, torch.nn.Module]:
    import dtrsurgeon
    from model_zoo.dit import dit

    wanted = args.variants.split(",")
    kwargs = dict(input_size=args.input_size, in_channels=4, num_classes=1000)
    torch.manual_seed(0)
    vanilla = dit(config, **kwargs)
    variants = {"vanilla": vanilla}
    if "transform" in wanted or "transform_plain" in wanted:
        t0 = time.perf_counter()
        routed = dtrsurgeon.transform(vanilla, args.spec)
        print(f"  transform({config}): {time.perf_counter() - t0:.1f} s", flush=True)
        variants.update({name: routed for name in ("transform", "transform_plain") if name in wanted})
    if "generated" in wanted and generated is not None:
        gen = _import_generated(generated, config).dit(config, **kwargs)
        gen.load_state_dict(vanilla.state_dict(), strict=True)
        variants["generated"] = gen
    if "authors" in wanted:
        variants["authors"] = authors_variant(vanilla, args.spec)
    return variants


def generated_file(args, config: str, kwargs: dict) -> Path | None:
    """The routed source for ``dit(config, **kwargs)``: written by ``dtrsurgeon apply`` under
    ``--work`` (``--generated auto``), or the given file."""
    if args.generated == "none":
        return None
    if args.generated != "auto":
        return Path(args.generated)
    from dtrsurgeon.cli import build_parser, main as cli

    if "apply" not in build_parser().format_help():
        print("  (no `dtrsurgeon apply` verb: the generated variant is skipped)", flush=True)
        return None
    out = Path(args.work) / f"dit_{config.replace('/', '_')}_dtr.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rc = cli(["apply", args.spec, str(ROOT / "model_zoo" / "dit.py"), "--entry", "dit",
              "--kwargs", json.dumps({"name": config, **kwargs}), "-o", str(out), "--force"])
    if rc != 0:
        raise SystemExit(f"dtrsurgeon apply failed for {config} (exit {rc})")
    print(f"  dtrsurgeon apply ({config}): {time.perf_counter() - t0:.1f} s -> {out}", flush=True)
    return out


def _import_generated(path, config):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_dtr_generated_{config.replace('/', '_')}", Path(path).resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def state_bytes(model, opt) -> int:
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    n += sum(b.numel() * b.element_size() for b in model.buffers())
    for st in (opt.state.values() if opt is not None else ()):
        n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    return n


class Runner:
    """One variant on the GPU: its model, optimiser, (compiled) callable and DTRSURGEON_FUSED setting."""

    def __init__(self, name, model, args, inputs, compile_: bool):
        self.name, self.model, self.dev = name, model.to(args.device), torch.device(args.device).type
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
        self.x, self.t, self.y, self.target = inputs
        self.fused = "0" if name == "transform_plain" else "1"
        self.fn = model
        if compile_:
            if args.compile_scope == "model":
                self.fn = torch.compile(model)
            else:
                for blk in model.blocks:
                    blk.compile()
        self.compile_s, self.graphs = {}, {}

    def train_step(self):
        self.model.train()
        with torch.autocast(self.dev, dtype=torch.bfloat16):
            out = self.fn(self.x, self.t, self.y)
        loss = F.mse_loss(out.float(), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_step(self):
        self.model.eval()
        with torch.autocast(self.dev, dtype=torch.bfloat16):
            self.fn(self.x, self.t, self.y)

    def steps(self, kind, n):
        os.environ["DTRSURGEON_FUSED"] = self.fused
        for _ in range(n):
            (self.train_step if kind == "train" else self.forward_step)()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Timer:
    """CUDA events on a GPU, the host clock on a CPU (for debugging the script)."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()

    def __enter__(self):
        _sync()
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            _sync()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def _peak_above(fn) -> int:
    """Bytes the allocator peaked at during ``fn()`` above what was allocated before it."""
    if not torch.cuda.is_available():
        fn()
        return 0
    _sync()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    _sync()
    return torch.cuda.max_memory_allocated() - base


def kernel_ms(runner, kind, args) -> list[float]:
    """Per profiler window: the summed duration of the device's kernels per step, in ms (on a CPU,
    for debugging the script, the window's host time)."""
    from torch.profiler import ProfilerActivity, profile

    windows = []
    for _ in range(args.windows):
        if not torch.cuda.is_available():
            with _Timer() as tm:
                runner.steps(kind, args.window_steps)
            windows.append(tm.ms / args.window_steps)
            continue
        _sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner.steps(kind, args.window_steps)
            _sync()
        kernels = [ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
        windows.append(sum(ev.device_time for ev in kernels) / 1e3 / args.window_steps)
    return windows


def measure_group(runners, kind, args) -> dict[str, dict]:
    """Warm-up, peak memory, profiler windows, then interleaved rounds, per variant."""
    from torch._dynamo.utils import counters

    out = {r.name: {} for r in runners}
    for r in runners:
        graphs0, breaks0 = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        t0 = time.perf_counter()
        r.steps(kind, args.warmup)
        _sync()
        out[r.name].update(warmup_s=time.perf_counter() - t0, graphs=counters["stats"]["unique_graphs"] - graphs0,
                           graph_breaks=sum(counters["graph_break"].values()) - breaks0)
        print(f"    warm-up {r.name:15s} {kind:7s}: {out[r.name]['warmup_s']:.1f} s", flush=True)
    for r in runners:
        above = _peak_above(lambda: r.steps(kind, 1))
        out[r.name]["peak_gib"] = (state_bytes(r.model, r.opt if kind == "train" else None) + above) / 2**30
        out[r.name]["kernel_ms"] = kernel_ms(r, kind, args)
    times = {r.name: [] for r in runners}
    gc.collect()
    gc.disable()  # a collection inside a timed round costs more than the routing does
    for rnd in range(args.rounds):
        k = rnd % len(runners)
        for r in runners[k:] + runners[:k]:
            with _Timer() as tm:
                r.steps(kind, args.iters)
            times[r.name].append(tm.ms / args.iters)
    gc.enable()
    for name, ts in times.items():
        out[name]["ms_rounds"] = ts
    return out


def run_worker(args) -> int:
    """One process: every variant of one model and mode, resident together; results to --worker-out."""
    config, batch, mode = args.worker.split(":")
    batch, compile_ = int(batch), mode == "compile"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    generated = None if args.generated in ("none", "auto") else Path(args.generated)
    base = build_variants(args, config, generated)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, args.input_size, args.input_size, generator=g).to(args.device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(args.device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(args.device)
    target = torch.randn(batch, 8, args.input_size, args.input_size, generator=g).to(args.device)
    if compile_:
        base.pop("transform_plain", None)  # compiled code never reaches the kernels' dispatch
    runners = [Runner(name, copy.deepcopy(model), args, (x, t, y, target), compile_) for name, model in base.items()]
    result = {kind: measure_group(runners, kind, args) for kind in args.kinds.split(",")}
    Path(args.worker_out).write_text(json.dumps(result))
    return 0


def bootstrap_ci(per_process: list[list[float]], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90 % interval of the median ratio: processes resampled, then rounds within each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [np.asarray(p) for p in per_process]
    medians = []
    for _ in range(reps):
        picked = rng.integers(0, len(arrays), len(arrays))
        pooled = np.concatenate([arrays[i][rng.integers(0, len(arrays[i]), len(arrays[i]))] for i in picked])
        medians.append(np.median(pooled))
    lo, hi = np.percentile(medians, [5, 95])
    return float(lo), float(hi)


def summarise(processes: list[dict], kind: str) -> dict[str, dict]:
    """Rows per variant from the workers' results for one kind."""
    names = list(processes[0][kind])
    rows = {}
    best = {n: min(min(p[kind][n]["kernel_ms"]) for p in processes) for n in names}
    for n in names:
        per_proc_kernel = [min(p[kind][n]["kernel_ms"]) / min(p[kind]["vanilla"]["kernel_ms"]) for p in processes]
        per_proc_ratio = [[a / b for a, b in zip(p[kind][n]["ms_rounds"], p[kind]["vanilla"]["ms_rounds"])]
                          for p in processes]
        pooled = [r for rs in per_proc_ratio for r in rs]
        ms = [m for p in processes for m in p[kind][n]["ms_rounds"]]
        lo, hi = bootstrap_ci(per_proc_ratio)
        first = processes[0][kind][n]
        rows[n] = {
            "kernel_ms": round(best[n], 3), "kernel_ratio": round(best[n] / best["vanilla"], 4),
            "kernel_ratio_per_process": [round(r, 4) for r in per_proc_kernel],
            "kernel_ms_windows": [[round(v, 3) for v in p[kind][n]["kernel_ms"]] for p in processes],
            "ms": round(statistics.median(ms), 3), "ratio": round(statistics.median(pooled), 4),
            "ratio_ci90": [round(lo, 4), round(hi, 4)], "processes": len(processes),
            "peak_gib": round(max(p[kind][n]["peak_gib"] for p in processes), 3),
            "warmup_s": round(first["warmup_s"], 1), "graphs": first["graphs"], "graph_breaks": first["graph_breaks"],
            "ms_rounds": [[round(v, 3) for v in p[kind][n]["ms_rounds"]] for p in processes],
        }
    return rows


def worker_command(args, item: str, mode: str, generated: Path | None, out: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{item}:{mode}", "--worker-out", str(out),
           "--generated", str(generated) if generated else "none"]
    for flag in ("kinds", "variants", "spec", "input_size", "rounds", "iters", "windows", "window_steps", "warmup",
                 "compile_scope", "device"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return cmd


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    meta = {
        "command": "python " + " ".join([sys.argv[0].split("/")[-2] + "/" + Path(sys.argv[0]).name] + sys.argv[1:])
        if argv is None else "overhead.main(" + repr(argv) + ")",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__, "spec": args.spec, "rounds": args.rounds, "iters": args.iters,
        "windows": args.windows, "window_steps": args.window_steps, "warmup": args.warmup,
        "compile_scope": args.compile_scope,
    }
    for item in args.models.split(","):
        config, _, batch = item.partition(":")
        print(f"== DiT-{config} batch {batch}", flush=True)
        generated = None
        if "generated" in args.variants.split(","):
            kwargs = dict(input_size=args.input_size, in_channels=4, num_classes=1000)
            generated = generated_file(args, config, kwargs)
        for mode in args.modes.split(","):
            n = args.processes if mode == "eager" else args.compile_processes
            results = []
            for k in range(n):
                dest = work / f"worker-{config.replace('/', '_')}-{mode}-{k}.json"
                t0 = time.perf_counter()
                subprocess.run(worker_command(args, item, mode, generated, dest), check=True)
                print(f"  {mode} process {k + 1}/{n}: {time.perf_counter() - t0:.0f} s", flush=True)
                results.append(json.loads(dest.read_text()))
            for kind in args.kinds.split(","):
                for name, row in summarise(results, kind).items():
                    rows.append({"model": f"DiT-{config}", "batch": int(batch), "compile": mode == "compile",
                                 "kind": kind, "variant": name, **row})
                    print(f"  {mode:7s} {kind:7s} {name:15s} kernels {row['kernel_ms']:8.2f} ms ({row['kernel_ratio']:.4f})"
                          f"  wall {row['ms']:8.2f} ms ({row['ratio']:.4f}, 90% {row['ratio_ci90'][0]:.4f}-"
                          f"{row['ratio_ci90'][1]:.4f})  {row['peak_gib']:6.2f} GiB", flush=True)
                out_path.write_text(json.dumps([{**row, **meta} for row in rows], indent=1) + "\n")
    print_table(rows)
    return 0


def print_table(rows) -> None:
    print("\nmodel       batch mode    kind    variant          kernel ms  k.ratio   wall ms  ratio  (90% interval)   peak GiB")
    for r in rows:
        print(f"{r['model']:11s} {r['batch']:5d} {'compile' if r['compile'] else 'eager':7s} {r['kind']:7s} "
              f"{r['variant']:15s} {r['kernel_ms']:9.2f} {r['kernel_ratio']:8.4f} {r['ms']:9.2f} {r['ratio']:6.4f} "
              f"({r['ratio_ci90'][0]:.4f}-{r['ratio_ci90'][1]:.4f}) {r['peak_gib']:8.2f}")


if __name__ == "__main__":
    sys.exit(main())
