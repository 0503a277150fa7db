"""Tests for model_zoo.mmdit: the Flux-style MMDiT the overhead benchmark times.

The mid-size config is only built on the meta device; the routed checks use the tiny config.
"""

from __future__ import annotations

import pytest
import torch

import dtrsurgeon
from model_zoo.mmdit import CONFIGS, JointBlock, SingleBlock, mmdit

SPEC = {"version": 1, "timestep": {"arg": "t", "num_tasks": 1000, "range": [0, 1]},
        "routing": {"channel_ratio": 0.8, "mode": "block", "streams": "sample"}}


def test_patchify_and_unpatchify_are_inverse():
    model = mmdit("tiny")
    x = torch.randn(2, 4, 8, 8)
    tokens = model.patchify(x)
    assert tokens.shape == (2, 16, 16)
    assert torch.equal(tokens[0, 1], x[0, :, 0:2, 2:4].reshape(-1))  # second patch of the first row
    assert torch.equal(model.unpatchify(tokens, 8, 8), x)


def test_mid_size_config_has_flux_layout():
    with torch.device("meta"):
        model = mmdit("M")
    assert len(model.joint_blocks) == 8 and len(model.single_blocks) == 16
    assert model.dim // model.heads == 128
    assert 500e6 < sum(p.numel() for p in model.parameters()) < 600e6
    with pytest.raises(ValueError, match="unknown MMDiT config 'XL'"):
        mmdit("XL")


@pytest.mark.slow
def test_each_stream_changes_the_image_output():
    """Joint attention mixes text into image tokens; the pooled vector and t modulate every block."""
    torch.manual_seed(0)
    model = mmdit("tiny").eval()
    (x, t, context, pooled), _ = model.example_inputs(2)
    base = model(x, t, context, pooled)
    for changed in ((x, t, context + 1, pooled), (x, t, context, pooled + 1), (x, t + 0.3, context, pooled)):
        assert not torch.allclose(model(*changed), base)


@pytest.mark.slow
def test_every_joint_and_single_block_is_routed_on_the_image_stream():
    torch.manual_seed(0)
    model = mmdit("tiny")
    routed = dtrsurgeon.transform(model, SPEC)
    plan = routed.dtr_plan
    assert [u.path for u in plan.units] == ["joint_blocks.0", "joint_blocks.1", "single_blocks.0", "single_blocks.1"]
    assert {(u.stream_arg, u.out_index, u.mode.value) for u in plan.units} == {("hidden_states", 1, "block")}
    args, _ = model.example_inputs(2)
    assert not torch.allclose(routed(*args), model(*args))
    identity = dtrsurgeon.transform(model, {**SPEC, "routing": {**SPEC["routing"], "channel_ratio": 1.0}})
    torch.testing.assert_close(identity(*args), model(*args))
    assert isinstance(routed.joint_blocks[0], JointBlock) and isinstance(routed.single_blocks[0], SingleBlock)
    assert set(CONFIGS) == {"M", "tiny"}
