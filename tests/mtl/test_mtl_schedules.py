"""Noise schedules: the published formulas, custom arrays, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtrsurgeon.mtl import MtlError, load_alphas_cumprod, make_schedule, schedule_from_alphas_cumprod


def test_linear_is_ddpm():
    s = make_schedule("linear", 1000)
    betas = 1.0 - s.alphas_cumprod / np.concatenate(([1.0], s.alphas_cumprod[:-1]))
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert s.snr[0] == pytest.approx(0.9999 / 0.0001)
    assert s.num_timesteps == 1000


def test_linear_scales_with_t():
    s = make_schedule("linear", 250)  # betas from 4e-4 to 0.08
    betas = 1.0 - s.alphas_cumprod / np.concatenate(([1.0], s.alphas_cumprod[:-1]))
    assert betas[0] == pytest.approx(4e-4) and betas[-1] == pytest.approx(0.08)


def test_cosine_follows_f():
    T, s_ = 1000, 0.008
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    a = make_schedule("cosine", T).alphas_cumprod
    for t in (0, 10, 500, 900):
        assert a[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_scaled_linear_is_latent_diffusion():
    s = make_schedule("scaled-linear", 1000)
    assert s.name == "scaled_linear"
    betas = 1.0 - s.alphas_cumprod / np.concatenate(([1.0], s.alphas_cumprod[:-1]))
    assert betas[0] == pytest.approx(0.00085) and betas[-1] == pytest.approx(0.012)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_snr_decreases(name):
    snr = make_schedule(name, 300).snr
    assert np.all(np.diff(snr) < 0) and np.all(snr > 0)
    assert np.allclose(np.log(snr), make_schedule(name, 300).log_snr)


def test_custom_alphas_cumprod(tmp_path):
    a = np.linspace(0.99, 0.0, 50)
    s = schedule_from_alphas_cumprod(a)
    assert s.snr[-1] == 0.0 and s.log_snr[-1] == -np.inf
    np.save(tmp_path / "ac.npy", a)
    loaded = load_alphas_cumprod(tmp_path / "ac.npy")
    assert np.array_equal(loaded.alphas_cumprod, a) and loaded.name == "file:ac.npy"
    with pytest.raises(ValueError):
        s.alphas_cumprod[0] = 0.5  # read-only


@pytest.mark.parametrize(
    "value, match",
    [
        (np.ones((2, 2)) * 0.5, "1-D"),
        ([], "1-D"),
        ([0.5, float("nan")], "non-finite value at t=1"),
        ([0.9, 1.0], r"\[0, 1\); t=1"),
        ([-0.1], r"\[0, 1\); t=0"),
        (["a"], "array of numbers"),
    ],
)
def test_bad_custom(value, match):
    with pytest.raises(MtlError, match=match):
        schedule_from_alphas_cumprod(value)


def test_bad_names_and_sizes(tmp_path):
    with pytest.raises(MtlError, match="unknown noise schedule 'sigmoid'; expected one of: linear, cosine, scaled_linear"):
        make_schedule("sigmoid")
    with pytest.raises(MtlError, match="integer >= 1"):
        make_schedule("cosine", 0)
    with pytest.raises(MtlError, match="needs T > 20"):
        make_schedule("linear", 10)
    with pytest.raises(MtlError, match="cannot read alphas_cumprod"):
        load_alphas_cumprod(tmp_path / "missing.npy")
