#!/usr/bin/env python
"""What DTR routing costs per training step and per sampling forward, against the vanilla model.

For each DiT config (``--models``, ``CONFIG:BATCH``), at 256 px latents (input_size 32, 4 channels,
1000 classes, learn_sigma on, as in the paper), the variants

* ``vanilla``: ``model_zoo.dit.dit(CONFIG)``;
* ``transform``: the same weights routed by ``dtrsurgeon.transform(model, SPEC)``;
* ``generated``: ``--generated FILE --entry NAME`` (a routed copy of ``model_zoo/dit.py`` written
  by ``dtrsurgeon apply``), loaded with the vanilla weights;

run one process, all resident at once. A train step is forward under bf16 autocast, an MSE
loss in float32, backward and an AdamW step (``foreach``); a sampling forward is ``eval()``
under ``no_grad`` and bf16 autocast. Each mode (eager, ``torch.compile``) is timed in rounds that
alternate the variants (rotating the order), ``--iters`` steps per variant per round timed with CUDA
events, with Python's garbage collector paused; ms is the median over rounds and ratio = ms / vanilla's
ms of the same model, batch, mode and kind (``ratio_min`` compares the fastest rounds). Peak memory: the variant's own parameters and optimiser state plus the allocator's peak
during one of its steps above what was allocated before it (so the other resident variants do not
count).

    python benchmarks/overhead.py --out benchmarks/results/overhead-h100.json

The output is a JSON list of rows ``{model, batch, compile, kind, variant, ms, ms_iqr, peak_gib,
ratio, ...}`` (``kind`` is ``train`` or ``forward``), each with the command, device, torch version
and timing settings it was measured with. It is rewritten after every finished group, so a run cut
short keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="B/2:64,XL/2:32", help="comma list of DiT CONFIG:BATCH")
    p.add_argument("--modes", default="eager,compile", help="eager and/or compile")
    p.add_argument("--kinds", default="train,forward", help="train and/or forward")
    p.add_argument("--spec", default="dit-paper")
    p.add_argument("--generated", default="auto",
                   help="'auto': write a routed model_zoo/dit.py per config with `dtrsurgeon apply` (if that verb "
                        "exists) and time it as the 'generated' variant; 'none': skip; or a FILE to import")
    p.add_argument("--work", default="out/overhead", help="where generated files go")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--iters", type=int, default=10, help="steps per variant per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    p.add_argument("--compile-scope", default="model", choices=("model", "blocks"),
                   help="torch.compile the whole model, or each transformer block (regional compilation)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="benchmarks/results/overhead.json")
    return p.parse_args(argv)


def build_variants(args, config: str) -> dict[str, torch.nn.Module]:
    import dtrsurgeon
    from model_zoo.dit import dit

    kwargs = dict(input_size=args.input_size, in_channels=4, num_classes=1000)
    torch.manual_seed(0)
    vanilla = dit(config, **kwargs)
    variants = {"vanilla": vanilla}
    t0 = time.perf_counter()
    variants["transform"] = dtrsurgeon.transform(vanilla, args.spec)
    print(f"  transform({config}): {time.perf_counter() - t0:.1f} s", flush=True)
    path = generated_file(args, config, kwargs)
    if path is not None:
        module = _import_generated(path, config)
        gen = module.dit(config, **kwargs)
        gen.load_state_dict(vanilla.state_dict(), strict=True)
        variants["generated"] = gen
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
    """One variant on the GPU: its model, optimiser and (compiled) callables."""

    def __init__(self, name, model, args, inputs, compile_: bool):
        self.name, self.model, self.dev = name, model.to(args.device), torch.device(args.device).type
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, foreach=True)
        self.x, self.t, self.y, self.target = inputs
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

    def step(self, kind):
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


def time_group(runners, kind, args) -> dict[str, dict]:
    """Interleaved rounds: ms per step (median, IQR) and peak GiB per variant."""
    from torch._dynamo.utils import counters

    for r in runners:
        graphs0 = counters["stats"]["unique_graphs"]
        breaks0 = sum(counters["graph_break"].values())
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            r.step(kind)
        _sync()
        r.compile_s[kind] = time.perf_counter() - t0
        r.graphs[kind] = (counters["stats"]["unique_graphs"] - graphs0, sum(counters["graph_break"].values()) - breaks0)
        print(f"    warm-up {r.name:9s} {kind:7s}: {r.compile_s[kind]:.1f} s", flush=True)
    peaks = {}
    for r in runners:  # memory: one step each, measured above what was resident before it
        above = _peak_above(lambda: r.step(kind))
        own = state_bytes(r.model, r.opt if kind == "train" else None)
        peaks[r.name] = (own + above) / 2**30
    times = {r.name: [] for r in runners}
    gc.collect()
    gc.disable()  # a collection inside a timed round costs more than the routing does
    for rnd in range(args.rounds):
        k = rnd % len(runners)
        for r in runners[k:] + runners[:k]:
            with _Timer() as tm:
                for _ in range(args.iters):
                    r.step(kind)
            times[r.name].append(tm.ms / args.iters)
    gc.enable()
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out[name] = {"ms": statistics.median(ts), "ms_iqr": q[2] - q[0], "ms_all": ts, "peak_gib": peaks[name]}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    meta = {
        "command": "python " + " ".join([sys.argv[0].split("/")[-2] + "/" + Path(sys.argv[0]).name] + sys.argv[1:])
        if argv is None else "overhead.main(" + repr(argv) + ")",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "spec": args.spec,
        "rounds": args.rounds, "iters": args.iters, "warmup": args.warmup, "compile_scope": args.compile_scope,
    }

    def write():
        # a list of rows, each carrying the command and machine it was measured with
        out_path.write_text(json.dumps([{**row, **meta} for row in rows], indent=1) + "\n")

    for item in args.models.split(","):
        config, _, batch = item.partition(":")
        batch = int(batch)
        print(f"== DiT-{config} batch {batch}", flush=True)
        base_variants = build_variants(args, config)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 4, args.input_size, args.input_size, generator=g).to(args.device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(args.device)
        y = torch.randint(0, 1000, (batch,), generator=g).to(args.device)
        target = torch.randn(batch, 8, args.input_size, args.input_size, generator=g).to(args.device)
        for mode in args.modes.split(","):
            compile_ = mode == "compile"
            if compile_:
                torch._dynamo.reset()
            runners = [Runner(n, copy.deepcopy(m), args, (x, t, y, target), compile_) for n, m in base_variants.items()]
            for kind in args.kinds.split(","):
                res = time_group(runners, kind, args)
                runner = {r.name: r for r in runners}
                ref = res["vanilla"]["ms"]
                ref_min = min(res["vanilla"]["ms_all"])
                for name, r in res.items():
                    rows.append({"model": f"DiT-{config}", "batch": batch, "compile": compile_, "kind": kind,
                                 "variant": name, "ms": round(r["ms"], 3), "ms_iqr": round(r["ms_iqr"], 3),
                                 "peak_gib": round(r["peak_gib"], 3), "ratio": round(r["ms"] / ref, 4),
                                 "ratio_min": round(min(r["ms_all"]) / ref_min, 4),
                                 "warmup_s": round(runner[name].compile_s[kind], 1),
                                 "graphs": runner[name].graphs[kind][0], "graph_breaks": runner[name].graphs[kind][1],
                                 "ms_rounds": [round(v, 3) for v in r["ms_all"]]})
                    print(f"  {mode:7s} {kind:7s} {name:9s} {r['ms']:8.2f} ms  (iqr {r['ms_iqr']:.2f})  "
                          f"{r['peak_gib']:6.2f} GiB  ratio {r['ms'] / ref:.4f}  (fastest rounds {min(r['ms_all']) / ref_min:.4f})",
                          flush=True)
                write()
            del runners, runner
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        del base_variants
    print("\nmodel       batch mode    kind    variant      ms     ratio  r(min)  peak GiB")
    for r in rows:
        print(f"{r['model']:11s} {r['batch']:5d} {'compile' if r['compile'] else 'eager':7s} {r['kind']:7s} "
              f"{r['variant']:9s} {r['ms']:8.2f} {r['ratio']:7.4f} {r['ratio_min']:7.4f} {r['peak_gib']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
