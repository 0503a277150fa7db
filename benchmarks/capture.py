#!/usr/bin/env python
"""What dtrsurgeon's analysis costs against torch.export of the same model, on CPU.

``plan()`` captures the model (``torch.export`` plus a forward that records which source lines call each
module), then analyses the graph; ``transform()`` adds the rewrite.  This times, on ``model_zoo``'s DiT
(``--model``, default XL/2 at 256 px latents), ``torch.export.export(model, ..., strict=False)`` alone,
``dtrsurgeon.plan`` and ``dtrsurgeon.transform`` with ``specs/dit-paper.json`` (which copies the model
first; ``inplace=True`` does not), each the best of
``--repeats`` runs in this process, and prints each against export.  The target (issue 14) is plan() at
most 2x export.

``--meta flux|sd35|wan`` instead builds a full-size published config on the meta device (FluxTransformer2DModel
as in FLUX.1-dev, SD3Transformer2DModel as in SD3.5-Large, WanTransformer3DModel as in Wan 2.1 T2V 14B; no
weights are allocated), and prints the wall time of ``dtrsurgeon.plan`` and of
``dtrsurgeon.transform(..., inplace=True)`` and the process's peak RSS (issue 11: under 60 s and 4 GB).  Run
each model in its own process, so the peak RSS is that model's.

    python benchmarks/capture.py --out benchmarks/results/capture-cpu.txt
    python benchmarks/capture.py --meta flux --out benchmarks/results/capture-meta-flux.txt
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch


def best_of(fn, repeats: int, setup=lambda: None) -> float:
    """Fastest of ``repeats`` calls of ``fn(setup())``; the setup is not timed."""
    times = []
    for _ in range(repeats):
        arg = setup()
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="XL/2")
    p.add_argument("--spec", default="dit-paper")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--meta", choices=sorted(META_CONFIGS), default=None,
                   help="a full-size diffusers config built on the meta device (needs diffusers)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    lines = meta_lines(args.meta) if args.meta else export_lines(args)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


def export_lines(args) -> list[str]:
    """plan/transform of model_zoo's DiT against torch.export of it, best of ``args.repeats``."""
    import dtrsurgeon
    from model_zoo.dit import dit

    torch.manual_seed(0)
    model = dit(args.model, input_size=32, in_channels=4, num_classes=1000).eval()
    g = torch.Generator().manual_seed(0)
    call_args = (torch.randn(2, 4, 32, 32, generator=g), torch.tensor([10, 900]), torch.tensor([1, 2]))
    call_kwargs = {}
    example = (call_args, call_kwargs)  # plan and transform get the same inputs as export

    def export():
        with torch.no_grad():
            torch.export.export(model, tuple(call_args), dict(call_kwargs), strict=False)

    def forward():
        with torch.no_grad():
            model(*call_args, **call_kwargs)

    timed = {
        "torch.export.export (strict=False)": best_of(lambda _: export(), args.repeats),
        "one eager forward": best_of(lambda _: forward(), args.repeats),
        "dtrsurgeon.plan": best_of(lambda _: dtrsurgeon.plan(model, args.spec, example), args.repeats),
        "dtrsurgeon.transform": best_of(lambda _: dtrsurgeon.transform(model, args.spec, example), args.repeats),
        "dtrsurgeon.transform(inplace=True)": best_of(lambda m: dtrsurgeon.transform(m, args.spec, example, inplace=True),
                                                      args.repeats, setup=lambda: copy.deepcopy(model)),
    }
    ref = timed["torch.export.export (strict=False)"]
    lines = [f"DiT-{args.model} (model_zoo), CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, "
             f"best of {args.repeats}; inputs x [2, 4, 32, 32], t [2], y [2]"]
    lines += [f"{name:38s} {s:7.2f} s  {s / ref:5.2f}x export" for name, s in timed.items()]
    lines.append(f"target: plan() <= 2x export: {'met' if timed['dtrsurgeon.plan'] <= 2 * ref else 'missed'}")
    lines.append(f"load average at the end: {_load()}")
    lines.append(f"command: python benchmarks/capture.py --model {args.model} --repeats {args.repeats}")
    return lines


# Published configs (the models' config.json on their hubs) and one forward call's input shapes:
# FLUX.1-dev 1024x1024 (4096 latent tokens, 512 text tokens), SD3.5-Large 1024x1024 (128x128 latents,
# 333 text tokens), Wan 2.1 T2V 14B 480p 81 frames (21 latent frames of 60x104).
META_CONFIGS = {
    "flux": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))),
    "sd35": ("SD3Transformer2DModel", dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64, num_attention_heads=38,
        joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192, qk_norm="rms_norm")),
    "wan": ("WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)),
}


def meta_inputs(name: str, batch: int = 2) -> dict:
    """One forward call's keyword inputs for ``META_CONFIGS[name]``, on the meta device."""
    with torch.device("meta"):
        t = torch.rand(batch)
        if name == "flux":
            return dict(hidden_states=torch.randn(batch, 4096, 64), encoder_hidden_states=torch.randn(batch, 512, 4096),
                        pooled_projections=torch.randn(batch, 768), timestep=t, img_ids=torch.zeros(4096, 3),
                        txt_ids=torch.zeros(512, 3), guidance=torch.rand(batch))
        if name == "sd35":
            return dict(hidden_states=torch.randn(batch, 16, 128, 128), encoder_hidden_states=torch.randn(batch, 333, 4096),
                        pooled_projections=torch.randn(batch, 2048), timestep=t)
        return dict(hidden_states=torch.randn(batch, 16, 21, 60, 104), encoder_hidden_states=torch.randn(batch, 512, 4096),
                    timestep=t)


def meta_lines(name: str) -> list[str]:
    """Build ``name`` on the meta device; time plan and transform(inplace=True); peak RSS of the process."""
    import diffusers

    import dtrsurgeon

    spec = {"version": 1, "routing": {"channel_ratio": 0.5}}
    cls_name, config = META_CONFIGS[name]
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = getattr(diffusers, cls_name)(**config).eval()
    built = time.perf_counter() - t0
    inputs = meta_inputs(name)
    found, (planned, plan_cpu) = timed(lambda: dtrsurgeon.plan(model, spec, inputs))
    _, (transformed, transform_cpu) = timed(lambda: dtrsurgeon.transform(model, spec, inputs, inplace=True))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    params = sum(p.numel() for p in model.parameters())
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
    return [
        f"{cls_name} ({name}, full-size config, {params / 1e9:.2f}B parameters) on the meta device, CPU "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}, diffusers {diffusers.__version__}",
        f"inputs: {shapes}",
        f"build on meta                          {built:7.2f} s",
        f"dtrsurgeon.plan                        {planned:7.2f} s wall  {plan_cpu:7.2f} s CPU  ({len(found.units)} units)",
        f"dtrsurgeon.transform(inplace=True)     {transformed:7.2f} s wall  {transform_cpu:7.2f} s CPU",
        f"peak RSS of the process                {peak_gib:7.2f} GiB",
        f"target: plan and transform each < 60 s, < 4 GB: wall {'met' if max(planned, transformed) < 60 else 'missed'}, "
        f"CPU {'met' if max(plan_cpu, transform_cpu) < 60 else 'missed'}, RSS {'met' if peak_gib * 2**30 < 4e9 else 'missed'}",
        f"load average at the end: {_load()}",
        f"command: python benchmarks/capture.py --meta {name}",
    ]


def timed(fn):
    """(fn(), (wall seconds, CPU seconds of this process)): on a shared machine the CPU time is what
    the call itself costs, the wall time grows with the load."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, (time.perf_counter() - t0, time.process_time() - c0)


def _load() -> str:
    """The machine's 1-minute load average (shared machines: timings scale with it)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


if __name__ == "__main__":
    sys.exit(main())
