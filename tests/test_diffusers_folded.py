"""A video U-Net whose conditioning is folded into the batch as well as its sample.

UNetMotionModel (AnimateDiff) takes the text embeddings per frame, ``[B * F, S, D]`` (its pipeline
repeats them), while the sample is ``[B, C, F, H, W]``; the sweep's per-sample split cannot slice such
an input, so tests/sweep/other.py runs it with one frame.  Here each sample has two frames: every
routed stream holds B * F rows (sample-major), and each sample, run alone with its own two rows of
text embeddings, must come out as it does in the batch.
"""

import pytest
import torch

pytest.importorskip("diffusers")

import dtrsurgeon
from tests.sweep import other

SPEC = {"version": 1, "routing": {"channel_ratio": 0.5}}
FRAMES = 2


def _inputs(batch_size):
    g = torch.Generator().manual_seed(0)
    return {"sample": torch.randn(batch_size, 4, FRAMES, 8, 8, generator=g),
            "timestep": torch.linspace(0, 999, batch_size).round().long(),
            "encoder_hidden_states": torch.randn(batch_size, 5, 16, generator=g).repeat_interleave(FRAMES, 0),
            "return_dict": False}


def _alone(kwargs, i):
    return dict(kwargs, sample=kwargs["sample"][i:i + 1], timestep=kwargs["timestep"][i:i + 1],
                encoder_hidden_states=kwargs["encoder_hidden_states"][i * FRAMES:(i + 1) * FRAMES])


@pytest.mark.slow
def test_motion_unet_with_per_frame_text_routes_each_sample_as_if_alone():
    model = other._unet_motion()
    kwargs = _inputs(3)
    example = ((), kwargs)
    plan = dtrsurgeon.plan(model, SPEC, example_inputs=example)
    assert len(plan.units) == 19 and {u.fold for u in plan.units} == {"interleave"}, plan.skipped
    with torch.no_grad():
        ref = model(**kwargs)[0]
        identity = dtrsurgeon.transform(model, {**SPEC, "routing": {"channel_ratio": 1.0}}, example_inputs=example)
        assert torch.allclose(identity(**kwargs)[0], ref, atol=1e-6)
        routed = dtrsurgeon.transform(model, SPEC, example_inputs=example)
        out = routed(**kwargs)[0]
        assert not torch.allclose(out, ref, atol=1e-4)
        alone = torch.cat([routed(**_alone(kwargs, i))[0] for i in range(3)])
    assert torch.allclose(out, alone, atol=1e-4, rtol=1e-4)
