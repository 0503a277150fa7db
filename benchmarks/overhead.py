#!/usr/bin/env python
"""What DTR routing costs per training step and per sampling forward, against the vanilla model.

For each model (``--models``, ``[FAMILY-]CONFIG:BATCH``) of ``model_zoo``:

* ``DiT-CONFIG`` (or a bare ``CONFIG``): ``model_zoo.dit.dit(CONFIG)`` at 256 px latents (input_size 32,
  4 channels, 1000 classes, learn_sigma on, as in the paper), routed by ``dit-paper`` (block mode);
* ``ADM-CONFIG``: ``model_zoo.adm_unet.adm_unet(CONFIG)`` (``ADM-64``: ImageNet 64 px, class-conditional),
  routed by the ``adm`` preset (``pre_output``: the input of each branch's zero-initialised projection);
* ``MMDiT-CONFIG``: ``model_zoo.mmdit.mmdit(CONFIG)``, Flux-style joint then single-stream blocks
  (``MMDiT-M``: width 1024, 8 + 16 blocks), routed by :data:`MMDIT_SPEC` (block mode on the image stream);

the variants (``--variants``)

* ``vanilla``: the model as built;
* ``transform``: the same weights routed by ``dtrsurgeon.transform(model, SPEC)``: on CUDA it runs the
  fused kernels of ``dtrsurgeon/kernels.py``;
* ``transform_plain``: the same model stepped with ``DTRSURGEON_FUSED=0`` (PyTorch's ops), the A/B;
* ``generated``: the routed copy of the model's ``model_zoo`` file that ``dtrsurgeon apply`` writes
  (plain path: a generated file imports nothing but torch), loaded with the vanilla weights;
* ``authors``: DTR as the method's reference implementation does it (``../shared/method.md`` §1, §3),
  written here from those facts: a float mask table per width; before each forward the root writes each
  unit's mask row as a module attribute; a block-mode unit computes ``x * m``, runs, then adds
  ``x * (1 - m)``: three separate ops over the stream (on an MMDiT, the image stream of each block, the
  reference pattern applied to the stream this benchmark routes); a ``pre_output`` site multiplies its
  projection's input by ``m`` (the authors' ADM placement). Units the plan routes in another mode have
  no authors-style form (an error, not a silent skip).

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
    python benchmarks/overhead.py --models ADM-64:32,MMDiT-M:16 --modes eager --out overhead-adm-mmdit.json

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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("vanilla", "transform", "transform_plain", "generated", "authors")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="B/2:64,XL/2:32",
                   help="comma list of [FAMILY-]CONFIG:BATCH, FAMILY DiT (the default), ADM or MMDiT: B/2:64,ADM-64:32,MMDiT-M:16")
    p.add_argument("--modes", default="eager,compile", help="eager and/or compile")
    p.add_argument("--kinds", default="train,forward", help="train and/or forward")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--spec", default="auto", help="'auto': dit-paper for DiT, adm for ADM, MMDIT_SPEC for MMDiT")
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


@dataclass(frozen=True)
class Family:
    """A backbone of ``model_zoo`` the benchmark builds: ``model_zoo/<source>.py``'s ``entry(name=CONFIG,
    **extra)``, routed by ``spec`` unless ``--spec`` names another."""

    label: str
    source: str
    entry: str
    spec: str | dict
    dit_inputs: bool = False  # DiT has no example_inputs(): latents, timesteps and labels drawn here


#: Flux-style MMDiT routing: block mode on the image-token stream of every joint and single-stream
#: block (``streams`` "sample": the text tokens are conditioning, not the sample DTR routes), timesteps
#: as flow-matching time in [0, 1] over N = 1000 tasks, DTR's window and beta otherwise.
MMDIT_SPEC = {
    "version": 1,
    "timestep": {"arg": "t", "num_tasks": 1000, "range": [0, 1]},
    "routing": {"channel_ratio": 0.8, "window_shift": "sliding", "task_weights": {"curve": "power", "alpha": 4.0},
                "mode": "block", "streams": "sample"},
}

FAMILIES = {
    "DiT": Family("DiT", "dit", "dit", "dit-paper", dit_inputs=True),
    "ADM": Family("ADM", "adm_unet", "adm_unet", "adm"),
    "MMDiT": Family("MMDiT", "mmdit", "mmdit", MMDIT_SPEC),
}


def parse_item(item: str) -> tuple[Family, str, int]:
    """``"ADM-64:32"`` -> (ADM, "64", 32); a bare ``"B/2:64"`` is a DiT."""
    name, _, batch = item.rpartition(":")
    label, dash, config = name.partition("-")
    if not dash or label not in FAMILIES:
        label, config = "DiT", name.removeprefix("DiT-")
    if not config or not batch.isdigit():
        raise SystemExit(f"--models: {item!r} is not [FAMILY-]CONFIG:BATCH (FAMILY one of {', '.join(FAMILIES)})")
    return FAMILIES[label], config, int(batch)


def model_kwargs(family: Family, config: str, args) -> dict:
    if family.dit_inputs:
        return {"name": config, "input_size": args.input_size, "in_channels": 4, "num_classes": 1000}
    return {"name": config}


def spec_for(family: Family, args):
    return family.spec if args.spec == "auto" else args.spec


def build_vanilla(family: Family, config: str, args) -> nn.Module:
    import importlib

    torch.manual_seed(0)
    return getattr(importlib.import_module(f"model_zoo.{family.source}"), family.entry)(**model_kwargs(family, config, args))


def make_inputs(family: Family, model, batch: int, args) -> tuple[tuple, torch.Tensor]:
    """The forward's positional inputs for ``batch`` samples and a regression target of the output's shape."""
    g = torch.Generator().manual_seed(0)
    if family.dit_inputs:
        size = args.input_size
        inputs = (torch.randn(batch, 4, size, size, generator=g), torch.randint(0, 1000, (batch,), generator=g),
                  torch.randint(0, 1000, (batch,), generator=g))
    else:
        positional, keywords = model.example_inputs(batch_size=batch)
        inputs = (*positional, *keywords.values())
    x = inputs[0]
    target = torch.randn(batch, model.out_channels, *x.shape[2:], generator=g)
    return inputs, target


class AuthorsBlock(nn.Module):
    """A block-mode unit routed as the reference implementation routes a DiT block: the root sets
    ``dtr_m`` (float, shaped to broadcast over the stream) before each forward; the unit computes
    ``block(x * m)`` and adds ``x * (1 - m)``: three ops over the stream. ``stream_index`` /
    ``stream_name``: where the routed stream comes in; ``out_index``: its place in a tuple return
    (MMDiT blocks return ``(encoder_hidden_states, hidden_states)``), None for a tensor return."""

    def __init__(self, block, stream_index: int, stream_name: str, out_index: int | None):
        super().__init__()
        self.block = block
        self.stream_index, self.stream_name, self.out_index = stream_index, stream_name, out_index
        self.dtr_m = None

    def forward(self, *args, **kwargs):
        m = self.dtr_m
        if self.stream_index < len(args):
            x = args[self.stream_index]
            args = (*args[:self.stream_index], x * m, *args[self.stream_index + 1:])
        else:
            x = kwargs[self.stream_name]
            kwargs = {**kwargs, self.stream_name: x * m}
        out = self.block(*args, **kwargs)
        if self.out_index is None:
            return out + x * (1 - m)
        out = list(out)
        out[self.out_index] = out[self.out_index] + x * (1 - m)
        return tuple(out)


class AuthorsMaskInput(nn.Module):
    """pre_output routing as the reference ADM code places it: the input of a branch's last
    (zero-initialised) projection multiplied by the float mask ``dtr_m`` (``[B, C]``) the root set,
    viewed along ``axis`` of the input (``[B, C, H, W]`` in a ResBlock, ``[B, C, T]`` in attention)."""

    def __init__(self, projection, axis: int):
        super().__init__()
        self.projection, self.axis = projection, axis
        self.dtr_m = None

    def forward(self, h):
        shape = [1] * h.dim()
        shape[0], shape[self.axis] = h.shape[0], h.shape[self.axis]
        return self.projection(h * self.dtr_m.view(shape))


class AuthorsDTR(nn.Module):
    """The root of the authors-style baseline: float mask tables (one per width and mask setting);
    before the model runs it looks up each sample's row and writes it into every routed module."""

    def __init__(self, model, plan):
        super().__init__()
        import inspect

        self.model = model
        ts = plan.timestep
        self.task_map = (ts.t0, ts.t1, ts.num_tasks, ts.reverse)
        self.t_name = ts.arg
        self.t_index = list(inspect.signature(model.forward).parameters).index(ts.arg)
        self.targets, tables = [], {}
        for unit in plan.units:
            for routed, channels, axis in _authors_targets(model, unit):
                key = (channels, unit.mask)
                if key not in tables:
                    tables[key] = len(tables)
                    self.register_buffer(f"dtr_table_{tables[key]}", _float_table(channels, unit.mask), persistent=False)
                shape = [-1, channels]
                if isinstance(routed, AuthorsBlock):
                    shape = [-1] + [1] * (unit.rank - 1)
                    shape[axis] = channels
                self.targets.append((routed, tables[key], shape))

    def forward(self, *args, **kwargs):
        from dtrsurgeon.runtime import dtr_task_index

        t = args[self.t_index] if self.t_index < len(args) else kwargs[self.t_name]
        task = dtr_task_index(t, *self.task_map)
        rows = {}
        for routed, table, shape in self.targets:
            if table not in rows:
                rows[table] = getattr(self, f"dtr_table_{table}")[task]
            routed.dtr_m = rows[table].view(shape)
        return self.model(*args, **kwargs)


def _float_table(channels, mask):
    from dtrsurgeon.runtime import dtr_mask_table

    w = mask.task_weights
    return dtr_mask_table(channels, mask.channel_ratio, mask.num_tasks, mask.window_shift, w.curve, w.alpha,
                          w.points, mask.seed).float()


def _replace(model, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _authors_targets(model, unit):
    """Wrap ``unit`` (block mode) or its mask sites (pre_output) in ``model``: [(module, C, channel axis)]."""
    import inspect

    if unit.mode.value == "block" and unit.merge and not unit.streams:
        block = model.get_submodule(unit.path)
        params = list(inspect.signature(block.forward).parameters)
        wrapper = AuthorsBlock(block, params.index(unit.stream_arg), unit.stream_arg, unit.out_index)
        _replace(model, unit.path, wrapper)
        return [(wrapper, unit.channels, unit.channel_axis)]
    if unit.mode.value == "pre_output":
        wrapped = []
        for site in unit.sites:
            wrapper = AuthorsMaskInput(model.get_submodule(site.module), site.channel_axis)
            _replace(model, site.module, wrapper)
            wrapped.append((wrapper, site.channels, site.channel_axis))
        return wrapped
    raise NotImplementedError(f"no authors-style form for {unit.path} ({unit.mode.value} mode)")


def authors_variant(vanilla, plan):
    """The authors-style baseline over a copy of ``vanilla``, routing the units ``plan`` routes."""
    return AuthorsDTR(copy.deepcopy(vanilla), plan)


def build_variants(args, family: Family, config: str, generated: Path | None) -> dict[str, torch.nn.Module]:
    import dtrsurgeon

    wanted = args.variants.split(",")
    spec = spec_for(family, args)
    vanilla = build_vanilla(family, config, args)
    variants = {"vanilla": vanilla}
    t0 = time.perf_counter()
    plan = None
    if "transform" in wanted or "transform_plain" in wanted:
        routed = dtrsurgeon.transform(vanilla, spec)
        plan = routed.dtr_plan
        variants.update({name: routed for name in ("transform", "transform_plain") if name in wanted})
    elif "authors" in wanted:
        plan = dtrsurgeon.plan(vanilla, spec)
    print(f"  plan/transform({family.label}-{config}): {time.perf_counter() - t0:.1f} s", flush=True)
    if "generated" in wanted and generated is not None:
        module = _import_generated(generated, family, config)
        gen = getattr(module, family.entry)(**model_kwargs(family, config, args))
        gen.load_state_dict(vanilla.state_dict(), strict=True)
        variants["generated"] = gen
    if "authors" in wanted:
        variants["authors"] = authors_variant(vanilla, plan)
    return variants


def generated_file(args, family: Family, config: str) -> Path | None:
    """The routed source for ``entry(**model_kwargs)``: written by ``dtrsurgeon apply`` under ``--work``
    (``--generated auto``), or the given file."""
    if args.generated == "none":
        return None
    if args.generated != "auto":
        return Path(args.generated)
    from dtrsurgeon.cli import main as cli

    stem = f"{family.source}_{config.replace('/', '_')}"
    out = Path(args.work) / f"{stem}_dtr.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = spec_for(family, args)
    if isinstance(spec, dict):
        spec_file = Path(args.work) / f"{stem}_spec.json"
        spec_file.write_text(json.dumps(spec))
        spec = str(spec_file)
    t0 = time.perf_counter()
    rc = cli(["apply", spec, str(ROOT / "model_zoo" / f"{family.source}.py"), "--entry", family.entry,
              "--kwargs", json.dumps(model_kwargs(family, config, args)), "-o", str(out), "--force"])
    if rc != 0:
        raise SystemExit(f"dtrsurgeon apply failed for {family.label}-{config} (exit {rc})")
    print(f"  dtrsurgeon apply ({family.label}-{config}): {time.perf_counter() - t0:.1f} s -> {out}", flush=True)
    return out


def _import_generated(path, family: Family, config: str):
    import importlib.util

    name = f"_dtr_generated_{family.source}_{config.replace('/', '_')}"
    spec = importlib.util.spec_from_file_location(name, Path(path).resolve())
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
        self.inputs, self.target = inputs
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
            out = self.fn(*self.inputs)
        loss = F.mse_loss(out.float(), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_step(self):
        self.model.eval()
        with torch.autocast(self.dev, dtype=torch.bfloat16):
            self.fn(*self.inputs)

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
        windows.append(device_us(prof) / 1e3 / args.window_steps)
    return windows


def device_us(prof) -> float:
    """Summed duration of the window's device events (kernels, memsets, copies), in µs, read from the
    profiler's raw results: ``prof.events()`` would first build Python event trees, about 20x slower
    (16.6 s against 0.7 s for 100k events on a CPU), minutes per group on models with thousands of
    kernels per step (ADM-64)."""
    cuda = torch.autograd.DeviceType.CUDA
    return sum(ev.duration_ns() for ev in prof.profiler.kineto_results.events() if ev.device_type() == cuda) / 1e3


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
        t0 = time.perf_counter()
        out[r.name]["kernel_ms"] = kernel_ms(r, kind, args)
        print(f"    profiled {r.name:15s} {kind:7s}: {time.perf_counter() - t0:.1f} s", flush=True)
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
    item, _, mode = args.worker.rpartition(":")
    family, config, batch = parse_item(item)
    compile_ = mode == "compile"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    generated = None if args.generated in ("none", "auto") else Path(args.generated)
    base = build_variants(args, family, config, generated)
    inputs, target = make_inputs(family, base["vanilla"], batch, args)
    inputs, target = tuple(v.to(args.device) for v in inputs), target.to(args.device)
    if compile_:
        base.pop("transform_plain", None)  # compiled code never reaches the kernels' dispatch
    runners = [Runner(name, copy.deepcopy(model), args, (inputs, target), compile_) for name, model in base.items()]
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
        "torch": torch.__version__, "rounds": args.rounds, "iters": args.iters,
        "windows": args.windows, "window_steps": args.window_steps, "warmup": args.warmup,
        "compile_scope": args.compile_scope,
    }
    for item in args.models.split(","):
        family, config, batch = parse_item(item)
        label = f"{family.label}-{config}"
        print(f"== {label} batch {batch}", flush=True)
        generated = generated_file(args, family, config) if "generated" in args.variants.split(",") else None
        spec = spec_for(family, args)
        for mode in args.modes.split(","):
            n = args.processes if mode == "eager" else args.compile_processes
            results = []
            for k in range(n):
                dest = work / f"worker-{label.replace('/', '_')}-{mode}-{k}.json"
                t0 = time.perf_counter()
                subprocess.run(worker_command(args, item, mode, generated, dest), check=True)
                print(f"  {mode} process {k + 1}/{n}: {time.perf_counter() - t0:.0f} s", flush=True)
                results.append(json.loads(dest.read_text()))
            for kind in args.kinds.split(","):
                for name, row in summarise(results, kind).items():
                    rows.append({"model": label, "batch": batch, "compile": mode == "compile",
                                 "kind": kind, "variant": name, **row, "spec": spec})
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
