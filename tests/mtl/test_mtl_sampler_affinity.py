"""Cluster-balanced sampling and task-affinity estimation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtrsurgeon.mtl import (
    ClusterBalancedSampler,
    MtlError,
    UniformTimestepSampler,
    cluster_ids,
    estimate_task_affinity,
    expand_affinity,
    interval_clustering,
    load_affinity,
)

PARTS = [(0, 0), (1, 3), (4, 40), (41, 999)]


@pytest.mark.parametrize("batch", [4, 64, 7, 2, 1])
def test_balanced_sampler_gives_equal_shares(batch):
    s = ClusterBalancedSampler(PARTS)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = s.sample(batch, generator=g)
        assert t.shape == (batch,) and t.dtype == torch.long
        counts = torch.bincount(cluster_ids(t, PARTS), minlength=4)
        assert int(counts.max() - counts.min()) <= 1
        if batch % 4 == 0:
            assert counts.tolist() == [batch // 4] * 4


def test_balanced_sampler_is_uniform_inside_each_cluster_and_balanced_over_time():
    s = ClusterBalancedSampler(PARTS)
    g = torch.Generator().manual_seed(1)
    t = torch.cat([s.sample(6, generator=g) for _ in range(4000)])  # 6 = 4 + 2: remainders rotate
    counts = torch.bincount(cluster_ids(t, PARTS), minlength=4).double()
    assert torch.allclose(counts / counts.sum(), torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)
    inside = t[(t >= 1) & (t <= 3)]
    freq = torch.bincount(inside - 1, minlength=3).double() / inside.numel()
    assert torch.allclose(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03)
    assert int(t.min()) == 0 and int(t.max()) <= 999


def test_balanced_sampler_output_is_shuffled():
    t = ClusterBalancedSampler([(0, 4), (5, 9)]).sample(64, generator=torch.Generator().manual_seed(0))
    assert not bool((t[:32] <= 4).all())


def test_samplers_reject_bad_input():
    with pytest.raises(MtlError, match="batch_size"):
        ClusterBalancedSampler(PARTS).sample(0)
    with pytest.raises(MtlError, match="contiguous"):
        ClusterBalancedSampler([(0, 3), (5, 9)])
    with pytest.raises(MtlError, match="num_timesteps"):
        UniformTimestepSampler(0)
    t = UniformTimestepSampler(10).sample(500, generator=torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(10))


# --- task affinity ------------------------------------------------------------------


class Direction(torch.nn.Module):
    """loss(t) = batch * (w . d(t)), d(t) = (cos 0.01 t, sin 0.01 t): grad_w = batch * d(t)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.3, -0.7]))
        self.unused = torch.nn.Parameter(torch.zeros(3))

    def forward(self, t):
        d = torch.tensor([np.cos(0.01 * t), np.sin(0.01 * t)], dtype=torch.float32)
        return self.w @ d


def loss_fn(model, batch, t):
    return batch * model(t)


def test_affinity_is_gradient_cosine_at_sampled_timesteps(tmp_path):
    model = Direction()
    A = estimate_task_affinity(model, loss_fn, [1.0, 2.0], [0, 50, 99], num_timesteps=100, progress=True, save=tmp_path / "a.npy")
    assert A.shape == (100, 100)
    for i in (0, 50, 99):
        for j in (0, 50, 99):
            assert A[i, j] == pytest.approx(np.cos(0.01 * (i - j)), abs=1e-6)
    # t = 25 lies halfway between samples 0 and 50
    assert A[25, 99] == pytest.approx((np.cos(0.99) + np.cos(0.49)) / 2, abs=1e-6)
    assert np.allclose(A, A.T) and np.all(np.diag(A) == 1.0)
    assert model.w.grad is None  # .grad is left alone
    saved = load_affinity(tmp_path / "a.npy", 100)
    assert np.array_equal(saved, A)
    assert interval_clustering(saved, 3, "affinity")[0][0] == 0


def test_affinity_sees_the_same_noise_for_a_batch_at_every_timestep():
    draws = {}

    def noisy_loss(model, batch, t):
        draws.setdefault(batch, []).append(float(torch.randn(())))
        return model(t) * (1 + 0 * draws[batch][-1])

    before = torch.random.get_rng_state()
    estimate_task_affinity(Direction(), noisy_loss, [0, 1], 4, num_timesteps=40, progress=False)
    assert len(set(draws[0])) == 1 and len(set(draws[1])) == 1 and draws[0][0] != draws[1][0]
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's RNG is untouched


def test_expand_affinity_interpolates_and_clamps():
    S = np.array([[1.0, 0.2], [0.2, 1.0]])
    A = expand_affinity(S, [2, 6], 9)
    assert A[0, 8] == pytest.approx(0.2) and A[1, 2] == pytest.approx(1.0)  # clamped ends
    assert A[4, 6] == pytest.approx(0.6)  # halfway
    assert A[2, 6] == pytest.approx(0.2)
    with pytest.raises(MtlError, match="sorted and distinct"):
        expand_affinity(S, [6, 2], 9)
    with pytest.raises(MtlError, match="expected"):
        expand_affinity(np.eye(3), [2, 6], 9)


def test_affinity_bad_input(tmp_path):
    m = Direction()
    with pytest.raises(MtlError, match="at least one batch"):
        estimate_task_affinity(m, loss_fn, [], 3, num_timesteps=10, progress=False)
    with pytest.raises(MtlError, match="0..9"):
        estimate_task_affinity(m, loss_fn, [1.0], [0, 10], num_timesteps=10, progress=False)
    with pytest.raises(MtlError, match="cannot sample 11"):
        estimate_task_affinity(m, loss_fn, [1.0], 11, num_timesteps=10, progress=False)
    with pytest.raises(MtlError, match="gradient at t=0 is zero"):
        estimate_task_affinity(m, lambda model, b, t: model.w.sum() * 0.0, [1.0], 2, num_timesteps=10, progress=False)
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(MtlError, match="must be square"):
        load_affinity(tmp_path / "rect.npy")
    with pytest.raises(MtlError, match="NaN"):
        load_affinity(tmp_path / "nan.npy")
    with pytest.raises(MtlError, match="2 x 2 but T = 5"):
        load_affinity(tmp_path / "nan.npy", 5)
    with pytest.raises(MtlError, match="cannot read"):
        load_affinity(tmp_path / "missing.npy")
