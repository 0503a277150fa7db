"""Constructs of released backbones (guided-diffusion, EDM, EDM2) on tiny models:
tests/released_patterns.py."""

import importlib.util
import json
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.analysis.capture import OpaqueRegionWarning, capture
from dtrsurgeon.cli import main
from dtrsurgeon.plan import Plan, SourceLine
from tests.released_patterns import CheckpointUNet, CondCallNet

FILE = "tests/released_patterns.py"
ADM_UNITS = ["input_blocks.1.0", "input_blocks.1.1", "input_blocks.2.0", "middle_block.0", "middle_block.1",
             "middle_block.2", "output_blocks.0.0", "output_blocks.0.1", "output_blocks.1.0"]


def spec_for(model, mode="block", ratio=None):
    spec = {"version": 1, "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}
    spec["timestep"] = {"arg": "timesteps"} if isinstance(model, CheckpointUNet) else {"arg": "noise_labels", "range": [0, 1]}
    return spec


def batch(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999]) if isinstance(model, CheckpointUNet) else torch.tensor([0.01, 0.5, 0.99])
    return x, t


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return CheckpointUNet().eval()


@pytest.fixture(scope="module")
def cond():
    torch.manual_seed(0)
    return CondCallNet().eval()


# -- F1: no_grad regions (guided-diffusion's checkpoint) ------------------------

def test_no_grad_regions_are_analysed(unet):
    """Every block after the first always-checkpointed attention block is found."""
    plan = dtrsurgeon.plan(unet, spec_for(unet))
    assert [u.path for u in plan.units] == ADM_UNITS
    assert {u.path: u.cls.rsplit(".", 1)[1] for u in plan.units}["middle_block.1"] == "AttentionBlock"
    cap = capture(unet, *unet.example_inputs())
    assert not any("wrap_with" in str(n.target) for n in cap.graph.nodes)
    assert cap.opaque == ()


def test_checkpointed_unet_routes_per_sample(unet):
    spec = spec_for(unet)
    routed = dtrsurgeon.transform(unet, spec)
    x, t = batch(unet)
    with torch.no_grad():
        out, ref = routed(x, t), unet(x, t)
        one_by_one = torch.cat([routed(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert not torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(out, one_by_one, atol=1e-5)
    # each sample uses its own timestep's mask: swapping timesteps changes the outputs
    with torch.no_grad():
        swapped = routed(x, t.flip(0))
    assert not torch.allclose(out, swapped, atol=1e-4)
    identity = dtrsurgeon.transform(unet, spec_for(unet, ratio=1.0))
    with torch.no_grad():
        assert torch.equal(identity(x, t), ref)


def test_checkpointed_unet_trains_through_the_autograd_function(unet):
    routed = dtrsurgeon.transform(unet, spec_for(unet)).train()
    x, t = batch(unet)
    routed(x, t).square().mean().backward()
    assert routed.middle_block[1].qkv.weight.grad is not None


def _plus_conv(v, w):
    return v + torch.nn.functional.conv2d(v, w)


def _minus_conv(v, w):
    return v - torch.nn.functional.conv2d(v, w)


def test_opaque_region_is_reported():
    class Cond(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return torch.cond(x.sum() > 0, _plus_conv, _minus_conv, (x, self.conv.weight))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Cond()

        def forward(self, x):
            return self.inner(x) * 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = capture(Net().eval(), (torch.randn(1, 4, 2, 2),), {})
    assert [op for op, _, _ in cap.opaque] == ["cond"]
    assert cap.opaque[0][1] == "inner"
    messages = [str(w.message) for w in caught if issubclass(w.category, OpaqueRegionWarning)]
    assert len(messages) == 1 and "'inner' (Cond)" in messages[0] and "cond" in messages[0]


# -- F5: two calls of one name on a line (EDM, EDM2) ---------------------------

def test_call_spans_recorded_and_round_trip(cond):
    plan = dtrsurgeon.plan(cond, spec_for(cond))
    assert [u.path for u in plan.units] == ["enc.block0", "enc.plain", "enc.block1", "dec.block0"]
    calls = {u.path: u.call_path[-1] for u in plan.units}
    enc_line = calls["enc.block0"].code
    assert enc_line == "x = block(x, emb) if isinstance(block, UNetBlock) else block(x)"
    assert calls["enc.plain"].line == calls["enc.block0"].line
    start = {p: sl.span[1] for p, sl in calls.items()}
    indent = 12
    assert start["enc.block0"] - indent == enc_line.index("block(x, emb)")
    assert start["enc.plain"] - indent == enc_line.rindex("block(x)")
    assert start["dec.block0"] - indent == calls["dec.block0"].code.index("block(x, emb)")
    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    # plans written without spans still load, and SourceLines without spans serialise as before
    old = json.loads(plan.to_json())
    for unit in old["units"]:
        for sl in unit["call_path"]:
            sl.pop("span")
    assert all(sl.span is None for u in Plan.from_dict(old).units for sl in u.call_path)
    assert "span" not in SourceLine("f.py", 1, "f", "x").to_dict()


def test_transform_rewrites_the_call_that_reached_the_unit(cond):
    routed = dtrsurgeon.transform(cond, spec_for(cond))
    x, t = batch(cond)
    with torch.no_grad():
        out, ref = routed(x, t), cond(x, t)
        one_by_one = torch.cat([routed(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert not torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(out, one_by_one, atol=1e-5)
    identity = dtrsurgeon.transform(cond, spec_for(cond, ratio=1.0))
    with torch.no_grad():
        assert torch.equal(identity(x, t), ref)


def _generate(model, mode, tmp_path):
    spec = tmp_path / f"spec_{mode}.json"
    spec.write_text(json.dumps(spec_for(model, mode)))
    name = type(model).__name__
    out = tmp_path / f"{name}_{mode}_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", name, "-o", str(out)]) == 0
    mod_spec = importlib.util.spec_from_file_location(f"gen_{name}_{mode}", out)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    generated = getattr(module, name)().eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    return spec, out.read_text(), generated


@pytest.mark.parametrize("mode", ["block", "branch"])
def test_generated_source_rewrites_exactly_the_reaching_calls(cond, mode, tmp_path):
    spec, text, generated = _generate(cond, mode, tmp_path)
    lines = [ln.strip() for ln in text.splitlines()]
    # enc: UNetBlock through the first call, Plain through the second; both take dtr_task, and the
    # guard keeps the Conv2d reached through the second call (and anything else) without it
    assert ("x = (block(x, emb, dtr_task=dtr_task) if isinstance(block, (Plain, UNetBlock)) else block(x, emb)) "
            "if isinstance(block, UNetBlock) else (block(x, dtr_task=dtr_task) if isinstance(block, (Plain, UNetBlock)) "
            "else block(x))") in lines
    # dec: only the second call reaches a unit; the first one (the conv) is unchanged
    dec = next(ln for ln in lines if ln.startswith("x = block(x) if 'conv' in name else"))
    assert dec.count("dtr_task=dtr_task") == 1 and dec.startswith("x = block(x) if 'conv' in name else (block(x, emb, dtr_task")
    routed = dtrsurgeon.transform(cond, str(spec))
    x, t = batch(cond)
    with torch.no_grad():
        a, b = routed(x, t), generated(x, t)
    assert torch.equal(a, b)
    assert not torch.allclose(a, cond(x, t), atol=1e-4)


def test_generated_checkpointed_unet_equals_transform(unet, tmp_path):
    spec, text, generated = _generate(unet, "block", tmp_path)
    assert "return dtr_merge(checkpoint(self._forward, (x,), self.parameters(), True), dtr_skip, dtr_keep)" in text
    routed = dtrsurgeon.transform(unet, str(spec))
    x, t = batch(unet)
    with torch.no_grad():
        a, b = routed(x, t), generated(x, t)
    assert torch.equal(a, b)
    assert not torch.allclose(a, unet(x, t), atol=1e-4)
