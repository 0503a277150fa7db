"""Mask tables: bit-exact with the reference definition (method.md §1)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dtrsurgeon import load_spec, mask_table, task_index


def reference_table(C: int, beta: float, alpha: float, N: int) -> np.ndarray:
    """The definition, written out one task at a time."""
    K = int(C * beta)
    table = np.zeros((N, C), dtype=bool)
    for i in range(N):
        u = i / (N - 1)
        start = int(np.round(u**alpha * (C - K)))  # numpy rounds half to even
        table[i, start:start + K] = True
    return table


def spec(**routing):
    extra = routing.pop("timestep", {})
    return load_spec({"version": 1, "routing": routing, "timestep": extra})


@pytest.mark.parametrize("C,beta,alpha,N", [
    (1152, 0.8, 4.0, 1000), (1024, 0.8, 4.0, 1000), (768, 0.8, 4.0, 1000), (384, 0.8, 4.0, 1000),
    (384, 0.5, 1.0, 1000), (96, 0.7, 2.0, 250), (64, 0.9, 3.0, 17), (10, 0.3, 0.5, 5), (7, 0.5, 4.0, 2),
    (320, 0.6, 4.0, 1000), (33, 0.85, 6.0, 101),
])
def test_sliding_power_is_bit_exact(C, beta, alpha, N):
    s = spec(channel_ratio=beta, task_weights={"curve": "power", "alpha": alpha}, timestep={"num_tasks": N})
    ours = mask_table(s, C)
    assert ours.dtype == torch.bool and ours.shape == (N, C)
    assert np.array_equal(ours.numpy(), reference_table(C, beta, alpha, N))


def test_half_is_rounded_to_even():
    # C - K = 2, N = 3: u = 0.5, alpha 1 -> 0.5 * 2 = 1.0; alpha 2 -> 0.25 * 2 = 0.5 -> 0 (even), not 1
    s = spec(channel_ratio=0.6, task_weights={"curve": "power", "alpha": 2.0}, timestep={"num_tasks": 3})
    table = mask_table(s, 5)  # K = 3
    assert table[1].nonzero().flatten().tolist() == [0, 1, 2]


@settings(max_examples=40, deadline=None)
@given(C=st.integers(2, 300), beta=st.floats(0.05, 1.0), alpha=st.floats(0.25, 8.0), N=st.integers(2, 200),
       shift=st.sampled_from(["sliding", "fixed", "random"]),
       curve=st.sampled_from(["power", "linear", "cosine"]))
def test_mask_properties(C, beta, alpha, N, shift, curve):
    tw = {"curve": curve, "alpha": alpha} if curve == "power" else {"curve": curve}
    s = spec(channel_ratio=beta, window_shift=shift, task_weights=tw, timestep={"num_tasks": N})
    table = mask_table(s, C)
    K = max(1, int(C * beta))
    assert (table.sum(1) == K).all()  # K active channels per task
    if shift == "random":
        return
    starts = table.int().argmax(1)
    assert (starts[1:] >= starts[:-1]).all()  # windows only move forward
    windows = table.int().cumsum(1)
    assert (table.sum(1) == windows[:, -1]).all()
    contiguous = (starts[:, None] <= torch.arange(C)) & (torch.arange(C) < starts[:, None] + K)
    assert torch.equal(table, contiguous)
    assert starts[0] == 0
    if shift == "sliding":
        assert starts[-1] == C - K  # the noisiest task ends at the last channel


def test_fixed_uses_one_window():
    table = mask_table(spec(window_shift="fixed"), 100)
    assert (table == table[0]).all() and table[0, :80].all() and not table[0, 80:].any()


def test_random_is_seeded():
    a = mask_table(spec(window_shift="random", seed=1), 64)
    b = mask_table(spec(window_shift="random", seed=1), 64)
    c = mask_table(spec(window_shift="random", seed=2), 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each task draws its own set


def test_curves_order_the_slide():
    power = mask_table(spec(task_weights={"curve": "power", "alpha": 4.0}), 200).int().argmax(1)
    linear = mask_table(spec(task_weights={"curve": "linear"}), 200).int().argmax(1)
    cosine = mask_table(spec(task_weights={"curve": "cosine"}), 200).int().argmax(1)
    mid = 500  # u = 500/999; free range C - K = 40
    assert linear[mid] == 20  # 40 * u
    assert cosine[mid] == 20  # 40 * (1 - cos(pi u)) / 2
    assert power[mid] == 3  # 40 * u**4 = 2.51: alpha 4 keeps low-noise tasks together


def test_table_curve_interpolates():
    s = spec(task_weights={"curve": "table", "points": [[0, 0], [0.5, 0.0], [1, 1]]}, timestep={"num_tasks": 11})
    starts = mask_table(s, 20).int().argmax(1)  # K = 16, free range 4
    assert starts.tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 4]


def test_overrides_apply_by_module_path():
    s = load_spec({"version": 1, "overrides": [{"match": "blocks.0", "channel_ratio": 0.5}]})
    assert mask_table(s, 10, "blocks.0").sum(1).unique().tolist() == [5]
    assert mask_table(s, 10, "blocks.1").sum(1).unique().tolist() == [8]


# -- timestep -> task ---------------------------------------------------------------

def tmap(**kw):
    return load_spec({"version": 1, "timestep": kw}).timestep


def test_integer_timesteps_are_their_own_task():
    t = torch.arange(1000)
    assert torch.equal(task_index(t, tmap()), t)


def test_both_ends_of_the_range():
    m = tmap(num_tasks=1000, range=[0.002, 80.0])
    assert task_index(torch.tensor([0.002, 80.0]), m).tolist() == [0, 999]
    assert task_index(torch.tensor([-5.0, 500.0]), m).tolist() == [0, 999]  # clamped


def test_reverse_flips():
    m = tmap(num_tasks=1000, range=[0.0, 1.0], reverse=True)
    assert task_index(torch.tensor([0.0, 1.0, 0.5]), m).tolist() == [999, 0, 499]  # 499.5 -> 500 (half to even), flipped


def test_float_and_int_agree_and_round():
    m = tmap(num_tasks=10, range=[0, 90])
    assert task_index(torch.tensor([0, 45, 90]), m).tolist() == [0, 4, 9]  # 4.5 -> 4 (half to even)
    assert task_index(torch.tensor([0.0, 44.9, 46.0]), m).tolist() == [0, 4, 5]


def test_zero_dim_timestep_gives_zero_dim_task():
    out = task_index(torch.tensor(7), tmap())
    assert out.dim() == 0 and out.item() == 7 and out.dtype == torch.long
