"""Models built on the meta device (shapes, no storage): planned and transformed in place, the
weights loaded afterwards with ``load_state_dict(..., assign=True)``; the way a 12B backbone is
routed without holding its weights twice (``benchmarks/capture.py --meta`` times the full sizes)."""

import pytest
import torch
from torch import nn

import dtrsurgeon
from dtrsurgeon.analysis.capture import capture
from dtrsurgeon.errors import CaptureError
from model_zoo.dit import DiT

SPEC = {"version": 1, "routing": {"channel_ratio": 0.5}}


def tiny_dit() -> DiT:
    return DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)


def perturbed(model: nn.Module) -> nn.Module:
    """Random offsets on every weight: zero-initialised output layers would make routing change nothing."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.slow
def test_meta_dit_transformed_in_place_then_loaded_equals_the_real_model_transformed():
    torch.manual_seed(0)
    real = perturbed(tiny_dit()).eval()
    with torch.device("meta"):
        empty = tiny_dit().eval()
    routed = dtrsurgeon.transform(empty, SPEC, inplace=True)  # inputs guessed on the model's device
    assert routed is empty and [u.path for u in routed.dtr_plan.units] == ["blocks.0", "blocks.1"]
    assert all(p.is_meta for p in routed.parameters())
    routed.load_state_dict(real.state_dict(), assign=True)
    assert not any(t.is_meta for t in [*routed.parameters(), *routed.buffers()])
    reference = dtrsurgeon.transform(real, SPEC)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 2])
    with torch.no_grad():
        out = routed(x, t, y)
        torch.testing.assert_close(out, reference(x, t, y), rtol=0, atol=0)
        assert not torch.allclose(out, real(x, t, y))  # routing changed something


def test_guessed_inputs_of_a_meta_model_are_meta():
    with torch.device("meta"):
        model = tiny_dit()
    cap = capture(model, *dtrsurgeon.analysis.inputs.example_inputs(model, "t", (0, 999)), timestep_arg="t")
    assert all(v.is_meta for v in cap.kwargs.values() if isinstance(v, torch.Tensor))
    assert cap.method == "export" and "blocks.1" in cap.callers


class DataDependent(nn.Module):
    """Python on tensor values: export cannot follow it, and on meta tensors there are no values."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, t):
        if float(t.max()) > 500:
            x = x * 2
        return x + self.lin(x)


def test_meta_model_that_export_cannot_follow_gets_one_clear_error():
    with torch.device("meta"):
        model = DataDependent()
        args = (torch.randn(2, 3, 4), torch.rand(2))
    with pytest.raises(CaptureError, match=r"meta device is captured by torch.export alone") as info:
        dtrsurgeon.plan(model, SPEC, (args, {}))
    assert "\n" not in str(info.value) and "DataDependent.forward" in str(info.value)


@pytest.mark.slow
def test_meta_flux_transformed_in_place_then_loaded_equals_the_real_model_transformed():
    """A dual-stream MMDiT (diffusers' Flux, tiny config) through the same steps."""
    diffusers = pytest.importorskip("diffusers")
    config = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, joint_attention_dim=8,
                  axes_dims_rope=(2, 2, 4), attention_head_dim=8, num_attention_heads=2, pooled_projection_dim=8)

    def inputs(g=None):
        return dict(hidden_states=torch.randn(2, 16, 4, generator=g), encoder_hidden_states=torch.randn(2, 5, 8, generator=g),
                    pooled_projections=torch.randn(2, 8, generator=g), timestep=torch.tensor([0.1, 0.9]),
                    img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))

    torch.manual_seed(0)
    real = perturbed(diffusers.FluxTransformer2DModel(**config)).eval()
    with torch.device("meta"):
        empty = diffusers.FluxTransformer2DModel(**config).eval()
        meta_inputs = inputs()
    routed = dtrsurgeon.transform(empty, SPEC, meta_inputs, inplace=True)
    assert len(routed.dtr_plan.units) == 4
    routed.load_state_dict(real.state_dict(), assign=True)
    example = inputs(torch.Generator().manual_seed(1))
    reference = dtrsurgeon.transform(real, SPEC, example)
    with torch.no_grad():
        out = routed(**example).sample
        torch.testing.assert_close(out, reference(**example).sample, rtol=0, atol=0)
        assert not torch.allclose(out, real(**example).sample)
