"""U-Nets and U-ViT: units, axes, placements, and the two emitters agreeing."""


import pytest
import torch
from torch._dynamo.testing import CompileCounter

import dtrsurgeon
from dtrsurgeon import mask_table
from dtrsurgeon.cli import main
from model_zoo.adm_unet import adm_unet
from model_zoo.uvit import uvit
from tests.conftest import import_path, randomize_

ADM_UNITS = ["input_blocks.1.0", "input_blocks.2.0", "input_blocks.3.0", "input_blocks.3.1", "middle_block.0",
             "middle_block.1", "middle_block.2", "output_blocks.0.0", "output_blocks.0.1", "output_blocks.1.0",
             "output_blocks.1.1", "output_blocks.1.2", "output_blocks.2.0", "output_blocks.3.0"]


@pytest.fixture(scope="module")
def adm():
    torch.manual_seed(0)
    return randomize_(adm_unet("tiny"), std=0.05).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return randomize_(uvit("tiny")).eval()


def inputs(model, t):
    (x, _), kwargs = model.example_inputs(len(t))
    return (x, torch.tensor(t)), kwargs


def test_adm_units_axes_and_widths(adm):
    plan = dtrsurgeon.plan(adm, "adm")
    assert [u.path for u in plan.units] == ADM_UNITS
    assert {u.channel_axis for u in plan.units} == {1}
    assert {u.mode for u in plan.units} == {"pre_output"}
    sites = {u.path: (u.sites[0].module, u.sites[0].via, u.channels) for u in plan.units}
    assert sites["input_blocks.1.0"] == ("input_blocks.1.0.out_layers.3", "sequential", 32)
    assert sites["input_blocks.3.1"] == ("input_blocks.3.1.proj_out", "call", 64)
    assert sites["output_blocks.0.0"] == ("output_blocks.0.0.out_layers.3", "sequential", 64)  # after the 128->64 merge
    assert sorted({u.channels for u in plan.units}) == [32, 64]


def test_adm_block_mode_falls_back_where_the_skip_is_a_projection(adm):
    plan = dtrsurgeon.plan(adm, {"version": 1})
    modes = {u.path: u.mode for u in plan.units}
    assert modes["input_blocks.3.1"] == "block" and modes["middle_block.1"] == "block"  # attention: identity skip
    # 32 -> 64 channels (1x1 conv skip), downsampling (pooled skip), concat inputs of the decoder
    for path in ("input_blocks.2.0", "input_blocks.3.0", "output_blocks.0.0"):
        assert modes[path] == "branch" and "projection" in plan.unit(path).mode_note
    # a ResBlock with an identity skip follows its class: one class has one forward
    assert modes["input_blocks.1.0"] == "branch" and "one class has one forward" in plan.unit("input_blocks.1.0").mode_note
    assert plan.unit("output_blocks.0.0").channels == 128  # the concat of decoder and encoder features


def test_uvit_units_and_merged_stream(vit):
    plan = dtrsurgeon.plan(vit, "uvit")
    assert [u.path for u in plan.units] == ["in_blocks.0", "in_blocks.1", "mid_block", "out_blocks.0", "out_blocks.1"]
    assert {(u.mode, u.channel_axis, u.channels) for u in plan.units} == {("block", 2, 64)}
    out = plan.unit("out_blocks.0")
    assert out.stream_line is not None and "skip_linear" in out.stream_line.code and out.stream_var == "x"
    assert plan.unit("in_blocks.0").stream_line is None


@pytest.mark.slow
@pytest.mark.parametrize("family,spec", [("adm", "adm"), ("adm", {"version": 1}),
                                         ("adm", {"version": 1, "routing": {"mode": "branch"}}),
                                         ("vit", "uvit"), ("vit", {"version": 1, "routing": {"mode": "branch"}})])
def test_identity_at_beta_one_and_keys(family, spec, adm, vit, request):
    model = adm if family == "adm" else vit
    spec = dtrsurgeon.load_spec(spec).to_dict()
    spec["routing"]["channel_ratio"] = 1.0
    routed = dtrsurgeon.transform(model, spec)
    args, kwargs = inputs(model, [0, 500, 999])
    assert torch.equal(routed(*args, **kwargs), model(*args, **kwargs))
    assert list(routed.state_dict()) == list(model.state_dict())


@pytest.mark.slow
def test_adm_pre_output_semantics_on_one_resblock(adm):
    routed = dtrsurgeon.transform(adm, "adm")
    block, ref = routed.input_blocks[1][0], adm.input_blocks[1][0]
    x = torch.randn(2, 32, 16, 16)
    emb = torch.randn(2, 128)
    task = torch.tensor([3, 990])
    m = mask_table("adm", 32)[task].float()[:, :, None, None]
    h = ref.in_layers(x)
    scale, shift = torch.chunk(ref.emb_layers(emb)[..., None, None], 2, dim=1)
    h = ref.out_layers[0](h) * (1 + scale) + shift
    h = ref.out_layers[3](ref.out_layers[1:3](h) * m)
    assert torch.allclose(block(x, emb, dtr_task=task), ref.skip_connection(x) + h, atol=1e-5)


def test_uvit_out_block_masks_the_merged_stream(vit):
    routed = dtrsurgeon.transform(vit, "uvit")
    block, ref = routed.out_blocks[0], vit.out_blocks[0]
    x, skip = torch.randn(2, 17, 64), torch.randn(2, 17, 64)
    task = torch.tensor([0, 999])
    m = mask_table("uvit", 64)[task].float()[:, None, :]
    merged = ref.skip_linear(torch.cat([x, skip], dim=-1))
    h = merged * m
    h = h + ref.attn(ref.norm1(h))
    h = h + ref.mlp(ref.norm2(h))
    assert torch.allclose(block(x, skip, dtr_task=task), h + merged * (1 - m), atol=1e-5)


def test_uvit_every_unit_is_routed_once(vit, monkeypatch):
    """The out-blocks' rewritten forward routes after the merge; the in-blocks share that forward,
    so they are not wrapped as well: one route per unit and step."""
    from dtrsurgeon import runtime

    routed = dtrsurgeon.transform(vit, "uvit")
    calls = []
    apply = runtime.DTRRoute.apply
    monkeypatch.setattr(runtime.DTRRoute, "apply", lambda *a: calls.append(1) or apply(*a))
    args, kwargs = inputs(vit, [0, 999])
    routed(*args, **kwargs)
    assert len(calls) == len(routed.dtr_plan.units) == len(vit.in_blocks) + 1 + len(vit.out_blocks)


@pytest.mark.slow
def test_zero_dim_and_continuous_timesteps(adm, vit):
    routed = dtrsurgeon.transform(adm, "adm")
    (x, _), kwargs = adm.example_inputs(2)
    assert torch.allclose(routed(x, torch.tensor(700), **kwargs), routed(x, torch.tensor([700, 700]), **kwargs), atol=1e-5)
    edm = {"version": 1, "timestep": {"range": [0.002, 80.0]}}
    routed = dtrsurgeon.transform(vit, edm)
    (x, _), kwargs = vit.example_inputs(2)
    sigma = torch.tensor([0.002, 80.0])
    out = routed(x, sigma, **kwargs)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:1], routed(x[:1], sigma[:1], **{k: v[:1] for k, v in kwargs.items()}), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["adm", "vit"])
def test_compile_fullgraph_no_recompiles(family, adm, vit):
    model = adm if family == "adm" else vit
    routed = dtrsurgeon.transform(model, "adm" if family == "adm" else "uvit")
    counter = CompileCounter()
    compiled = torch.compile(routed, backend=counter, fullgraph=True)
    for t in ([1, 900], [450, 3]):
        args, kwargs = inputs(model, t)
        assert torch.allclose(compiled(*args, **kwargs), routed(*args, **kwargs), atol=1e-5)
    assert counter.frame_count == 1


PARTIAL = {  # targets that leave out instances of the routed classes, called on other lines
    "in-only": {"version": 1, "targets": {"include": ["input_blocks.*"]}},
    "middle-branch": {"version": 1, "routing": {"mode": "branch"}, "targets": {"include": ["middle_block.*"]}},
    "out-only": {"version": 1, "targets": {"include": ["out_blocks.*"]}},
}


@pytest.mark.slow
@pytest.mark.parametrize("family,spec", [("adm", "adm"), ("adm", "dit-paper"),
                                         ("adm", "branch"), ("vit", "uvit"), ("vit", "branch"),
                                         ("adm", "in-only"), ("adm", "middle-branch"), ("vit", "out-only")])
def test_generated_source_equals_the_module(family, spec, adm, vit, tmp_path):
    model, file, entry = (adm, "model_zoo/adm_unet.py", "adm_unet") if family == "adm" else (vit, "model_zoo/uvit.py", "uvit")
    if spec == "dit-paper":
        spec_doc = {"version": 1}
    elif spec == "branch":
        spec_doc = {"version": 1, "routing": {"mode": "branch"}}
    else:
        spec_doc = PARTIAL.get(spec)
    if spec_doc is not None:
        spec = tmp_path / "spec.json"
        spec.write_text(__import__("json").dumps(spec_doc))
    out = tmp_path / "gen.py"
    assert main(["apply", str(spec), file, "--entry", entry, "--kwargs", '{"name": "tiny"}', "-o", str(out)]) == 0
    module = import_path(out, f"gen_{family}_{abs(hash(str(spec)))}")
    generated = getattr(module, entry)("tiny").eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    routed = dtrsurgeon.transform(model, str(spec))
    args, kwargs = inputs(model, [0, 333, 999])
    a, b = routed(*args, **kwargs), generated(*args, **kwargs)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, model(*args, **kwargs), atol=1e-4)


@pytest.mark.slow
def test_uvit_out_blocks_route_after_the_merge_in_the_helper(tmp_path):
    """U-ViT's released blocks hand the work to _forward, where out-blocks merge their long skip: they
    route from there, the in-blocks share that placement (routed once), forward hands the task on, and
    checkpointing recomputes with the same task."""
    from tests.toy_models import DispatchUViT

    torch.manual_seed(0)
    model = randomize_(DispatchUViT()).eval()
    spec = {"version": 1}
    plan = dtrsurgeon.plan(model, spec)
    assert [(u.path, u.mode) for u in plan.units] == [("in_blocks.0", "block"), ("in_blocks.1", "block"),
                                                      ("out_blocks.0", "block"), ("out_blocks.1", "block")]
    assert not plan.skipped
    assert plan.units[2].stream_line.function == "DispatchBlock._forward" and plan.units[2].stream_var == "x"
    routed = dtrsurgeon.transform(model, spec)
    (x, _), _ = model.example_inputs(3)
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        out = routed(x, t)
        assert not torch.allclose(out, model(x, t), atol=1e-4)
        assert torch.allclose(out, torch.cat([routed(x[i:i + 1], t[i:i + 1]) for i in range(3)]), atol=1e-5)
        assert torch.equal(dtrsurgeon.transform(model, {"version": 1, "routing": {"channel_ratio": 1.0}})(x, t), model(x, t))
        out_only = dtrsurgeon.transform(model, {"version": 1, "targets": {"include": ["out_blocks.*"]}})
        assert not torch.allclose(out_only(x, t), model(x, t), atol=1e-4)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(__import__("json").dumps(spec))
    out_file = tmp_path / "uvit_dtr.py"
    assert main(["apply", str(spec_file), "tests/toy_models.py", "--entry", "DispatchUViT", "-o", str(out_file)]) == 0
    text = out_file.read_text()
    assert "return checkpoint(dtr_bind_task(self._forward, dtr_task), x, skip, use_reentrant=False)" in text
    assert "return self._forward(x, skip, dtr_task=dtr_task)" in text
    module = import_path(out_file, "gen_dispatch_uvit")
    generated = module.DispatchUViT().eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(generated(x, t), out)
    grads = []
    for use_checkpoint in (False, True):
        net = dtrsurgeon.transform(model, spec).train()
        for m in net.modules():
            if hasattr(m, "use_checkpoint"):
                m.use_checkpoint = use_checkpoint
        net(x, t).square().mean().backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert list(grads[0]) == list(grads[1]) and any(n.startswith("out_blocks.") for n in grads[0])
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["block", "branch"])
def test_one_class_one_mode_and_instances_that_are_not_units(mode, tmp_path, capsys):
    """guided-diffusion's ResBlock runs its adds in _forward, so only block semantics can be written for
    the class; an instance with a projection skip needs branch semantics and is skipped with the reason.
    A MaybeResidual instance that adds nothing back is no unit, yet shares the rewritten forward:
    both emitters give it no mask table, so it computes what its original forward does."""
    from tests.toy_models import MixedNet

    torch.manual_seed(0)
    model = randomize_(MixedNet()).eval()
    spec = {"version": 1, "routing": {"mode": mode}}
    with pytest.warns(UserWarning, match=r"left unrouted \(convs.1\): needs branch semantics"):
        plan = dtrsurgeon.plan(model, spec)
    assert [(u.path, u.mode) for u in plan.units] == [("convs.0", "block"), ("convs.2", "block"),
                                                      ("mixers.0", mode), ("mixers.2", mode)]
    assert [p for p, _ in plan.skipped] == ["convs.1"]
    with pytest.warns(UserWarning):
        routed = dtrsurgeon.transform(model, spec)
    (x, _), _ = model.example_inputs(2)
    early, late = routed(x, torch.tensor([0, 0])), routed(x, torch.tensor([999, 999]))
    assert not torch.allclose(early, late)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(__import__("json").dumps(spec))
    capsys.readouterr()
    out = tmp_path / "g.py"
    assert main(["apply", str(spec_file), "tests/toy_models.py", "--entry", "MixedNet", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("dtrsurgeon apply: warning: 1 selected unit(s) left unrouted (convs.1)")
    text = out.read_text()
    assert '"convs.1": None,  # not routed: needs branch semantics' in text
    assert '"mixers.1": None,  # no residual chain recognised in it' in text
    module = import_path(out, f"gen_mixed_{mode}")
    generated = module.MixedNet().eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    t = torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.equal(generated(x, t), routed(x, t))
