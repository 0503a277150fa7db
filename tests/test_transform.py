"""transform(): the routed module keeps everything but computes DTR."""

import copy
import inspect

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import dtrsurgeon
from dtrsurgeon import CheckpointError, mask_table
from tests import toy_models
from tests.conftest import randomize_

SPEC = {"version": 1, "routing": {"channel_ratio": 0.8}, "targets": {"include": ["blocks.*"]}}


def reference_dit(model, x, t, y, table):
    """The authors' block semantics, written out: y = block(x*m) + x*(1-m) per block."""
    h = model.x_embedder(x) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y, model.training)
    m = table[t].to(h.dtype)[:, None, :]
    for block in model.blocks:
        h = block(h * m, c) + h * (1 - m)
    return model.unpatchify(model.final_layer(h, c))


def test_matches_the_reference_semantics_per_sample(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    (x, t, y), _ = dit.example_inputs(4)
    t = torch.tensor([0, 999, 250, 731])  # a mixed batch, both ends of the range
    table = mask_table(SPEC, 64)
    expected = reference_dit(dit, x, t, y, table)
    assert torch.allclose(routed(x, t, y), expected, atol=1e-6)
    assert not torch.allclose(routed(x, t, y), dit(x, t, y), atol=1e-3)  # routing does something


def test_each_sample_uses_its_own_timestep(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    (x, _, y), _ = dit.example_inputs(3)
    t = torch.tensor([5, 500, 995])
    batch = routed(x, t, y)
    for i in range(3):
        alone = routed(x[i:i + 1], t[i:i + 1], y[i:i + 1])
        assert torch.allclose(batch[i:i + 1], alone, atol=1e-6)


def test_float_and_integer_timesteps_agree(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    (x, t, y), _ = dit.example_inputs(2)
    assert torch.allclose(routed(x, t, y), routed(x, t.float(), y), atol=1e-6)


def test_zero_dim_timestep_is_broadcast():
    model = randomize_(toy_models.TokenNet()).eval()
    routed = dtrsurgeon.transform(model, {"version": 1})
    (x, _), _ = model.example_inputs(3)
    out_scalar = routed(x, torch.tensor(640))
    out_batch = routed(x, torch.full((3,), 640))
    assert torch.allclose(out_scalar, out_batch, atol=1e-6)


def test_channel_ratio_one_is_the_identity(dit):
    routed = dtrsurgeon.transform(dit, {"version": 1, "routing": {"channel_ratio": 1.0}})
    (x, t, y), _ = dit.example_inputs(4)
    assert torch.equal(routed(x, t, y), dit(x, t, y))


def test_state_dict_keys_and_parameters_are_unchanged(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    assert list(routed.state_dict()) == list(dit.state_dict())
    assert [n for n, _ in routed.named_parameters()] == [n for n, _ in dit.named_parameters()]
    fresh = copy.deepcopy(dit)
    routed.load_state_dict(dit.state_dict(), strict=True)
    fresh.load_state_dict(routed.state_dict(), strict=True)
    assert all(not b.dtype.is_floating_point or True for b in routed.buffers())
    assert "blocks.0.dtr_mask" not in routed.state_dict()


def test_methods_attributes_and_signature_are_kept(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    assert isinstance(routed, type(dit)) and type(routed).__name__ == "DiT"
    assert inspect.signature(routed.forward) == inspect.signature(dit.forward)
    assert routed.out_channels == dit.out_channels
    (x, t, y), _ = dit.example_inputs(4)
    out = routed.forward_with_cfg(x, t, y, 4.0)
    assert out.shape == x.shape[:1] + (8,) + x.shape[2:]
    assert torch.equal(out[:2, :3], out[2:, :3])  # guidance result is duplicated for both halves


@pytest.mark.slow
def test_input_model_is_left_untouched_unless_inplace(dit):
    cls = type(dit)
    routed = dtrsurgeon.transform(dit, SPEC)
    assert type(dit) is cls and type(dit.blocks[0]).__name__ == "DiTBlock" and type(dit.blocks[0]) is not type(routed.blocks[0])
    assert not hasattr(dit.blocks[0], "dtr_mask")
    same = dtrsurgeon.transform(dit, SPEC, inplace=True)
    assert same is dit and hasattr(dit.blocks[0], "dtr_mask")


def test_transforming_a_routed_model_is_refused(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    with pytest.raises(dtrsurgeon.EmitError, match="already routed"):
        dtrsurgeon.transform(routed, SPEC)


def test_spec_and_plan_travel_with_the_model(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    assert routed.dtr_spec == dtrsurgeon.load_spec(SPEC)
    assert [u.path for u in routed.dtr_plan.units] == ["blocks.0", "blocks.1"]
    assert dtrsurgeon.Plan.from_dict(__import__("json").loads(routed.dtr_plan.to_json())) == routed.dtr_plan


def test_masks_are_non_persistent_bool_buffers(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    mask = routed.blocks[0].dtr_mask
    assert mask.dtype == torch.bool and mask.shape == (1000, 64)
    assert torch.equal(mask, mask_table(SPEC, 64))


def test_overrides_reach_their_unit(dit):
    routed = dtrsurgeon.transform(dit, {"version": 1, "overrides": [{"match": "blocks.1", "channel_ratio": 0.5}]})
    assert routed.blocks[0].dtr_mask.sum(1).unique().tolist() == [51]
    assert routed.blocks[1].dtr_mask.sum(1).unique().tolist() == [32]


def test_excluded_blocks_on_a_shared_call_line_run_unrouted(dit):
    routed = dtrsurgeon.transform(dit, {"version": 1, "targets": {"include": ["blocks.0"]}})
    (x, t, y), _ = dit.example_inputs(2)
    h = dit.x_embedder(x) + dit.pos_embed
    c = dit.t_embedder(t) + dit.y_embedder(y, False)
    m = mask_table({"version": 1}, 64)[t].float()[:, None, :]
    h = dit.blocks[0](h * m, c) + h * (1 - m)
    h = dit.blocks[1](h, c)
    expected = dit.unpatchify(dit.final_layer(h, c))
    assert torch.allclose(routed(x, t, y), expected, atol=1e-6)
    assert [p for p, _ in routed.dtr_plan.threads] == ["blocks.1"]  # receives dtr_task, routes nothing
    assert routed.dtr_plan.passthrough == ()
    plan = routed.dtr_plan
    assert dtrsurgeon.Plan.from_dict(__import__("json").loads(plan.to_json())) == plan


def test_branch_mode_masks_each_branch_input(dit):
    routed = dtrsurgeon.transform(dit, {"version": 1, "routing": {"mode": "branch"}})
    (x, t, y), _ = dit.example_inputs(2)
    from model_zoo.dit import modulate

    h = dit.x_embedder(x) + dit.pos_embed
    c = dit.t_embedder(t) + dit.y_embedder(y, False)
    m = mask_table({"version": 1}, 64)[t].float()[:, None, :]
    for b in dit.blocks:
        s1, sc1, g1, s2, sc2, g2 = b.adaLN_modulation(c).chunk(6, dim=1)
        h = h + g1.unsqueeze(1) * b.attn(modulate(b.norm1(h * m), s1, sc1))
        h = h + g2.unsqueeze(1) * b.mlp(modulate(b.norm2(h * m), s2, sc2))
    expected = dit.unpatchify(dit.final_layer(h, c))
    assert torch.allclose(routed(x, t, y), expected, atol=1e-6)


def test_routing_through_a_helper_method():
    model = randomize_(toy_models.ThroughHelper()).eval()
    routed = dtrsurgeon.transform(model, {"version": 1, "routing": {"channel_ratio": 1.0}})
    (x, t), _ = model.example_inputs()
    assert torch.equal(routed(x, t), model(x, t))
    routed = dtrsurgeon.transform(model, {"version": 1})
    assert not torch.allclose(routed(x, t), model(x, t))


def test_feature_maps_use_axis_1():
    model = randomize_(toy_models.ConvNet()).eval()
    routed = dtrsurgeon.transform(model, {"version": 1, "routing": {"channel_ratio": 0.5}})
    x, t = model.example_inputs()[0]
    m = mask_table({"version": 1, "routing": {"channel_ratio": 0.5}}, 8)[t].float()[:, :, None, None]
    h = model.stem(x)
    for blk in model.body:
        h = blk(h * m) + h * (1 - m)
    expected = model.head(h) * t.float()[:, None, None, None] / 1000
    assert torch.allclose(routed(x, t), expected, atol=1e-6)


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_gradients():
    model = randomize_(toy_models.Checkpointed()).train()
    plain = toy_models.TokenNet()
    plain.load_state_dict(model.state_dict())
    routed_ckpt = dtrsurgeon.transform(model, {"version": 1})
    routed_plain = dtrsurgeon.transform(plain, {"version": 1})
    (x, t), _ = model.example_inputs(3)
    out_a, out_b = routed_ckpt(x, t), routed_plain(x, t)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for (n, pa), pb in zip(routed_ckpt.named_parameters(), routed_plain.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_routing_keeps_the_activation_dtype_under_autocast(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    (x, t, y), _ = dit.example_inputs(2)
    seen = []
    hook = routed.blocks[0].attn.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = routed(x, t, y)
    hook.remove()
    assert seen == [torch.bfloat16] and torch.isfinite(out).all()
    from dtrsurgeon.runtime import dtr_masked

    tokens = torch.randn(2, 16, routed.blocks[0].dtr_mask.shape[1], dtype=torch.bfloat16)
    assert dtr_masked(tokens, routed.blocks[0].dtr_mask, t, 2).dtype == torch.bfloat16


@pytest.mark.slow
def test_routed_copies_run_side_by_side(dit):
    """A model and its EMA: deep copies of a routed model stay independent."""
    routed = dtrsurgeon.transform(dit, SPEC)
    ema = copy.deepcopy(routed)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    (x, t, y), _ = dit.example_inputs(2)
    a, b = routed(x, t, y), ema(x, t, y)
    assert not torch.allclose(a, b)
    assert torch.allclose(routed(x, t, y), a)


@pytest.mark.slow
def test_compile_fullgraph_matches_eager_without_recompiling(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    counter = CompileCounter()
    compiled = torch.compile(routed, backend=counter, fullgraph=True)
    (x, _, y), _ = dit.example_inputs(4)
    for t in ([0, 999, 3, 500], [17, 17, 17, 17], [998, 1, 640, 2]):
        t = torch.tensor(t)
        assert torch.allclose(compiled(x, t, y), routed(x, t, y), atol=1e-6)
    assert counter.frame_count == 1


@pytest.mark.slow
def test_compile_with_inductor_on_dit_s():
    from model_zoo.dit import dit as build

    torch.manual_seed(0)
    model = randomize_(build("S/2", input_size=8, num_classes=10)).eval()
    routed = dtrsurgeon.transform(model, "dit-paper")
    compiled = torch.compile(routed, fullgraph=True)
    (x, t, y), _ = model.example_inputs(2)
    assert torch.allclose(compiled(x, t, y), routed(x, t, y), atol=1e-4)


# -- checkpoints of the authors' DTR code ----------------------------------------

def authors_checkpoint(routed, table_fn=lambda t: t.float()):
    sd = dict(routed.state_dict())
    for u in routed.dtr_plan.units:
        sd[f"{u.path}.routing._unit_mapping"] = table_fn(routed.get_submodule(u.path).dtr_mask.clone())
    return sd


def test_authors_checkpoint_loads_strictly(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    result = routed.load_state_dict(authors_checkpoint(routed), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_authors_checkpoint_with_other_masks_is_refused(dit):
    routed = dtrsurgeon.transform(dit, SPEC)

    def shift(table):
        table = table.float()
        table[700] = table[700].roll(1)
        return table

    with pytest.raises(CheckpointError, match=r"blocks.0.routing._unit_mapping.*differs.*first task 700"):
        routed.load_state_dict(authors_checkpoint(routed, shift), strict=True)


def test_authors_checkpoint_with_a_table_for_an_unrouted_module_is_refused(dit):
    routed = dtrsurgeon.transform(dit, {"version": 1, "targets": {"include": ["blocks.0"]}})
    sd = dict(routed.state_dict())
    sd["blocks.1.routing._unit_mapping"] = torch.ones(1000, 64)
    with pytest.raises(CheckpointError, match="'blocks.1' is not a routed unit"):
        routed.load_state_dict(sd)


def test_routed_model_with_an_mtl_spec_deep_copies_and_pickles(dit):
    import pickle

    spec = {"version": 1, "mtl": {"clustering": {"k": 5}, "weighting": "uw"}}
    routed = dtrsurgeon.transform(dit, spec)
    ema = copy.deepcopy(routed)
    assert ema.dtr_spec is routed.dtr_spec
    assert pickle.loads(pickle.dumps(routed.dtr_spec)) == routed.dtr_spec
