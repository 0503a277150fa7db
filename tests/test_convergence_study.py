"""``benchmarks/convergence.py --study`` on CPU: scikit-learn's digits, tiny backbones, a few steps, 2 seeds.

The summary arithmetic is checked on hand-made records; the study itself end to end (every run's
record per checkpoint, the summary over seeds, the plots) and its resume: a study stopped after 2
steps and repeated with 4 records what an uninterrupted 4-step study does.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import convergence  # noqa: E402
from benchmarks.convergence_study import separation, steps_to_reach, summarize  # noqa: E402

TINY = {"dit": {"model": "tiny_dit", "model_kwargs": {}},
        "unet": {"model_kwargs": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                  "attention_resolutions": [4], "num_head_channels": 16}}}


def _record(variant: str, seed: int, fds: list[float], mses: list[float]) -> dict:
    checkpoints = [{"step": 10 * (i + 1), "mse_ema": m, "mse_raw": m, "fd": f, "label_acc": 0.5,
                    "band_mse_ema": [m, 2 * m]} for i, (f, m) in enumerate(zip(fds, mses))]
    return {"backbone": "dit", "variant": variant, "seed": seed, "checkpoints": checkpoints, "status": "done"}


def test_summary_means_spreads_separation_and_steps_to_vanilla_fd():
    records = [_record("vanilla", 0, [9.0, 5.0, 4.0], [1.0, 0.9, 0.8]),
               _record("vanilla", 1, [9.0, 6.0, 6.0], [1.0, 0.9, 0.8]),
               _record("dtr", 0, [7.0, 4.0, 3.0], [1.0, 0.9, 0.80]),
               _record("dtr", 1, [6.0, 5.5, 3.2], [1.0, 0.9, 0.82]),
               _record("slow", 0, [9.0, 8.0], [1.0, 0.95])]
    s = summarize(records)["dit"]
    assert s["vanilla"]["final"]["fd"] == pytest.approx({"mean": 5.0, "std": np.std([4, 6], ddof=1), "n": 2})
    # vanilla's final FD is 5.0: dtr seed 0 is there at step 20, seed 1 at step 30
    reach = s["dtr"]["steps_to_vanilla_final_fd"]
    assert reach["per_seed"] == [20, 30] and reach["mean"] == 25
    assert s["slow"]["steps_to_vanilla_final_fd"]["per_seed"] == [None]
    # compared at the same step: dtr at 30 against vanilla at 30, slow at 20 against vanilla at 20
    assert s["dtr"]["vs_vanilla"]["final"]["step"] == 30
    assert s["dtr"]["vs_vanilla"]["final"]["fd"]["diff"] == pytest.approx(3.1 - 5.0)
    assert s["slow"]["vs_vanilla"]["final"]["step"] == 20
    assert s["slow"]["vs_vanilla"]["final"]["fd"]["diff"] == pytest.approx(8.0 - 5.5)
    assert len(s["dtr"]["vs_vanilla"]["final"]["band_mse_ema"]) == 2


def test_separation_needs_a_difference_beyond_twice_its_standard_error():
    a = {"mean": 1.0, "std": 0.1, "n": 3}
    assert separation({"mean": 1.3, "std": 0.1, "n": 3}, a)["separates"]
    assert not separation({"mean": 1.1, "std": 0.1, "n": 3}, a)["separates"]
    assert separation({"mean": 1.1, "std": 0.1, "n": 3}, a)["se"] == pytest.approx((2 * 0.01 / 3) ** 0.5)
    assert not separation({"mean": None, "std": None, "n": 0}, a)["separates"]
    assert steps_to_reach([{"step": 5, "fd": 3.0}, {"step": 10, "fd": 1.0}], 2.0, last_step=5) is None


def _study(tmp_path: Path, work: str, steps: int, extra: list[str]) -> int:
    argv = ["--study", "--data", "digits", "--image-size", "8", "--seeds", "0,1", "--steps", str(steps),
            "--eval-every", "2", "--batch-size", "16", "--warmup", "0", "--eval-images", "64", "--band-images", "20",
            "--fd-samples", "60", "--sample-steps", "3", "--classifier-epochs", "1", "--device", "cpu",
            "--classifier", str(tmp_path / "classifier.pt"), "--work", str(tmp_path / work),
            "--out-dir", str(tmp_path / work / "out"), "--tag", "t", "--backbone-config", json.dumps(TINY), *extra]
    return convergence.main(argv)


@pytest.mark.slow
def test_study_end_to_end_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setattr(convergence, "BACKBONES", copy.deepcopy(convergence.BACKBONES))
    torch.set_num_threads(1)
    assert _study(tmp_path, "all", 4, ["--backbones", "dit,unet", "--variants", "vanilla,ant-uw+dtr,dtr-random"]) == 0
    doc = json.loads((tmp_path / "all" / "out" / "convergence-study-t.json").read_text())
    runs = {(r["backbone"], r["variant"], r["seed"]) for r in doc["runs"]}
    assert runs == {(b, v, s) for b in ("dit", "unet") for v in ("vanilla", "ant-uw+dtr") for s in (0, 1)} | {
        ("dit", "dtr-random", 0), ("dit", "dtr-random", 1)}
    for r in doc["runs"]:
        assert r["status"] == "done" and [c["step"] for c in r["checkpoints"]] == [2, 4]
        assert all(len(c["band_mse_ema"]) == 10 and c["fd"] >= 0 for c in r["checkpoints"])
    seeds = [r["checkpoints"][-1]["mse_ema"] for r in doc["runs"] if r["backbone"] == "dit" and r["variant"] == "vanilla"]
    assert seeds[0] != seeds[1]  # the seed changes the run
    final = doc["summary"]["dit"]["vanilla"]["final"]
    assert final["mse_ema"]["mean"] == pytest.approx(np.mean(seeds))
    assert final["mse_ema"]["std"] == pytest.approx(np.std(seeds, ddof=1))
    routed = json.loads((tmp_path / "all" / "dit-dtr-random.spec.json").read_text())
    assert routed["routing"]["window_shift"] == "random"
    for b in ("dit", "unet"):
        assert (tmp_path / "all" / "out" / f"convergence-study-t-{b}.png").stat().st_size > 10_000

    # stopped after 2 steps, then repeated with 4: the records of the uninterrupted study
    one = ["--backbones", "dit", "--variants", "vanilla"]
    assert _study(tmp_path, "resumed", 2, one) == 0
    assert _study(tmp_path, "resumed", 4, one) == 0
    resumed = json.loads((tmp_path / "resumed" / "out" / "convergence-study-t.json").read_text())["runs"]
    straight = [r for r in doc["runs"] if r["backbone"] == "dit" and r["variant"] == "vanilla"]
    for a, b in zip(resumed, straight):
        assert [c["step"] for c in a["checkpoints"]] == [2, 4]
        for ca, cb in zip(a["checkpoints"], b["checkpoints"]):
            assert ca["mse_ema"] == pytest.approx(cb["mse_ema"], rel=1e-5)
            assert ca["fd"] == pytest.approx(cb["fd"], rel=1e-4, abs=1e-9)


def test_runs_take_the_visible_gpus_in_turn_and_compile_reaches_every_run():
    from benchmarks.convergence_study import run_env, train_argv

    assert [run_env({}, i, 2)["CUDA_VISIBLE_DEVICES"] for i in range(5)] == ["0", "1", "0", "1", "0"]
    assert [run_env({"CUDA_VISIBLE_DEVICES": "4, 6"}, i, 2)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["4", "6", "4"]
    assert "CUDA_VISIBLE_DEVICES" not in run_env({}, 3, 1)  # one GPU (or none): every run keeps the parent's
    args = convergence.parse_args(["--study", "--compile", "--data", "digits"])
    cfg = convergence.BACKBONES["dit"]
    for compiled in (True, False):
        args.compile = compiled
        argv = train_argv(args, "dit", "vanilla", 0, cfg, Path("/nonexistent/run"), Path("/nonexistent/mtl.json"))
        assert ("--compile" in argv) == compiled
