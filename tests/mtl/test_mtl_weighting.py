"""Min-SNR per parameterisation and uncertainty weighting (UW)."""

from __future__ import annotations

import math

import pytest
import torch

from dtrsurgeon.mtl import MinSNRWeighting, MtlError, UncertaintyWeighting, cluster_mean_losses, make_schedule, min_snr_weights

# --- Min-SNR ---------------------------------------------------------------------------

SNR = torch.tensor([0.0, 0.5, 5.0, 20.0], dtype=torch.float64)


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("epsilon", [1.0, 1.0, 1.0, 0.25]),  # min(snr, 5) / snr, and 1 at snr = 0
        ("v", [0.0, 0.5 / 1.5, 5 / 6, 5 / 21]),  # min(snr, 5) / (snr + 1)
        ("x0", [0.0, 0.5, 5.0, 5.0]),  # min(snr, 5)
    ],
)
def test_min_snr_weight_table(prediction, expected):
    assert min_snr_weights(SNR, 5.0, prediction).tolist() == pytest.approx(expected)


def test_min_snr_is_the_same_objective_in_every_parameterisation():
    # x_t = a x0 + s eps (VP).  One denoiser, its error written as eps, x0 or v error:
    # each Min-SNR-weighted loss must be the same number.
    torch.manual_seed(0)
    sched = make_schedule("cosine", 1000)
    t = torch.tensor([0, 3, 50, 400, 900, 999])
    abar = torch.tensor(sched.alphas_cumprod)[t]
    a, s = abar.sqrt()[:, None], (1 - abar).sqrt()[:, None]
    x0, eps = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, 16, dtype=torch.float64)
    xt = a * x0 + s * eps
    eps_hat = eps + 0.1 * torch.randn(6, 16, dtype=torch.float64)
    x0_hat = (xt - s * eps_hat) / a
    v, v_hat = a * eps - s * x0, a * eps_hat - s * x0_hat
    losses = {
        "epsilon": ((eps - eps_hat) ** 2).mean(1),
        "x0": ((x0 - x0_hat) ** 2).mean(1),
        "v": ((v - v_hat) ** 2).mean(1),
    }
    snr = torch.as_tensor(sched.snr)[t]
    weighted = {p: (min_snr_weights(snr, 5.0, p) * l) for p, l in losses.items()}
    torch.testing.assert_close(weighted["x0"], weighted["epsilon"])
    torch.testing.assert_close(weighted["v"], weighted["epsilon"])


def test_min_snr_weighting_looks_up_each_samples_timestep():
    sched = make_schedule("linear", 100)
    w = MinSNRWeighting(sched.snr, gamma=5.0, prediction="epsilon")
    t = torch.tensor([0, 99, 50])
    loss = torch.tensor([1.0, 2.0, 3.0])
    expected = (loss * min_snr_weights(torch.as_tensor(sched.snr)[t], 5.0).float()).mean()
    assert float(w.loss(loss, t)) == pytest.approx(float(expected))
    perm = torch.tensor([2, 0, 1])
    assert float(w.loss(loss[perm], t[perm])) == pytest.approx(float(expected))


def test_min_snr_bad_settings():
    with pytest.raises(MtlError, match="unknown prediction type 'sample'"):
        min_snr_weights(SNR, 5.0, "sample")
    with pytest.raises(MtlError, match="gamma must be > 0"):
        min_snr_weights(SNR, 0.0)


# --- UW --------------------------------------------------------------------------------


def test_uw_gradient_with_respect_to_each_log_variance():
    uw = UncertaintyWeighting(4, init_log_var=0.0)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -0.2, 1.0, 0.0]))
    per_sample = torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0], requires_grad=True)
    ids = torch.tensor([0, 0, 1, 2, 1])  # cluster 3 absent
    loss = uw.loss(per_sample, ids)
    loss.backward()
    means = torch.tensor([2.0, 3.0, 5.0])
    s = uw.log_vars.detach()[:3]
    expected = 0.5 * (1 - means * torch.exp(-s))
    torch.testing.assert_close(uw.log_vars.grad[:3], expected)
    assert uw.log_vars.grad[3] == 0.0
    assert float(loss.detach()) == pytest.approx(float((0.5 * (means * torch.exp(-s) + s)).sum()))
    # each sample's loss is weighted by exp(-s_k) / (2 n_k)
    n = torch.tensor([2.0, 2.0, 2.0, 1.0, 2.0])
    torch.testing.assert_close(per_sample.grad, torch.exp(-uw.log_vars.detach()[ids]) / (2 * n))


def test_uw_groups_by_cluster_id_not_position():
    uw = UncertaintyWeighting(3)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.5, -1.0, 2.0]))
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    assert float(uw.loss(loss, ids).detach()) == pytest.approx(float(uw.loss(loss[perm], ids[perm]).detach()))


def test_uw_parts_of_a_batch_average_to_the_whole_batch_loss():
    """whole_batch_ids: the mean of the parts' losses is the whole batch's loss, value and gradients,
    even where a cluster is absent from one part (cluster 2 is only in the second half)."""
    uw = UncertaintyWeighting(4)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -0.2, 1.0, 0.5]))
    loss = torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0, 6.0, 0.5, 2.5], requires_grad=True)
    ids = torch.tensor([0, 1, 0, 1, 2, 1, 2, 0])  # cluster 3 absent everywhere
    whole = uw.loss(loss, ids)
    g_whole = torch.autograd.grad(whole, [loss, uw.log_vars])
    parts = sum(uw.loss(loss[sl], ids[sl], whole_batch_ids=ids) for sl in (slice(0, 4), slice(4, 8))) / 2
    g_parts = torch.autograd.grad(parts, [loss, uw.log_vars])
    assert float(parts) == pytest.approx(float(whole))
    for a, b in zip(g_whole, g_parts):
        torch.testing.assert_close(b, a)
    # without the whole batch's counts each half weights its own means: not the whole loss
    halves = sum(uw.loss(loss[sl], ids[sl]) for sl in (slice(0, 4), slice(4, 8))) / 2
    assert float(halves) != pytest.approx(float(whole))


@pytest.mark.parametrize("whole, needle", [
    (torch.tensor([0, 1, 0, 1, 2]), "not a whole multiple"),
    (torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), "does not contain this part's cluster ids"),
    (torch.tensor([0, 1, 0, 7, 0, 1, 0, 1]), "must lie in 0..3"),
])
def test_uw_whole_batch_ids_that_do_not_fit_are_refused(whole, needle):
    uw = UncertaintyWeighting(4)
    with pytest.raises(MtlError, match=needle):
        uw.loss(torch.ones(4), torch.tensor([0, 1, 0, 2]), whole_batch_ids=whole)


def test_uw_own_optimiser_settings_and_step():
    uw = UncertaintyWeighting(2, lr=0.1)
    uw.loss(torch.tensor([4.0, 0.25]), torch.tensor([0, 1])).backward()
    uw.step()
    # Adam's first step moves each parameter by lr against its gradient's sign
    torch.testing.assert_close(uw.log_vars.detach(), torch.tensor([0.1, -0.1]))
    assert uw.log_vars.grad is None
    assert uw.weights().tolist() == pytest.approx([0.5 * math.exp(-0.1), 0.5 * math.exp(0.1)])
    assert uw.optimizer.param_groups[0]["lr"] == 0.1 and uw.optimizer.param_groups[0]["weight_decay"] == 0.0


def test_uw_state_dict_resumes_exactly():
    def train(uw, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            uw.loss(torch.rand(6, generator=g) * 3, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
            uw.step()

    a = UncertaintyWeighting(3)
    train(a, 5, 0)
    saved = a.state_dict()
    train(a, 3, 1)
    b = UncertaintyWeighting(3)
    b.load_state_dict(saved)
    train(b, 3, 1)
    torch.testing.assert_close(a.log_vars.detach(), b.log_vars.detach())
    with pytest.raises(MtlError, match="3 clusters but this run has 4"):
        UncertaintyWeighting(4).load_state_dict(saved)


def test_cluster_mean_losses_and_bad_shapes():
    means, counts = cluster_mean_losses(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([2, 0, 2]), 4)
    assert means.tolist() == [2.0, 0.0, 3.5, 0.0] and counts.tolist() == [1, 0, 2, 0]
    with pytest.raises(MtlError, match=r"shape \[B\]"):
        cluster_mean_losses(torch.ones(2, 3), torch.zeros(2, 3), 2)
    with pytest.raises(MtlError, match="cluster_ids has shape"):
        cluster_mean_losses(torch.ones(3), torch.zeros(2), 2)
    with pytest.raises(MtlError, match="0..1"):
        cluster_mean_losses(torch.ones(2), torch.tensor([0, 2]), 2)
    with pytest.raises(MtlError, match="empty batch"):
        cluster_mean_losses(torch.ones(0), torch.zeros(0, dtype=torch.long), 2)
    with pytest.raises(MtlError, match="num_clusters"):
        UncertaintyWeighting(0)
