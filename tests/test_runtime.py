"""The routing runtime: dtr_route/dtr_merge must equal the plain formula
``unit(x * m) + x * (1 - m)`` in values and gradients, bit for bit."""

import pytest
import torch

from dtrsurgeon.runtime import (
    dtr_channel_mask,
    dtr_mask_table,
    dtr_merge,
    dtr_route,
)


def _unit(x, w):
    return x + torch.tanh(x @ w) * 0.5


def _plain(x, w, keep, unit=_unit):
    m = keep.to(x.dtype)
    return unit(x * m, w) + x * (1 - m)


def _routed(x, w, keep, unit=_unit):
    routed, skip = dtr_route(x, keep)
    return dtr_merge(unit(routed, w), skip, keep)


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g)
    w = torch.randn(16, 16, generator=g)
    table = dtr_mask_table(16, 0.5, 10)
    keep = dtr_channel_mask(table, torch.tensor([0, 4, 9]), x, 2)
    return x, w, keep


def test_values_and_gradients_equal_the_plain_formula(case):
    x, w, keep = case
    grads = []
    for fn in (_plain, _routed):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xi, wi, keep)
        (y * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append((y.detach(), xi.grad, wi.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_a_unit_that_ignores_some_input_channels_still_gets_bypass_gradients(case):
    """Where the unit's gradient for its input is zero or absent, x's gradient is the bypass one."""
    x, w, keep = case
    x = x.clone().requires_grad_()
    y = _routed(x, w, keep, unit=lambda h, w: torch.zeros_like(h) + w.sum() * 0)
    y.sum().backward()
    assert torch.equal(x.grad, (~keep).float().expand_as(x))


def test_mixed_dtypes_promote_like_the_plain_formula(case):
    """A bf16 unit output merged into a float32 stream (autocast) gives float32, and each input's
    gradient comes back in its own dtype."""
    x, w, keep = case
    x = x.clone().requires_grad_()
    y = _routed(x, w, keep, unit=lambda h, w: (h @ w).bfloat16())
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.float32
    ref_x = x.detach().clone().requires_grad_()
    _plain(ref_x, w, keep, unit=lambda h, w: (h @ w).bfloat16()).sum().backward()
    assert torch.equal(x.grad, ref_x.grad)


def test_no_grad_and_double_backward(case):
    x, w, keep = case
    with torch.no_grad():
        assert torch.equal(_routed(x, w, keep), _plain(x, w, keep))
    xi = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(_routed(xi, w, keep).square().sum(), xi, create_graph=True)
    (gx_ref_input,) = torch.autograd.grad(gx.sum(), xi)
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad(_plain(xr, w, keep).square().sum(), xr, create_graph=True)
    (gr_ref_input,) = torch.autograd.grad(gr.sum(), xr)
    assert torch.allclose(gx_ref_input, gr_ref_input, atol=1e-6)


def test_compiles_fullgraph_to_the_same_numbers(case):
    x, w, keep = case
    compiled = torch.compile(_routed, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa, w, keep), _plain(xb, w, keep)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(ya, yb, atol=1e-6) and torch.allclose(xa.grad, xb.grad, atol=1e-5)
