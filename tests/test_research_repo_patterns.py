"""More research constructs as released (tests/research_repo_patterns.py): PixArt's auto_grad_checkpoint,
adaLN-single and packed captions, OpenSora's spatial/temporal folds inside a block, LightningDiT's
checkpointed blocks with complex rotary embedding and DropPath, DiT's forward_with_cfg, and a U-Net
of Residual(PreNorm(...)) wrappers.  Each routes with the default spec: units found, identity at
ratio 1, every sample routed as if alone, a training step, and apply's file equal to transform()."""

import json
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.cli import main
from tests import research_repo_patterns as rp
from tests.conftest import import_path
from tests.pattern_harness import Toys, check_apply, check_routes, each_toy_and_mode

FILE = "tests/research_repo_patterns.py"
DEFAULT = {"version": 1}

PATTERNS = {  # toy -> the units its default spec routes
    "PixArtNet": ["blocks.0", "blocks.1", "blocks.2"],
    "STDiTNet": ["blocks.0", "blocks.1"],
    "LightningNet": ["blocks.0", "blocks.1", "blocks.2"],
    "CfgDiT": ["blocks.0", "blocks.1", "blocks.2"],
    "ResidualUNet": ["downs.0.0", "downs.0.1", "mid.0", "mid.1", "ups.0.0", "ups.0.1"],
    "LoopAddUNet": ["downs.0.0", "downs.0.1", "downs.0.2", "mid_block1", "mid_block2", "mid_attn",
                    "ups.0.0", "ups.0.1", "ups.0.2", "final_res_block"],
    # the Transformer adds attn(x) + x in its loop and returns norm(x): its callees are the units
    "PreNormViT": [f"transformer.layers.{i}.{j}" for i in range(2) for j in range(2)],
    # the same in nn.Sequential; the Residual in the timestep MLP processes no sample: no unit
    "SequentialViT": [f"transformer.{i}" for i in range(4)],
}

LIBRARY_FORM = frozenset({"SequentialViT"})


def spec_for(mode="block", ratio=None):
    if mode == "block" and ratio is None:
        return DEFAULT
    return {"version": 1, "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}


def build(name):
    torch.manual_seed(0)
    return getattr(rp, name)().eval()


def inputs(model, batch=3):
    torch.manual_seed(1)
    return model.example_inputs(batch)[0]


def one_by_one(routed, args):
    return torch.cat([routed(*(a[i:i + 1] for a in args)) for i in range(len(args[0]))])


def switch_on_checkpointing(routed, name, kwargs):
    """Each toy's checkpointing, for its training step."""
    if name in ("PixArtNet", "STDiTNet"):  # blocks called through auto_grad_checkpoint
        for block in routed.blocks:
            block.grad_checkpointing = True
    if name == "PixArtNet":  # and the head through checkpoint_sequential
        routed.head.grad_checkpointing = True
    if name == "LightningNet":
        routed.use_checkpoint = True
    return kwargs


TOYS = Toys(file=FILE, spec_for=spec_for, build=build, inputs=lambda model: (inputs(model), {}), prefix="gen_repo",
            prepare_training=switch_on_checkpointing, library_form=LIBRARY_FORM)


@each_toy_and_mode(PATTERNS)
def test_pattern_routes_per_sample_is_identity_at_ratio_one_and_trains(name, mode):
    check_routes(TOYS, name, mode, PATTERNS[name])


@each_toy_and_mode(PATTERNS)
def test_pattern_through_apply_equals_transform(name, mode, tmp_path):
    check_apply(TOYS, name, mode, tmp_path)


def cfg_mix(out, scale):
    """forward_with_cfg's mix of a doubled batch's output, written out for the test."""
    eps, rest = out[..., :4], out[..., 4:]
    cond, uncond = eps.chunk(2)
    half = uncond + scale * (cond - uncond)
    return torch.cat([torch.cat([half, half]), rest], dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["transform", "apply"])
def test_forward_with_cfg_routes_each_sample_of_the_doubled_batch(form, tmp_path):
    """DiT samples with forward_with_cfg, a method the example inputs never call: it runs the routed
    forward on the doubled batch (each sample routed by its own timestep), then mixes the halves."""
    model = build("CfgDiT")
    routed = dtrsurgeon.transform(model, DEFAULT)
    if form == "apply":
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps(DEFAULT))
        assert main(["apply", str(spec), FILE, "--entry", "CfgDiT", "-o", str(tmp_path / "cfg_dtr.py")]) == 0
        generated = import_path(tmp_path / "cfg_dtr.py", "gen_repo_cfg").CfgDiT().eval()
        generated.load_state_dict(model.state_dict(), strict=True)
        routed = generated
    torch.manual_seed(3)
    x, t = torch.randn(4, 6, 4), torch.tensor([40, 40, 700, 700])
    y = torch.tensor([1, 3, 5, 5])  # conditional labels, then the "no label" row
    combined = torch.cat([x[:2], x[:2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            guided = routed.forward_with_cfg(x, t, y, 4.0)
            doubled = routed(combined, t, y)
            assert torch.allclose(doubled, one_by_one(routed, (combined, t, y)), atol=1e-5)
    assert torch.allclose(guided, cfg_mix(doubled, 4.0), atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(guided, model.forward_with_cfg(x, t, y, 4.0), atol=1e-4)
        assert torch.allclose(model.forward_with_cfg(x, t, y, 4.0), cfg_mix(model(combined, t, y), 4.0), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["PixArtNet", "LightningNet"])
def test_checkpointed_blocks_recompute_with_their_task(name):
    """auto_grad_checkpoint / checkpoint(block, x, c, rope): with checkpointing on, backward's
    recompute routes like the forward (DropPath draws the same, checkpoint keeps the RNG state)."""
    model = build(name)
    args = inputs(model)
    grads = []
    for on in (False, True):
        routed = dtrsurgeon.transform(model, DEFAULT).train()
        if name == "PixArtNet":
            for module in [*routed.blocks, routed.head]:
                module.grad_checkpointing = on
        else:
            routed.use_checkpoint = on
        torch.manual_seed(4)
        routed(*args).square().mean().backward()
        grads.append([p.grad for p in routed.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_a_container_of_residual_blocks_routes_its_callees():
    """Transformer.forward loops ``x = attn(x) + x; x = ff(x) + x`` and returns ``self.norm(x)``: its
    output is no residual stream, so the modules it adds back are the units (each routes its input,
    the add stays the container's), not the container with the bypass merged into the norm."""
    plan = dtrsurgeon.plan(build("PreNormViT"), DEFAULT)
    assert [(u.path, u.mode, u.merge, u.residual_lines[0].function) for u in plan.units] == [
        (f"transformer.layers.{i}.{j}", "block", False, "Transformer.forward") for i in range(2) for j in range(2)]
    assert [sl.code.strip() for sl in plan.units[1].residual_lines] == ["x = ff(x) + x"]


@pytest.mark.slow
def test_checkpoint_sequential_of_units_routes_them():
    model = build("SequentialCheckpointNet")
    routed = dtrsurgeon.transform(model, DEFAULT)
    assert [u.path for u in routed.dtr_plan.units] == ["blocks.0", "stage.0", "stage.1"]
    args = inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            assert torch.allclose(routed(*args), one_by_one(routed, args), atol=1e-5)
        grads = []
        for on in (False, True):
            routed.train().zero_grad()
            routed.stage.grad_checkpointing = on
            routed(*args).square().mean().backward()
            grads.append(routed.stage[0].mlp[0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
