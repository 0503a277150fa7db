"""PCGrad and Nash-MTL over cluster gradients, single process and under
torch.distributed (gloo, two CPU ranks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dtrsurgeon.mtl import (
    MtlError,
    NashMTL,
    PCGrad,
    UncertaintyWeighting,
    cluster_gradients,
    nash_weights,
    pcgrad_project,
)
from tests.conftest import exit_now

vectors = arrays(np.float64, 6, elements=st.floats(-10, 10))


@settings(max_examples=200, deadline=None)
@given(a=vectors, b=vectors, seed=st.integers(0, 2**16))
def test_pcgrad_leaves_no_negative_inner_product_between_two_tasks(a, b, seed):
    G = torch.tensor(np.stack([a, b]))
    P = pcgrad_project(G, torch.Generator().manual_seed(seed))
    tol = 1e-9 * float((G * G).sum() + 1)
    assert float(P[0] @ P[1]) >= -tol
    assert float(P[0] @ G[1]) >= -tol and float(P[1] @ G[0]) >= -tol
    if float(G[0] @ G[1]) >= 0:  # no conflict: nothing changes
        torch.testing.assert_close(P, G)


def test_pcgrad_hand_checked():
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    P = pcgrad_project(G)
    torch.testing.assert_close(P, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))


def toy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(12, 4)
    y = torch.randn(12, 3)
    ids = torch.tensor([0, 1, 2, 2, 1, 0, 0, 0, 1, 2, 0, 1])
    return model, x, y, ids


def per_sample(model, x, y):
    return ((model(x) - y) ** 2).mean(dim=1)


def manual_cluster_grads(model, x, y, ids, k):
    rows = []
    for c in range(k):
        model.zero_grad()
        per_sample(model, x[ids == c], y[ids == c]).mean().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


def grads_of(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_cluster_gradients_group_by_id():
    model, x, y, ids = toy()
    G, counts = cluster_gradients(per_sample(model, x, y), ids, 4, list(model.parameters()))
    torch.testing.assert_close(G[:3], manual_cluster_grads(model, x, y, ids, 3))
    assert counts.tolist() == [5, 4, 3, 0] and float(G[3].abs().sum()) == 0.0


def test_pcgrad_backward_writes_the_mean_of_projected_gradients():
    model, x, y, ids = toy()
    G = manual_cluster_grads(model, x, y, ids, 3)
    expected = pcgrad_project(G, torch.Generator().manual_seed(7)).mean(dim=0)
    pc = PCGrad(model.parameters(), 3, seed=7)
    logs = pc.backward(per_sample(model, x, y), ids)
    torch.testing.assert_close(grads_of(model), expected)
    assert set(logs) == {"pcgrad/conflicts", "pcgrad/grad_norm"}
    with pytest.raises(MtlError, match="'mean' or 'sum'"):
        PCGrad(model.parameters(), 3, reduction="max")


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 6), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_nash_weights_meet_their_optimality_condition(k, seed, scale):
    G = np.random.default_rng(seed).normal(size=(k, k + 5)) * scale
    M = G @ G.T
    alpha = nash_weights(M)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(alpha * (M @ alpha), np.ones(k), rtol=1e-6)


def test_nash_weights_hand_checked():
    # orthogonal gradients: alpha_k = 1 / |g_k|
    M = np.diag([4.0, 1.0, 0.25])
    np.testing.assert_allclose(nash_weights(M), [0.5, 1.0, 2.0], rtol=1e-8)
    # a zero gradient gets weight 0 and the others still meet the condition
    G = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]])
    M = G @ G.T
    a = nash_weights(M)
    assert a[1] == 0.0
    np.testing.assert_allclose((a * (M @ a))[[0, 2]], [1.0, 1.0], rtol=1e-6)
    # identical gradients share the weight
    np.testing.assert_allclose(nash_weights(np.full((2, 2), 2.0)), [0.5, 0.5], rtol=1e-6)
    with pytest.raises(MtlError, match="square"):
        nash_weights(np.ones((2, 3)))


def test_nash_backward_writes_weighted_sum_and_reuses_weights():
    model, x, y, ids = toy()
    G = manual_cluster_grads(model, x, y, ids, 3)
    alpha = nash_weights((G.double() @ G.double().T).numpy())
    nash = NashMTL(model.parameters(), 3, max_norm=None, update_every=2)
    logs = nash.backward(per_sample(model, x, y), ids)
    expected = torch.as_tensor(alpha, dtype=torch.float32) @ G
    torch.testing.assert_close(grads_of(model), expected, rtol=1e-5, atol=1e-7)
    assert logs["nash/alpha/0"] == pytest.approx(alpha[0])
    # second call: the cheap path (one backward of sum alpha_k L_k) gives the same update
    model.zero_grad()
    nash.backward(per_sample(model, x, y), ids)
    torch.testing.assert_close(grads_of(model), expected, rtol=1e-5, atol=1e-7)
    assert nash.state_dict()["calls"] == 2


def test_nash_clips_to_max_norm():
    model, x, y, ids = toy()
    nash = NashMTL(model.parameters(), 3, max_norm=1e-3)
    logs = nash.backward(per_sample(model, x, y), ids)
    assert logs["nash/grad_norm"] > 1e-3
    assert float(grads_of(model).norm()) == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(MtlError, match="update_every"):
        NashMTL(model.parameters(), 3, update_every=0)
    with pytest.raises(MtlError, match="max_norm"):
        NashMTL(model.parameters(), 3, max_norm=0.0)


# --- torch.distributed: per-cluster gradients all-reduced across ranks ---------------------


def _halves(rank):
    model, x, y, ids = toy()
    half = slice(0, 6) if rank == 0 else slice(6, 12)  # the ranks hold unequal cluster counts
    return model, x[half], y[half], ids[half]


def _methods(model):
    return {"pcgrad": PCGrad(model.parameters(), 3, seed=3), "nash": NashMTL(model.parameters(), 3, max_norm=None, update_every=2)}


def _run(method, model, x, y, ids):
    """One backward, or for Nash two (the second reuses its weights: one weighted pass)."""
    w = _methods(model)[method]
    for _ in range(1 if method == "pcgrad" else 2):
        model.zero_grad()
        w.backward(per_sample(model, x, y), ids)


# per-rank (losses, cluster ids) for UW: cluster 0 and 2 pull in opposite directions on the two ranks
UW_LOSSES = [
    (torch.tensor([3.0, 0.5, 0.2, 0.1]), torch.tensor([0, 1, 2, 2])),
    (torch.tensor([0.1, 0.4, 0.2, 2.5]), torch.tensor([0, 0, 1, 2])),
]


# cluster ids for the global-batch UW check: cluster 2 is absent from rank 0's half
UW_GLOBAL_IDS = [torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 2, 2, 2, 2, 1])]


def _ddp_worker(rank, world, tmp):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        out = {}
        for method in ("pcgrad", "nash"):
            model, x, y, ids = _halves(rank)
            _run(method, model, x, y, ids)
            out[method] = grads_of(model)
        uw = UncertaintyWeighting(3)
        uw.loss(*UW_LOSSES[rank]).backward()
        uw.step()
        out["uw"] = uw.log_vars.detach()
        # UW over the global batch: rescaled local means, then DDP's gradient average (done by hand)
        model, x, y, _ = _halves(rank)
        uw = UncertaintyWeighting(3, init_log_var=0.3)
        uw.loss(per_sample(model, x, y), UW_GLOBAL_IDS[rank], global_batch=True).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad.div_(world)
        uw.step()
        out["uw_global_grad"] = grads_of(model)
        out["uw_global_log_vars"] = uw.log_vars.detach()
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    exit_now()


@pytest.mark.slow
def test_distributed_ranks_agree_with_one_process(tmp_path):
    """PCGrad and Nash on two ranks holding half a batch each give every rank the
    update of one process on the whole batch; UW keeps identical weights, and with
    global_batch=True its gradients are those of one process too."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for method in ("pcgrad", "nash"):
        model, x, y, ids = toy()
        _run(method, model, x, y, ids)
        for r in range(2):
            torch.testing.assert_close(results[r][method], grads_of(model), rtol=1e-5, atol=1e-6)
    # UW: the step uses the mean of the ranks' log-variance gradients
    grads = []
    for r in range(2):
        uw = UncertaintyWeighting(3)
        uw.loss(*UW_LOSSES[r]).backward()
        grads.append(uw.log_vars.grad.clone())
    assert bool((grads[0].sign() != grads[1].sign()).any())  # a rank alone would step the other way
    uw = UncertaintyWeighting(3)
    uw.log_vars.grad = (grads[0] + grads[1]) / 2
    uw.optimizer.step()
    for r in range(2):
        torch.testing.assert_close(results[r]["uw"], uw.log_vars.detach())
    # UW with global_batch=True: exactly one process on the whole batch
    model, x, y, _ = toy()
    uw = UncertaintyWeighting(3, init_log_var=0.3)
    uw.loss(per_sample(model, x, y), torch.cat(UW_GLOBAL_IDS)).backward()
    uw.step()
    for r in range(2):
        torch.testing.assert_close(results[r]["uw_global_grad"], grads_of(model))
        torch.testing.assert_close(results[r]["uw_global_log_vars"], uw.log_vars.detach())
