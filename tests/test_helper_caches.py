"""Capture leaves no fake tensor in the containers a plain helper object keeps (tests/helper_cache_patterns.py):
a dict cache of rotary tables filled during the capture's forward is put back as it was, so later real
forwards, of the user's model and of the routed one, compute with real tables."""

import torch

import dtrsurgeon
from tests import helper_cache_patterns as hp


def build():
    torch.manual_seed(0)
    return hp.RotaryCacheNet().eval()


def test_a_helpers_dict_cache_is_put_back_after_capture():
    model = build()
    dtrsurgeon.plan(model, {"version": 1})
    assert model.rope.tables == {} and model.rope.lengths == []


def test_a_helpers_dict_cache_filled_before_capture_keeps_its_real_tables():
    model = build()
    x, t = model.example_inputs(2)[0]
    with torch.no_grad():
        want = model(x, t)
    cached = model.rope.tables[6]
    dtrsurgeon.plan(model, {"version": 1})
    assert model.rope.tables[6] is cached and model.rope.lengths == [6]
    with torch.no_grad():
        assert torch.equal(model(x, t), want)


def test_real_forwards_after_capture_use_real_tables():
    model = build()
    routed = dtrsurgeon.transform(model, {"version": 1})
    x, t = model.example_inputs(3)[0]
    with torch.no_grad():
        out = routed(x, t)
        ref = model(x, t)
    assert all(type(v) is torch.Tensor for pair in model.rope.tables.values() for v in pair)
    assert all(type(v) is torch.Tensor for pair in routed.rope.tables.values() for v in pair)
    cos, sin = hp.RotaryTables(model.dim)(6)
    assert torch.equal(model.rope.tables[6][0], cos) and torch.equal(model.rope.tables[6][1], sin)
    identity = dtrsurgeon.transform(model, {"version": 1, "routing": {"channel_ratio": 1.0}})
    with torch.no_grad():
        assert torch.equal(identity(x, t), ref)
    assert torch.isfinite(out).all() and not torch.allclose(out, ref, atol=1e-4)


def test_a_deeply_nested_helper_container_is_put_back():
    """A helper's history kept as nested pairs 5,000 deep (``[item, [item, [...]]]``) is walked without
    recursion, and its innermost list is put back after the capture."""
    model = build()
    innermost = []
    nested = innermost
    for depth in range(5000):
        nested = [depth, (nested,)] if depth % 2 else [depth, nested]
    model.rope.history = nested
    innermost.append("kept")
    dtrsurgeon.plan(model, {"version": 1})
    walk = model.rope.history
    while walk is not innermost:
        walk = walk[1][0] if isinstance(walk[1], tuple) else walk[1]
    assert innermost == ["kept"]  # the same object, reached through 5,000 levels, holding what it held
