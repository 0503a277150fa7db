"""Multi-stream units, folded batches and the choice of units, on toy backbones of our own
(tests/stream_patterns.py): MMDiT joint blocks, video models that fold frames into the batch both
ways, a channels-last hourglass with lerp skips and a mapping network, and ``x = attn(x) + x``
written in the root's forward (also on a cast of the callee's output).  Each is checked the same way: the plan's units, identity at
channel_ratio 1, every sample routed as if run alone, a training step, and ``apply``'s
generated file computing what ``transform()`` computes."""

import json

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.cli import main
from dtrsurgeon.runtime import dtr_channel_mask, dtr_fold_task
from tests import stream_patterns as sp
from tests.conftest import import_path, randomize_

FILE = "tests/stream_patterns.py"

# entry in FILE -> {unit path: (channel axis, width, place in the returned tuple, fold, further streams)}
EXPECTED = {
    "MMDiT": {
        "joint_blocks.0": (2, 16, 1, None, ("encoder_hidden_states",)),
        "joint_blocks.1": (2, 16, 1, None, ("encoder_hidden_states",)),
        "single_blocks.0": (2, 16, 1, None, ("encoder_hidden_states",)),
        "last_block": (2, 16, 1, None, ()),  # returns None for the text tokens: nothing to merge there
    },
    "VideoNet": {"spatial.0": (1, 8, None, "interleave", ()), "spatial.1": (1, 8, None, "interleave", ()),
                 "temporal": (2, 8, None, "interleave", ())},
    "video_frame_major": {"spatial.0": (1, 8, None, "repeat", ()), "spatial.1": (1, 8, None, "repeat", ()),
                          "temporal": (2, 8, None, "interleave", ())},
    "Hourglass": {"down_block": (3, 8, None, None, ()), "mid_block": (3, 16, None, None, ()),
                  "up_block": (3, 8, None, None, ())},
    "RootAttnNet": {"attn1": (2, 8, None, None, ()), "attn2": (2, 8, None, None, ())},
    # the samples on axis 1; the shift added to the normalised stream is no residual skip
    "SeqFirstNet": {"blocks.0": (2, 8, None, "sequence_first", ()), "blocks.1": (2, 8, None, "sequence_first", ())},
    "RootCastNet": {"attn1": (2, 8, None, None, ()), "attn2": (2, 8, None, None, ())},
    "LoopNet": {"blocks.0": (2, 8, None, None, ()), "blocks.1": (2, 8, None, None, ())},
    "CopyingAttnNet": {"attn1": (2, 8, None, None, ()), "attn2": (2, 8, None, None, ())},
    # the mlp add is no callee's (its branch reads norm(x)): the block stays one unit, the bypass merged
    # into norm_out's output as for any block
    "OutNormNet": {"blocks.0": (2, 8, None, None, ()), "blocks.1": (2, 8, None, None, ())},
}
SPEC = {"version": 1, "routing": {"streams": "all", "channel_ratio": 0.5}}

_models = {}


def model(entry):
    if entry not in _models:
        torch.manual_seed(0)
        _models[entry] = randomize_(getattr(sp, entry)()).eval()
    return _models[entry]


def spec(**routing):
    return {**SPEC, "routing": {**SPEC["routing"], **routing}}


def inputs(m, batch_size=3):
    return m.example_inputs(batch_size)[0]


def one_by_one(routed, args):
    return torch.cat([routed(*(a[i:i + 1] for a in args)) for i in range(len(args[0]))])


@pytest.mark.parametrize("entry", list(EXPECTED))
def test_units_axes_streams_and_folds(entry):
    plan = dtrsurgeon.plan(model(entry), SPEC)
    found = {u.path: (u.channel_axis, u.channels, u.out_index, u.fold, tuple(s.arg for s in u.streams))
             for u in plan.units}
    assert found == EXPECTED[entry]
    assert type(plan).from_dict(json.loads(plan.to_json())) == plan


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(EXPECTED))
def test_identity_per_sample_routing_and_training(entry):
    m = model(entry)
    args = inputs(m)
    with torch.no_grad():
        ref = m(*args)
        identity = dtrsurgeon.transform(m, spec(channel_ratio=1.0))
        assert torch.equal(identity(*args), ref)
        routed = dtrsurgeon.transform(m, SPEC)
        out = routed(*args)
        assert not torch.allclose(out, ref, atol=1e-4)
        assert torch.allclose(out, one_by_one(routed, args), atol=1e-5)
    routed.train()
    loss = routed(*args).square().mean()
    loss.backward()
    grads = [p.grad for p in routed.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_mmdit_routes_the_sample_stream_by_default_and_every_stream_on_request():
    m = model("MMDiT")
    args = inputs(m)
    plan = dtrsurgeon.plan(m, {"version": 1})
    assert {u.path: (u.stream_arg, u.streams) for u in plan.units} == {
        p: ("hidden_states", ()) for p in EXPECTED["MMDiT"]}
    with torch.no_grad():
        sample_only = dtrsurgeon.transform(m, spec(streams="sample"))(*args)
        every = dtrsurgeon.transform(m, SPEC)(*args)
    assert not torch.allclose(sample_only, every, atol=1e-4)  # the text stream's masks change the output
    routed = dtrsurgeon.transform(m, SPEC)
    assert routed.get_submodule("joint_blocks.0").dtr_mask_encoder_hidden_states.shape == (1000, 16)
    assert not hasattr(routed.get_submodule("last_block"), "dtr_mask_encoder_hidden_states")


def test_the_text_stream_alone_is_masked_where_routed():
    """routing.streams 'all' on one joint block: the returned text tokens are the block's output on
    the masked input plus the bypass, as the image tokens are."""
    m = model("MMDiT")
    block = m.joint_blocks[0]
    routed = dtrsurgeon.transform(m, {**SPEC, "targets": {"include": ["joint_blocks.0"]}})
    unit = routed.joint_blocks[0]
    g = torch.Generator().manual_seed(3)
    x, c, temb = torch.randn(2, 8, 16, generator=g), torch.randn(2, 3, 16, generator=g), torch.randn(2, 16, generator=g)
    task = torch.tensor([0, 999])
    keep_x = unit.dtr_mask[task][:, None, :].float()
    keep_c = unit.dtr_mask_encoder_hidden_states[task][:, None, :].float()
    with torch.no_grad():
        c_out, x_out = unit(x, c, temb, dtr_task=task)
        c_ref, x_ref = block(x * keep_x, c * keep_c, temb)
    assert torch.allclose(x_out, x_ref + x * (1 - keep_x), atol=1e-6)
    assert torch.allclose(c_out, c_ref + c * (1 - keep_c), atol=1e-6)


@pytest.mark.parametrize("fold,expected", [("interleave", [7, 7, 9, 9, 5, 5]), ("repeat", [7, 9, 5, 7, 9, 5])])
def test_fold_task_expands_each_sample_onto_its_rows(fold, expected):
    task = torch.tensor([7, 9, 5])
    assert dtr_fold_task(task, torch.zeros(6, 4), fold).tolist() == expected
    assert dtr_fold_task(task, torch.zeros(3, 4), fold).tolist() == [7, 9, 5]
    assert dtr_fold_task(torch.tensor(4), torch.zeros(6, 4), fold).dim() == 0


def test_a_sequence_first_stream_takes_its_mask_on_axis_1():
    table = torch.tensor([[True, False], [False, True]])
    task = dtr_fold_task(torch.tensor([1, 0, 1]), torch.zeros(5, 3, 2), "sequence_first")
    keep = dtr_channel_mask(table, task, torch.zeros(5, 3, 2), 2)
    assert keep.shape == (1, 3, 2) and keep[0].tolist() == [[False, True], [True, False], [False, True]]
    assert dtr_fold_task(torch.tensor(1), torch.zeros(5, 3, 2), "sequence_first").dim() == 0


def test_a_fold_the_analysis_cannot_follow_leaves_the_unit_unrouted():
    """Rows of a folded batch gathered by an index the analysis does not follow: no mapping, so the
    unit is skipped with the reason instead of crashing at run time."""

    class Shuffled(sp.VideoNet):
        def forward(self, x, t):
            b, _, f, h, w = x.shape
            x = self.conv_in(x)
            emb = self.time(sp.timestep_features(t, self.dim)).repeat_interleave(f, dim=0)
            x = x.permute(0, 2, 1, 3, 4).reshape(b * f, self.dim, h, w)[torch.arange(b * f).flip(0)]
            for block in self.spatial:
                x = block(x, emb)
            return x.sum()

    torch.manual_seed(0)
    with pytest.raises(dtrsurgeon.errors.EmitError, match="cannot tell which rows belong to which sample"):
        dtrsurgeon.plan(Shuffled().eval(), {"version": 1, "targets": {"include": ["spatial.0"]}})


def test_hourglass_leaves_out_the_mapping_network_and_the_lerp_skip():
    plan = dtrsurgeon.plan(model("Hourglass"), SPEC)
    skipped = dict(plan.skipped)
    assert "mapping" in skipped and "timestep or the conditioning" in skipped["mapping"]
    assert "merge" not in {u.path for u in plan.units}
    opted_in = dtrsurgeon.plan(model("Hourglass"), {**SPEC, "targets": {"include": ["mapping", "*_block"]}})
    assert "mapping" in {u.path for u in opted_in.units}


def test_a_real_tensor_capture_leaves_out_the_mapping_network_too():
    """The real-tensor trace names its placeholders arg0_1, ...: the sample is found through the capture's
    argument -> placeholder map, not by its name."""
    class DataDependent(sp.Hourglass):
        def forward(self, x, t):
            if len(set(t.tolist())) > 0:  # data-dependent Python: export gives up
                return sp.Hourglass.forward(self, x, t)
            return x

    torch.manual_seed(0)
    plan = dtrsurgeon.plan(randomize_(DataDependent()).eval(), SPEC)
    skipped = dict(plan.skipped)
    assert "mapping" in skipped and "timestep or the conditioning" in skipped["mapping"]
    assert {u.path for u in plan.units} == {"down_block", "mid_block", "up_block"}


def test_a_branch_looping_on_an_alias_of_the_input_reads_it_masked_once():
    """``out = x; for layer in self.layers: out = layer(out)``: the first layer reads x masked, the
    next ones read what the previous made (4 channels, where a mask of 8 would not fit)."""
    m = model("LoopNet")
    routed = dtrsurgeon.transform(m, SPEC)
    x, t = inputs(m)
    h = m.proj_in(x) + m.time(sp.timestep_features(t, m.dim))[:, None]
    task = torch.round(t.float()).long()
    keep = routed.blocks[0].dtr_mask[task][:, None, :].float()
    block = m.blocks[0]
    with torch.no_grad():
        expected = block.skip(h) + block.layers[1](block.layers[0](h * keep))
        assert torch.allclose(routed.blocks[0](h, dtr_task=task), expected, atol=1e-6)
        assert torch.allclose(routed(x, t), one_by_one(routed, (x, t)), atol=1e-5)


def test_root_level_residual_add_routes_the_callee_input_only():
    m = model("RootAttnNet")
    routed = dtrsurgeon.transform(m, SPEC)
    x, t = inputs(m)
    h = m.proj_in(x) + m.time(sp.timestep_features(t, m.dim))[:, None]
    task = torch.round(t.float()).long()
    keep = routed.attn1.dtr_mask[task][:, None, :].float()
    with torch.no_grad():
        assert torch.allclose(routed.attn1(h, dtr_task=task), m.attn1(h * keep), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("entry", list(EXPECTED))
def test_generated_source_equals_the_module(entry, tmp_path):
    m = model(entry)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    out = tmp_path / f"{entry}_dtr.py"
    assert main(["apply", str(spec_path), FILE, "--entry", entry, "-o", str(out)]) == 0
    generated = getattr(import_path(out, f"gen_streams_{entry}"), entry)().eval()
    generated.load_state_dict(m.state_dict(), strict=True)
    routed = dtrsurgeon.transform(m, SPEC)
    args = inputs(m)
    with torch.no_grad():
        a, b = routed(*args), generated(*args)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, m(*args), atol=1e-4)


def test_inspect_shows_each_stream_and_the_folded_batch(tmp_path, capsys):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    assert main(["inspect", FILE, "--entry", "MMDiT", "--spec", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert ("streams of joint_blocks.0: hidden_states (axis 2, C=16, K=8, returned at [1]), "
            "encoder_hidden_states (axis 2, C=16, K=8, returned at [0])") in out
    assert "streams of last_block: hidden_states (axis 2, C=16, K=8, returned at [1])\n" in out
    assert main(["inspect", FILE, "--entry", "video_frame_major"]) == 0
    assert "folded batch in spatial.0: several rows per sample (repeat)" in capsys.readouterr().out


def test_routing_streams_is_validated_and_round_trips():
    with pytest.raises(dtrsurgeon.errors.SpecError, match="/routing/streams"):
        dtrsurgeon.load_spec({"version": 1, "routing": {"streams": "both"}})
    every = dtrsurgeon.load_spec(SPEC)
    assert every.streams == "all" and dtrsurgeon.load_spec(every.to_dict()) == every
    assert "streams" not in dtrsurgeon.load_spec({"version": 1}).to_dict()["routing"]  # default: as before
