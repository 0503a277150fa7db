"""diffusers backbones as dtrsurgeon targets: UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel.

Tiny random-weight configs (tests/diffusers_models.py).  Each test states what a user needs.
"""

import copy

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

import dtrsurgeon  # noqa: E402
from tests import diffusers_models as dm  # noqa: E402

SPEC = {"version": 1, "timestep": {"arg": "timestep"}}
MIXED_T = torch.tensor([0, 999, 250, 731])

RESNETS = ["down_blocks.0.resnets.0", "down_blocks.1.resnets.0", "mid_block.resnets.0", "mid_block.resnets.1",
           "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.1.resnets.0", "up_blocks.1.resnets.1"]
# The correct plan: every residual block on the backbone's main stream, outermost only (a unit never
# contains another unit: nesting would mask the inner stream of an already routed block a second time).
EXPECTED_UNITS = {
    "unet2d": {**dict.fromkeys(RESNETS, "ResnetBlock2D"),
               **dict.fromkeys(["down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",
                                "up_blocks.0.attentions.1"], "Attention")},
    # Transformer2DModel returns a tuple / output object, not its stream: the BasicTransformerBlocks inside
    # it are the units (the plan lists the wrappers under `skipped`)
    "unet2d_condition": {**dict.fromkeys(RESNETS, "ResnetBlock2D"),
                         **dict.fromkeys([f"{p}.transformer_blocks.0" for p in (
                             "down_blocks.0.attentions.0", "mid_block.attentions.0",
                             "up_blocks.1.attentions.0", "up_blocks.1.attentions.1")], "BasicTransformerBlock")},
    "dit": {"transformer_blocks.0": "BasicTransformerBlock", "transformer_blocks.1": "BasicTransformerBlock"},
}
# channel axis by unit class: feature maps [B, C, H, W] -> 1, tokens [B, L, C] -> 2
AXIS = {"ResnetBlock2D": 1, "Attention": 1, "Transformer2DModel": 1, "BasicTransformerBlock": 2}
# widths of units whose skip is the identity (unambiguous whatever the placement)
WIDTHS = {
    "unet2d": {"down_blocks.0.resnets.0": 16, "mid_block.resnets.0": 32, "mid_block.attentions.0": 32,
               "up_blocks.0.attentions.1": 32},
    "unet2d_condition": {"down_blocks.0.resnets.0": 16, "mid_block.resnets.1": 32,
                         "down_blocks.0.attentions.0.transformer_blocks.0": 16,
                         "mid_block.attentions.0.transformer_blocks.0": 32,
                         "up_blocks.1.attentions.1.transformer_blocks.0": 16},
    "dit": {"transformer_blocks.0": 32, "transformer_blocks.1": 32},
}

ALL = ["unet2d", "unet2d_condition", "dit"]

# -- cached models, plans and routed models (a capture costs ~1-3 s) ------------------------------------------

_models, _plans, _routed = {}, {}, {}


def model(name):
    if name not in _models:
        _models[name] = dm.FACTORIES[name]()
    return _models[name]


def plan(name):
    if name not in _plans:
        m = model(name)
        _plans[name] = dtrsurgeon.plan(m, SPEC, example_inputs=dm.example_inputs(m, 2))
    return _plans[name]


def routed(name, channel_ratio=0.8):
    """transform() once per (model, ratio); a failure is cached and re-raised."""
    key = (name, channel_ratio)
    if key not in _routed:
        m = model(name)
        spec = {**SPEC, "routing": {"channel_ratio": channel_ratio}}
        try:
            _routed[key] = dtrsurgeon.transform(m, spec, example_inputs=dm.example_inputs(m, 2))
        except Exception as e:  # noqa: BLE001
            _routed[key] = e
    if isinstance(_routed[key], Exception):
        raise _routed[key]
    return _routed[key]


def inputs(name, t):
    (x,), kwargs = dm.example_inputs(model(name), len(t) if t.dim() else 4)
    return (x,), {**kwargs, "timestep": t}


def run(m, args, kwargs):
    return m(*args, **kwargs)[0]


# -- the plan -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    "unet2d",
    "unet2d_condition",
    "dit",
])
def test_units_are_the_outermost_residual_blocks(name):
    p = plan(name)
    assert {u.path: u.cls.rsplit(".", 1)[1] for u in p.units} == EXPECTED_UNITS[name]
    paths = [u.path for u in p.units]
    assert not [(a, b) for a in paths for b in paths if b.startswith(a + ".")]


@pytest.mark.parametrize("name", ["unet2d", pytest.param("unet2d_condition", marks=pytest.mark.slow), "dit"])
def test_channel_axes_and_widths(name):
    p = plan(name)
    for u in p.units:
        cls = u.cls.rsplit(".", 1)[1]
        assert (u.channel_axis, u.rank) == ((1, 4) if AXIS[cls] == 1 else (2, 3)), u.path
    widths = {u.path: u.channels for u in p.units}
    assert {k: widths.get(k) for k in WIDTHS[name]} == WIDTHS[name]
    assert all(u.active == int(u.channels * 0.8) for u in p.units)


def test_projection_resnets_are_found_and_not_block_routed():
    """ResnetBlock2D with a conv_shortcut (channel change, decoder concat inputs) is a unit; block mode
    (y = unit(x*m) + x*(1-m)) cannot hold there, since x and the output differ in shape."""
    p = plan("unet2d")
    for path in ("down_blocks.1.resnets.0", "up_blocks.0.resnets.0", "up_blocks.1.resnets.1"):
        assert p.unit(path).mode != "block"


# -- the routed module --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_identity_at_channel_ratio_1(name):
    args, kwargs = inputs(name, MIXED_T)
    assert torch.equal(run(routed(name, 1.0), args, kwargs), run(model(name), args, kwargs))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_state_dict_keys_unchanged_and_checkpoints_load_strict(name):
    r = routed(name)
    assert list(r.state_dict()) == list(model(name).state_dict())
    r.load_state_dict(model(name).state_dict(), strict=True)
    assert type(r).__name__ == type(model(name)).__name__ and isinstance(r, type(model(name)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_each_sample_is_routed_by_its_own_timestep(name):
    r = routed(name)
    args, kwargs = inputs(name, MIXED_T)
    batch = run(r, args, kwargs)
    assert not torch.allclose(batch, run(model(name), args, kwargs), atol=1e-4)
    for i in range(len(MIXED_T)):
        one = {k: v[i:i + 1] if torch.is_tensor(v) and v.dim() else v for k, v in kwargs.items()}
        assert torch.allclose(run(r, (args[0][i:i + 1],), one), batch[i:i + 1], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet2d", "unet2d_condition"])
def test_zero_dim_and_python_timesteps_broadcast(name):
    """diffusers' sampling loops pass a 0-d tensor (UNet2DModel also takes a Python number). DiT is left
    out: diffusers' own DiTTransformer2DModel asserts 1-d timesteps (its pipeline expands them)."""
    r = routed(name)
    args, kwargs = inputs(name, torch.full((4,), 640))
    expected = run(r, args, kwargs)
    assert torch.equal(run(r, args, {**kwargs, "timestep": torch.tensor(640)}), expected)
    if name == "unet2d":
        assert torch.equal(run(r, args, {**kwargs, "timestep": 640}), expected)


@pytest.mark.parametrize("name", [
    pytest.param("unet2d", marks=pytest.mark.slow),  # 17 s each on 2 cores; the DiT keeps it in the fast suite
    pytest.param("unet2d_condition", marks=pytest.mark.slow),
    "dit",
])
def test_every_unit_changes_its_own_output(name):
    """Each routed unit, called with the inputs (and dtr_task) it got in the routed forward, differs from
    the original unit on the same inputs: no unit is routed in name only."""
    assert inert_units(routed(name), model(name), name) == []


def inert_units(r, orig, name):
    """Units whose routed call equals the original unit's on the same inputs (the routing does nothing)."""
    seen = {}

    def record(path):
        def hook(mod, a, kw, out):
            seen.setdefault(path, (a, kw, out))  # returns None: the output is left alone
        return hook

    hooks = [r.get_submodule(u.path).register_forward_hook(record(u.path), with_kwargs=True) for u in r.dtr_plan.units]
    try:
        with torch.no_grad():
            run(r, *inputs(name, MIXED_T))
    finally:
        for h in hooks:
            h.remove()
    assert sorted(seen) == sorted(u.path for u in r.dtr_plan.units)
    first = (lambda o: o[0] if isinstance(o, tuple) else o)
    inert = []
    for path, (a, kw, out) in seen.items():
        assert "dtr_task" in kw, path
        with torch.no_grad():
            ref = orig.get_submodule(path)(*a, **{k: v for k, v in kw.items() if k != "dtr_task"})
        if torch.allclose(first(out), first(ref), atol=1e-6):
            inert.append(path)
    return inert


@pytest.mark.slow
def test_branch_mode_every_unet2d_unit_changes_its_own_output():
    m = model("unet2d")
    r = dtrsurgeon.transform(m, {**SPEC, "routing": {"mode": "branch"}}, example_inputs=dm.example_inputs(m, 2))
    assert inert_units(r, m, "unet2d") == []


@pytest.mark.slow
def test_pre_output_mode_places_a_site_in_every_unet2d_unit():
    """ResnetBlock2D: the input of conv2. Attention: its last projection runs in AttnProcessor2_0.__call__,
    which the unit does not call itself, so it falls back to block semantics and the plan says why."""
    m = model("unet2d")
    p = dtrsurgeon.plan(m, {**SPEC, "routing": {"mode": "pre_output"}}, example_inputs=dm.example_inputs(m, 2))
    assert len(p.units) == 12
    for u in p.units:
        if u.cls.endswith("ResnetBlock2D"):
            assert u.mode == "pre_output" and u.sites[0].module == f"{u.path}.conv2"
        else:
            assert u.mode == "block" and "attention_processor.py" in u.mode_note
    r = dtrsurgeon.transform(m, {**SPEC, "routing": {"mode": "pre_output"}}, example_inputs=dm.example_inputs(m, 2))
    assert inert_units(r, m, "unet2d") == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_compile_fullgraph_aot_eager_without_recompiling(name):
    r = routed(name)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(r, fullgraph=True, backend=counter)
    for t in (MIXED_T, torch.tensor([3, 500, 998, 17])):
        args, kwargs = inputs(name, t)
        assert torch.allclose(run(compiled, args, kwargs), run(r, args, kwargs), atol=1e-5)
    assert counter.frame_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit", "unet2d_condition"])
def test_compile_a_step_that_calls_the_routed_model(name):
    """The routed forward inlined into a compiled training step, not the top frame (UNet2DConditionModel's
    decorator always puts it there): its globals must resolve through sys.modules."""
    r = routed(name)
    torch._dynamo.reset()
    step = torch.compile(lambda x, kw: r(x, **kw)[0], fullgraph=True, backend="aot_eager")
    args, kwargs = inputs(name, MIXED_T)
    assert torch.allclose(step(args[0], kwargs), run(r, args, kwargs), atol=1e-5)


@pytest.mark.parametrize("name", [pytest.param("unet2d", marks=pytest.mark.slow), "dit"])
def test_gradient_checkpointing(name):
    """diffusers' own checkpointing branch (`self._gradient_checkpointing_func(block, ...)`), never taken
    during capture, routes like the plain branch: same outputs and gradients in train mode."""
    r = copy.deepcopy(routed(name)).train()
    args, kwargs = inputs(name, MIXED_T)
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            r.enable_gradient_checkpointing()
        torch.manual_seed(0)  # train-mode label dropout draws the same ids
        out = run(r, args, kwargs)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in r.named_parameters() if p.grad is not None}))
        r.zero_grad(set_to_none=True)
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    assert torch.allclose(ckpt, plain, atol=1e-5)
    assert plain_grads.keys() == ckpt_grads.keys()
    for n in plain_grads:
        assert torch.allclose(ckpt_grads[n], plain_grads[n], atol=1e-4), n


# -- targets: a subset of units ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_unet2d_targets_one_level():
    m = model("unet2d")
    spec = {**SPEC, "targets": {"include": ["down_blocks.0.*"]}}
    r = dtrsurgeon.transform(m, spec, example_inputs=dm.example_inputs(m, 2))
    assert [u.path for u in r.dtr_plan.units] == ["down_blocks.0.resnets.0"]
    args, kwargs = inputs("unet2d", MIXED_T)
    run(r, args, kwargs)


def test_dit_targets_one_block_block_mode():
    m = model("dit")
    spec = {**SPEC, "targets": {"include": ["transformer_blocks.0"]}}
    r = dtrsurgeon.transform(m, spec, example_inputs=dm.example_inputs(m, 2))
    args, kwargs = inputs("dit", MIXED_T)
    assert not torch.allclose(run(r, args, kwargs), run(m, args, kwargs), atol=1e-4)


@pytest.mark.slow
def test_dit_targets_one_block_branch_mode():
    m = model("dit")
    spec = {**SPEC, "routing": {"mode": "branch"}, "targets": {"include": ["transformer_blocks.0"]}}
    r = dtrsurgeon.transform(m, spec, example_inputs=dm.example_inputs(m, 2))
    args, kwargs = inputs("dit", MIXED_T)
    assert not torch.allclose(run(r, args, kwargs), run(m, args, kwargs), atol=1e-4)


# -- UNet2DConditionModel past its decorator: what blocks it next ------------------------------------------------


class UndecoratedUNet2DConditionModel(diffusers.UNet2DConditionModel):
    forward = diffusers.UNet2DConditionModel.forward.__wrapped__


def undecorated_unet2d_condition():
    src = model("unet2d_condition")
    m = UndecoratedUNet2DConditionModel.from_config(src.config)
    m.load_state_dict(src.state_dict())
    return m.eval()


@pytest.mark.slow
def test_unet2d_condition_transformer2d_units_run():
    m = undecorated_unet2d_condition()
    r = dtrsurgeon.transform(m, {**SPEC, "targets": {"exclude": ["*.transformer_blocks.*"]}},
                             example_inputs=dm.example_inputs(m, 2))
    run(r, *inputs("unet2d_condition", MIXED_T))


@pytest.mark.slow
def test_unet2d_condition_inner_transformer_blocks_route():
    """Routing the BasicTransformerBlocks (not their Transformer2DModel) works once the decorator is out of the way."""
    m = undecorated_unet2d_condition()
    spec = {**SPEC, "targets": {"exclude": ["*.attentions.?"]}}
    r = dtrsurgeon.transform(m, spec, example_inputs=dm.example_inputs(m, 2))
    args, kwargs = inputs("unet2d_condition", MIXED_T)
    assert not torch.allclose(run(r, args, kwargs), run(m, args, kwargs), atol=1e-4)


# `dtrsurgeon apply` on diffusers models: tests/test_apply_library.py


def test_dit_example_inputs_are_guessed():
    p = dtrsurgeon.plan(model("dit"), SPEC)
    assert [u.path for u in p.units] == ["transformer_blocks.0", "transformer_blocks.1"]
