"""Constructs of released backbones (guided-diffusion, EDM, EDM2) on tiny models:
tests/released_patterns.py."""

import json
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.analysis.capture import OpaqueRegionWarning, capture
from dtrsurgeon.cli import main
from dtrsurgeon.plan import Plan, SourceLine
from tests.conftest import import_path
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


def assert_routed(routed, model, x, t, identity=None, atol=1e-4):
    """``routed`` changes the output, routes each sample by its own timestep (batch == one by one),
    and ``identity`` (ratio 1) gives the model's output exactly; returns the routed output."""
    with torch.no_grad():
        out, ref = routed(x, t), model(x, t)
        one_by_one = torch.cat([routed(x[i:i + 1], t[i:i + 1]) for i in range(len(t))])
        if identity is not None:
            assert torch.equal(identity(x, t), ref)
    assert not torch.allclose(out, ref, atol=atol)
    assert torch.allclose(out, one_by_one, atol=1e-5)
    return out


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return CheckpointUNet().eval()


@pytest.fixture(scope="module")
def cond():
    torch.manual_seed(0)
    return CondCallNet().eval()


# -- F1: no_grad regions (guided-diffusion's checkpoint) ------------------------

@pytest.mark.slow
def test_no_grad_regions_are_analysed(unet):
    """Every block after the first always-checkpointed attention block is found."""
    plan = dtrsurgeon.plan(unet, spec_for(unet))
    assert [u.path for u in plan.units] == ADM_UNITS
    assert {u.path: u.cls.rsplit(".", 1)[1] for u in plan.units}["middle_block.1"] == "AttentionBlock"
    cap = capture(unet, *unet.example_inputs())
    assert not any("wrap_with" in str(n.target) for n in cap.graph.nodes)
    assert cap.opaque == ()


@pytest.mark.slow
def test_checkpointed_unet_routes_per_sample(unet):
    spec = spec_for(unet)
    routed = dtrsurgeon.transform(unet, spec)
    x, t = batch(unet)
    out = assert_routed(routed, unet, x, t, identity=dtrsurgeon.transform(unet, spec_for(unet, ratio=1.0)))
    # each sample uses its own timestep's mask: swapping timesteps changes the outputs
    with torch.no_grad():
        swapped = routed(x, t.flip(0))
    assert not torch.allclose(out, swapped, atol=1e-4)


@pytest.mark.slow
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
    x, t = batch(cond)
    assert_routed(dtrsurgeon.transform(cond, spec_for(cond)), cond, x, t,
                  identity=dtrsurgeon.transform(cond, spec_for(cond, ratio=1.0)))


def _generate(model, mode, tmp_path):
    spec = tmp_path / f"spec_{mode}.json"
    spec.write_text(json.dumps(spec_for(model, mode)))
    name = type(model).__name__
    out = tmp_path / f"{name}_{mode}_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", name, "-o", str(out)]) == 0
    module = import_path(out, f"gen_{name}_{mode}")
    generated = getattr(module, name)().eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    return spec, out.read_text(), generated


@pytest.mark.slow
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


@pytest.mark.slow
def test_generated_checkpointed_unet_equals_transform(unet, tmp_path):
    spec, text, generated = _generate(unet, "block", tmp_path)
    assert "return dtr_merge(checkpoint(self._forward, (x,), self.parameters(), True), dtr_skip, dtr_keep)" in text
    routed = dtrsurgeon.transform(unet, str(spec))
    x, t = batch(unet)
    with torch.no_grad():
        a, b = routed(x, t), generated(x, t)
    assert torch.equal(a, b)
    assert not torch.allclose(a, unet(x, t), atol=1e-4)


# -- EDM's UNetBlock: bias adds, computed resampling filters, two widths in one block -------

def edm_spec(mode, ratio=None):
    return {"version": 1, "timestep": {"arg": "noise_labels", "range": [0, 1]},
            "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}


@pytest.fixture(scope="module")
def edm():
    from tests.released_patterns import EDMNet

    torch.manual_seed(0)
    return EDMNet().eval()


EDM_TWO_WIDTHS = ("enc.block1", "its residual adds run on streams of 8 and 16 channels (a projection skip changes "
                  "the width before the next residual add) and one mask has one width: use routing.mode "
                  "'pre_output' for such units")


@pytest.mark.parametrize("mode", ["block", "branch"])
def test_edm_projection_and_resampling_skips_are_units(edm, mode):
    """The conv-then-bias-add skip, the resampling-only skips (a computed filter, conv_transpose2d) and
    the concat-fed projection all make units; the block whose two adds run on two widths is skipped."""
    with pytest.warns(UserWarning, match=r"left unrouted \(enc.block1\): its residual adds run on streams of 8 and 16"):
        plan = dtrsurgeon.plan(edm, edm_spec(mode))
    assert [(u.path, u.mode, u.channels) for u in plan.units] == [
        ("enc.block0", "branch", 8), ("enc.down", "branch", 16), ("dec.in0", "branch", 16),
        ("dec.up", "branch", 16), ("dec.block0", "branch", 24)]
    assert plan.skipped == (EDM_TWO_WIDTHS,)
    assert plan.unmatched == (("enc.block1", 8),)
    in0 = next(u for u in plan.units if u.path == "dec.in0")
    assert [sl.code.split(" = ")[0] for sl in in0.residual_lines] == ["x", "x"]
    assert len(in0.branch_lines) == 2  # conv0's input and the attention's qkv input


def test_edm_pre_output_routes_every_block(edm):
    """pre_output finds conv1 and proj through the weight cast (self.weight.to(x.dtype)); they read one width."""
    plan = dtrsurgeon.plan(edm, edm_spec("pre_output"))
    assert [(u.path, u.channels, u.masked_at) for u in plan.units] == [
        ("enc.block0", 8, "input of conv1"), ("enc.block1", 16, "input of conv1, proj"), ("enc.down", 16, "input of conv1"),
        ("dec.in0", 16, "input of conv1, proj"), ("dec.up", 16, "input of conv1"), ("dec.block0", 8, "input of conv1")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["block", "branch", "pre_output"])
def test_edm_routed_per_sample_identity_and_source_equal(edm, mode, tmp_path):
    """transform() routes per sample and is the identity at ratio 1; the file apply writes gives the same
    numbers, the skipped block included: it runs the class's rewritten forward with no table."""
    x, t = batch(edm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        routed = dtrsurgeon.transform(edm, edm_spec(mode))
        identity = dtrsurgeon.transform(edm, edm_spec(mode, ratio=1.0))
    out = assert_routed(routed, edm, x, t, identity=identity, atol=1e-3)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(edm_spec(mode)))
    out_file = tmp_path / f"edm_{mode}_dtr.py"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["apply", str(spec), FILE, "--entry", "EDMNet", "-o", str(out_file)]) == 0
    text = out_file.read_text()
    if mode != "pre_output":
        assert '"enc.block1": None,  # not routed: its residual adds run on streams of 8 and 16 channels' in text
        # the attention line masks the stream where it is read, not where its shape is
        assert ("q, k, v = self.qkv(self.norm2(dtr_masked(x, self.dtr_mask, dtr_task, 1)))"
                ".reshape(x.shape[0], x.shape[1], 3, -1).unbind(2)") in text
    module = import_path(out_file, f"gen_edm_{mode}")
    generated = module.EDMNet().eval()
    generated.load_state_dict(edm.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(generated(x, t), out)


@pytest.mark.slow
def test_edm_branch_compiles_without_graph_breaks(edm):
    x, t = batch(edm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        routed = dtrsurgeon.transform(edm, edm_spec("branch"))
    compiled = torch.compile(routed, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x, t), routed(x, t), atol=1e-6)


@pytest.mark.slow
def test_instances_whose_analysis_differs_from_their_class_are_skipped():
    """enc.block1's projection is an einsum, so its first residual add is not found: the branch lines
    of its class (conv0's input) would mask a stream the plan did not measure, so it is skipped."""
    from tests.released_patterns import EDMNet

    torch.manual_seed(0)
    model = EDMNet(einsum_skip=True).eval()
    with pytest.warns(UserWarning, match=r"left unrouted \(enc.block1\): runs .*released_patterns.py:\d+, where other "
                                         r"EDMBlock units mask their residual branch"):
        plan = dtrsurgeon.plan(model, edm_spec("branch"))
    assert "enc.block1" not in [u.path for u in plan.units] and len(plan.units) == 5
    x, t = batch(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        identity = dtrsurgeon.transform(model, edm_spec("branch", ratio=1.0))
    with torch.no_grad():
        assert torch.equal(identity(x, t), model(x, t))


# -- pre_output through a helper the forward hands to checkpoint (guided-diffusion) --------

@pytest.mark.slow
def test_pre_output_masks_projections_called_in_checkpointed_helpers(unet, tmp_path):
    """guided-diffusion calls out_layers and proj_out in _forward, which forward hands to checkpoint:
    the masks go there, and forward binds the task to the helper, so the recompute in backward
    masks the same channels."""
    spec = spec_for(unet, "pre_output")
    plan = dtrsurgeon.plan(unet, spec)
    assert [u.path for u in plan.units] == ADM_UNITS and {u.mode for u in plan.units} == {"pre_output"}
    assert {(s.module[len(u.path) + 1:], s.call.function) for u in plan.units for s in u.sites} == {
        ("out_layers.2", "ResBlock._forward"), ("proj_out", "AttentionBlock._forward")}
    routed = dtrsurgeon.transform(unet, spec)
    x, t = batch(unet)
    out = assert_routed(routed, unet, x, t, identity=dtrsurgeon.transform(unet, spec_for(unet, "pre_output", ratio=1.0)))
    # task 0 uses channels 0..5 of 8: proj_out's weight gets no gradient from channels 6 and 7
    train = dtrsurgeon.transform(unet, spec).train()
    train(x[:2], torch.tensor([0, 0])).square().mean().backward()
    grad = train.middle_block[1].proj_out.weight.grad[:, :, 0]
    assert torch.equal(grad[:, 6:], torch.zeros_like(grad[:, 6:])) and bool((grad[:, :6] != 0).all())
    spec_file, text, generated = _generate(unet, "pre_output", tmp_path)
    assert "return checkpoint(dtr_bind_task(self._forward, dtr_task), (x,), self.parameters(), True)" in text
    with torch.no_grad():
        assert torch.equal(generated(x, t), out)


def test_inspect_lists_a_skipped_unit_once_with_its_reason(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(edm_spec("branch")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["inspect", FILE, "--entry", "EDMNet", "--spec", str(spec)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "not matched by targets" not in out
    assert f"not routed: {EDM_TWO_WIDTHS[0]}: {EDM_TWO_WIDTHS[1]}" in out


@pytest.mark.slow
def test_apply_checks_only_the_files_it_rewrites(unet):
    """guided-diffusion's residual adds run in an autograd Function in nn.py, and the graph attributes
    them there. Block mode on entry rewrites only the unit's forward and branch mode the adds'
    lines: only the latter must be in the one file apply rewrites."""
    from dataclasses import replace

    from dtrsurgeon.emit.source import Header, emit_source

    header = Header(FILE, "0" * 64, "spec.json", "0" * 64, "CheckpointUNet", "{}")
    plan = dtrsurgeon.plan(unet, spec_for(unet))
    elsewhere = replace(plan, units=tuple(replace(u, residual_lines=tuple(replace(sl, file="/elsewhere/nn.py")
                                                                         for sl in u.residual_lines))
                                          for u in plan.units))
    assert emit_source(unet, elsewhere, FILE, header) == emit_source(unet, plan, FILE, header)
    branch = replace(elsewhere, units=tuple(replace(u, mode="branch") for u in elsewhere.units))
    with pytest.raises(dtrsurgeon.EmitError, match="also rewrites /elsewhere/nn.py"):
        emit_source(unet, branch, FILE, header)
