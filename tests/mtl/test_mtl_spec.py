"""The spec's mtl section: validation through load_spec, and from_spec."""

from __future__ import annotations

import json
import math
from types import MappingProxyType

import numpy as np
import pytest
import torch

import dtrsurgeon
from dtrsurgeon import SpecError
from dtrsurgeon.mtl import (
    AntSetup,
    ClusterBalancedSampler,
    MinSNRWeighting,
    MtlError,
    NashMTL,
    PCGrad,
    UncertaintyWeighting,
    UniformTimestepSampler,
    from_spec,
    make_schedule,
)

FULL = {
    "num_timesteps": 500,
    "schedule": "cosine",
    "prediction": "v",
    "clustering": {"cost": "log_snr", "k": 4, "convention": "reference"},
    "weighting": "uw",
    "sampler": "balanced",
    "min_snr_gamma": 3.0,
    "uw": {"lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.0, "init_log_var": 1.5},
    "pcgrad": {"reduction": "sum", "seed": 4},
    "nash": {"max_norm": None, "update_every": 3},
}


def spec(mtl):
    return dtrsurgeon.load_spec({"version": 1, "mtl": mtl})


@pytest.mark.parametrize(
    "mtl",
    [
        {},
        {"clustering": {"cost": "snr", "k": 5}, "weighting": "uw"},
        {"clustering": {"cost": "affinity", "k": 5, "affinity_file": "a.npy"}, "weighting": "nash"},
        {"schedule": "custom", "alphas_cumprod_file": "ac.npy"},
        {"weighting": "min_snr", "prediction": "x0", "min_snr_gamma": 1},
        FULL,
    ],
)
def test_accepts(mtl):
    s = spec(mtl)
    assert isinstance(s.mtl, MappingProxyType)
    assert dtrsurgeon.load_spec(s.to_dict()).mtl == s.mtl


@pytest.mark.parametrize(
    "mtl, pointer, words",
    [
        ({"clustering": {"k": 0}}, "/mtl/clustering/k", ">= 1"),
        ({"clustering": {"k": 2.5}}, "/mtl/clustering/k", "integer"),
        ({"clustering": {"cost": "median"}}, "/mtl/clustering/cost", "median"),
        ({"clustering": {"cost": "affinity"}}, "/mtl/clustering", "affinity_file"),
        ({"clustering": {"k": 5, "centre": 1}}, "/mtl/clustering/centre", "unknown key"),
        ({"weighting": "gradnorm"}, "/mtl/weighting", "gradnorm"),
        ({"schedule": "sigmoid"}, "/mtl/schedule", "sigmoid"),
        ({"schedule": "custom"}, "/mtl", "alphas_cumprod_file"),
        ({"schedule": "cosine", "alphas_cumprod_file": "x.npy"}, "/mtl/schedule", '"custom"'),
        ({"num_timesteps": 0}, "/mtl/num_timesteps", ">= 1"),
        ({"prediction": "sample"}, "/mtl/prediction", "sample"),
        ({"min_snr_gamma": 0}, "/mtl/min_snr_gamma", "> 0"),
        ({"uw": {"lr": 0}}, "/mtl/uw/lr", "> 0"),
        ({"uw": {"betas": [0.9]}}, "/mtl/uw/betas", "at least 2"),
        ({"uw": {"betas": [0.9, 1.0]}}, "/mtl/uw/betas/1", "< 1"),
        ({"nash": {"update_every": 0}}, "/mtl/nash/update_every", ">= 1"),
        ({"pcgrad": {"reduction": "max"}}, "/mtl/pcgrad/reduction", "max"),
        ({"gamma": 5}, "/mtl/gamma", "unknown key"),
        ({"num_timesteps": 4097}, "/mtl/num_timesteps", "<= 4096"),
        ({"clustering": {"k": 101}}, "/mtl/clustering/k", "<= 100"),
        ({"pcgrad": {"seed": 2**64}}, "/mtl/pcgrad/seed", "<= 18446744073709551615"),
        ({"min_snr_gamma": float("nan")}, "/mtl/min_snr_gamma", "expected a finite number, got nan"),
        ({"uw": {"lr": float("inf")}}, "/mtl/uw/lr", "expected a finite number, got inf"),
        ({"uw": {"betas": [0.9, float("-inf")]}}, "/mtl/uw/betas/1", "expected a finite number, got -inf"),
        ({"alphas_cumprod_file": "a" * 5000, "schedule": "custom"}, "/mtl/alphas_cumprod_file", "at most 4096 characters"),
    ],
)
def test_rejects_with_pointer(mtl, pointer, words):
    with pytest.raises(SpecError) as info:
        spec(mtl)
    assert info.value.pointer == pointer
    assert words in str(info.value)


def test_from_spec_defaults():
    ant = from_spec({"version": 1, "mtl": {}})
    assert ant.schedule.name == "linear" and ant.schedule.num_timesteps == 1000
    assert ant.intervals == [(0, 0), (1, 1), (2, 6), (7, 21), (22, 999)]
    assert isinstance(ant.sampler, ClusterBalancedSampler) and isinstance(ant.weighting, UncertaintyWeighting)
    assert ant.config.min_snr_gamma == 5.0
    json.dumps(ant.describe())


def test_from_spec_full_settings():
    model = torch.nn.Linear(2, 2)
    ant = from_spec(spec(FULL), model)
    assert ant.schedule.name == "cosine" and ant.schedule.num_timesteps == 500 and len(ant.intervals) == 4
    uw = ant.weighting
    group = uw.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.01, (0.8, 0.99), 1e-6)
    assert uw.log_vars.detach().tolist() == [1.5] * 4
    pc = from_spec(spec({**FULL, "weighting": "pcgrad"}), model).weighting
    assert isinstance(pc, PCGrad) and pc.reduction == "sum"
    nash = from_spec(spec({**FULL, "weighting": "nash"}), model).weighting
    assert isinstance(nash, NashMTL) and nash.max_norm is None and nash.update_every == 3
    ms = from_spec(spec({**FULL, "weighting": "min_snr", "sampler": "uniform"}))
    assert isinstance(ms.weighting, MinSNRWeighting) and ms.weighting.prediction == "v" and ms.weighting.gamma == 3.0
    assert isinstance(ms.sampler, UniformTimestepSampler)
    assert isinstance(from_spec(spec({"weighting": "none"})).sampler, UniformTimestepSampler)


def test_from_spec_files_resolve_next_to_the_spec(tmp_path):
    sched = make_schedule("scaled_linear", 64)
    np.save(tmp_path / "ac.npy", np.array(sched.alphas_cumprod))
    A = np.exp(-np.abs(np.subtract.outer(np.arange(64), np.arange(64))) / 10.0)
    np.save(tmp_path / "aff.npy", A)
    doc = {
        "version": 1,
        "mtl": {"schedule": "custom", "alphas_cumprod_file": "ac.npy", "clustering": {"cost": "affinity", "k": 3, "affinity_file": "aff.npy"}},
    }
    (tmp_path / "spec.json").write_text(json.dumps(doc))
    ant = from_spec(tmp_path / "spec.json")
    assert ant.schedule.num_timesteps == 64 and len(ant.intervals) == 3
    with pytest.raises(MtlError, match="cannot read"):
        from_spec(doc)  # in memory: relative to the working directory, where there is no ac.npy
    assert from_spec(doc, base_dir=tmp_path).intervals == ant.intervals


def test_a_custom_schedule_longer_than_the_bound_is_refused_at_its_file(tmp_path):
    np.save(tmp_path / "ac.npy", np.linspace(0.999, 0.001, 4097))
    with pytest.raises(SpecError, match=r"^spec /mtl/alphas_cumprod_file: ac.npy holds 4097 values; ANT clusters at most 4096"):
        from_spec(spec({"schedule": "custom", "alphas_cumprod_file": "ac.npy"}), base_dir=tmp_path)


def test_a_json_string_spec_resolves_files_against_the_working_directory(tmp_path, monkeypatch):
    np.save(tmp_path / "ac.npy", np.array(make_schedule("linear", 64).alphas_cumprod))
    text = json.dumps({"version": 1, "mtl": {"schedule": "custom", "alphas_cumprod_file": "ac.npy", "clustering": {"k": 3}}})
    monkeypatch.chdir(tmp_path)
    assert from_spec(text).schedule.num_timesteps == 64


def test_from_spec_semantic_errors(tmp_path):
    with pytest.raises(SpecError) as info:
        from_spec(spec({"num_timesteps": 30, "clustering": {"k": 31}}))
    assert info.value.pointer == "/mtl/clustering/k" and "k <= 30" in str(info.value)
    np.save(tmp_path / "ac.npy", np.linspace(0.9, 0.1, 10))
    with pytest.raises(SpecError) as info:
        from_spec(spec({"num_timesteps": 20, "schedule": "custom", "alphas_cumprod_file": "ac.npy"}), base_dir=tmp_path)
    assert info.value.pointer == "/mtl/num_timesteps"
    np.save(tmp_path / "aff.npy", np.eye(50))
    with pytest.raises(MtlError, match="50 x 50 but T = 1000"):
        from_spec(spec({"clustering": {"cost": "affinity", "affinity_file": "aff.npy"}}), base_dir=tmp_path)
    with pytest.raises(MtlError, match="pass the model"):
        from_spec(spec({"weighting": "pcgrad"}))
    with pytest.raises(MtlError, match='no "mtl" section'):
        from_spec({"version": 1})


# --- a training loop, every weighting ----------------------------------------------------


def train(ant: AntSetup, model, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    logs = {}
    for _ in range(steps):
        x = torch.randn(8, 3, generator=g)
        t = ant.sample_timesteps(8, generator=g)
        per_sample = ((model(x) - t[:, None].float() / 1000) ** 2).mean(dim=1)
        opt.zero_grad(set_to_none=True)
        logs = ant.backward(per_sample, t)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        ant.step()
    return logs


@pytest.mark.parametrize("weighting", ["uw", "pcgrad", "nash", "min_snr", "none"])
def test_training_loop_and_checkpoint(weighting):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ant = from_spec(spec({"num_timesteps": 100, "clustering": {"k": 4}, "weighting": weighting}), model)
    logs = train(ant, model)
    assert math.isfinite(logs["loss"])
    state = ant.state_dict()
    assert state["weighting"] == weighting and state["intervals"] == [list(p) for p in ant.intervals]
    fresh = from_spec(spec({"num_timesteps": 100, "clustering": {"k": 4}, "weighting": weighting}), model)
    fresh.load_state_dict(state)
    if weighting == "uw":
        torch.testing.assert_close(fresh.weighting.log_vars, ant.weighting.log_vars)
        assert set(logs) >= {"uw/weight/0", "uw/weight/3"}
    other = from_spec(spec({"num_timesteps": 100, "clustering": {"k": 3}, "weighting": weighting}), model)
    with pytest.raises(MtlError, match="same clustering"):
        other.load_state_dict(state)


def test_gradient_weightings_refuse_a_grad_scaler_and_a_loss():
    model = torch.nn.Linear(3, 2)
    ant = from_spec(spec({"num_timesteps": 100, "weighting": "pcgrad"}), model)
    t = ant.sample_timesteps(4)
    loss = model(torch.randn(4, 3)).pow(2).mean(dim=1)
    with pytest.raises(MtlError, match="unscaled"):
        ant.backward(loss, t, scaler=object())
    with pytest.raises(MtlError, match="call backward"):
        ant.loss(loss, t)
