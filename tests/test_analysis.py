"""Analysis: residual detection, units, channel axes, plan IR, capture errors."""

import json

import pytest
import torch

import dtrsurgeon
from dtrsurgeon import CaptureError, NoMatchingUnitError, Plan, SpecError
from dtrsurgeon.analysis.capture import capture
from dtrsurgeon.analysis.residuals import find_residual_adds, group_chains
from dtrsurgeon.analysis.targets import select_units
from model_zoo.dit import DiT, tiny_dit
from tests import toy_models


def test_dit_has_exactly_depth_units_and_nothing_else():
    model = tiny_dit(depth=3)
    p = dtrsurgeon.plan(model, {"version": 1})
    assert [u.path for u in p.units] == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(u.cls == "model_zoo.dit.DiTBlock" and u.mode == "block" and u.mode_note == "" for u in p.units)
    assert all((u.channel_axis, u.rank, u.channels, u.active) == (2, 3, 64, 51) for u in p.units)
    assert all(u.stream_arg == "x" for u in p.units)


def test_dit_residual_adds_are_only_the_block_adds():
    model = tiny_dit(depth=2)
    cap = capture(model, *model.example_inputs())
    adds = find_residual_adds(cap.graph)
    # x + pos_embed, t + y, and modulate's "+ shift" are not residuals
    assert sorted({a.module for a in adds}) == ["blocks.0", "blocks.1"]
    assert len(adds) == 4
    chains = group_chains(adds)
    assert [len(c.adds) for c in chains] == [2, 2]
    assert chains[1].start is chains[0].end  # block 1's stream is block 0's output


@pytest.mark.slow
def test_dit_xl_2_is_28_units_of_width_1152():
    with torch.device("meta"):
        model = DiT(depth=28, hidden_size=1152, num_heads=16, input_size=4)
    args, kwargs = model.example_inputs()
    p = dtrsurgeon.plan(model, "dit-paper", (tuple(a.to("meta") for a in args), kwargs))
    assert len(p.units) == 28 and {u.channels for u in p.units} == {1152} and {u.active for u in p.units} == {921}


def test_concat_skip_and_independent_adds_are_not_residual():
    with pytest.raises(NoMatchingUnitError, match="no residual unit"):
        dtrsurgeon.plan(toy_models.ConcatOnly(), {"version": 1})


def test_feature_maps_route_on_axis_1():
    p = dtrsurgeon.plan(toy_models.ConvNet(), {"version": 1})
    assert [u.path for u in p.units] == ["body.0", "body.1"]
    assert all((u.channel_axis, u.rank, u.channels) == (1, 4, 8) for u in p.units)


def test_plan_is_json_and_round_trips(dit):
    p = dtrsurgeon.plan(dit, {"version": 1, "overrides": [{"match": "blocks.1", "channel_ratio": 0.5}]})
    text = p.to_json()
    assert json.loads(text)["version"] == 2
    assert Plan.from_dict(json.loads(text)) == p
    assert p.unit("blocks.1").active == 32 and p.unit("blocks.0").active == 51
    call = p.unit("blocks.0").call_path[-1]
    assert call.function == "DiT.forward" and call.code == "x = block(x, c)"


def test_plan_changes_nothing(dit):
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    cls, training = type(dit), dit.training
    dtrsurgeon.plan(dit, {"version": 1})
    assert type(dit) is cls and dit.training == training
    assert all(torch.equal(before[k], v) for k, v in dit.state_dict().items())
    assert not any(hasattr(m, "dtr_mask") for m in dit.modules())


def test_calls_through_a_helper_method_are_recorded():
    p = dtrsurgeon.plan(toy_models.ThroughHelper(), {"version": 1})
    assert [s.function for s in p.units[0].call_path] == ["ThroughHelper.forward", "ThroughHelper.features"]


def test_include_pattern_matching_nothing_is_an_error(dit):
    with pytest.raises(NoMatchingUnitError, match=r"/targets/include/0: pattern 'block.\*' matches no routable unit; units found: blocks.0, blocks.1"):
        dtrsurgeon.plan(dit, {"version": 1, "targets": {"include": ["block.*"]}})


def test_override_matching_nothing_is_an_error(dit):
    with pytest.raises(NoMatchingUnitError, match="/overrides/0/match"):
        dtrsurgeon.plan(dit, {"version": 1, "overrides": [{"match": "final_layer", "channel_ratio": 0.5}]})


def test_timestep_arg_not_in_forward_is_a_spec_error(dit):
    with pytest.raises(SpecError, match=r"spec /timestep/arg: 'timestep' is not an argument of DiT.forward\(x, t, y\)"):
        dtrsurgeon.plan(dit, {"version": 1, "timestep": {"arg": "timestep"}})


def test_data_dependent_control_flow_is_captured_on_real_tensors():
    """export cannot follow `if x.sum() > 0:` on fake tensors; the trace on the real inputs can."""
    assert [u.path for u in dtrsurgeon.plan(toy_models.DataDependent(), {"version": 1}).units] == ["block"]


def test_a_real_tensor_trace_knows_the_sample_input():
    """The trace names its inputs arg0_1, ...; the mapping network on the timestep is still no unit."""
    model = toy_models.DataDependentMapped()
    assert capture(model, *model.example_inputs()).method == "real-tensor trace"
    p = dtrsurgeon.plan(model, {"version": 1})
    assert [u.path for u in p.units] == ["block"]
    assert "processes only the timestep or the conditioning (no stream of it is computed from the sample 'x')" in \
        dict(p.skipped)["mapping"]


def test_uncapturable_model_names_module_and_line():
    with pytest.raises(CaptureError) as info:
        dtrsurgeon.plan(toy_models.BrokenExample(), {"version": 1})
    msg = str(info.value)
    assert "module 'block' (DataDependentBlock)" in msg
    assert "toy_models.py:" in msg and "x = x + self.fc(x)" in msg
    assert "\n" not in msg


def test_example_inputs_are_guessed_from_the_signature():
    class NoExample(DiT):
        example_inputs = None

    model = NoExample(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    p = dtrsurgeon.plan(model, {"version": 1})
    assert len(p.units) == 2


TARGETS = [
    # units, include, exclude, expected
    (["a.0", "a.1", "b.0"], [], [], ["a.0", "a.1", "b.0"]),
    (["a.0", "a.1", "b.0"], ["a.*"], [], ["a.0", "a.1"]),
    (["a.0", "a.1", "b.0"], ["a.*"], ["a.1"], ["a.0"]),  # exclude wins
    (["a.0", "a.1", "b.0"], ["b.0"], [], ["b.0"]),  # an exact path is a pattern
    (["a.0", "a.10", "a.1"], ["a.1"], [], ["a.1"]),  # no prefix matching
    (["a.0", "a.1"], [], ["*"], None),  # nothing left
    (["a.0"], ["c.*"], [], None),  # include matches nothing
]


@pytest.mark.parametrize("units,include,exclude,expected", TARGETS)
def test_select_units(units, include, exclude, expected):
    if expected is None:
        with pytest.raises(NoMatchingUnitError):
            select_units(units, include, exclude)
    else:
        assert select_units(units, include, exclude) == expected


def test_magnitude_preserving_lerp_residuals_are_found():
    spec = {"version": 1, "timestep": {"arg": "noise_labels", "range": [0.002, 80.0]}}
    p = dtrsurgeon.plan(toy_models.MPNet(), spec)
    assert [u.path for u in p.units] == ["enc.0", "enc.1"] and {u.channel_axis for u in p.units} == {1}
    routed = dtrsurgeon.transform(toy_models.MPNet(), {**spec, "routing": {"channel_ratio": 1.0}})
    model = toy_models.MPNet()
    routed.load_state_dict(model.state_dict())
    (x, sigma), _ = model.example_inputs()
    assert torch.equal(routed(x, sigma), model(x, sigma))


def test_adds_of_two_casts_of_one_stream_are_residual():
    """``(x.float() + f(x.float())).type_as(x)``: the skip and the branch read two casts of x.
    Each block's chain holds both adds and starts at the block's input, which is masked there; the
    tuple-returning blocks (adds written over two lines) find their stream by its name."""
    model = toy_models.CastNet()
    cap = capture(model, *model.example_inputs())
    chains = group_chains(find_residual_adds(cap.graph, set(cap.params)))
    assert [(c.module, len(c.adds)) for c in chains] == [
        ("hint_blocks.0", 2), ("blocks.0", 2), ("hint_blocks.1", 2), ("blocks.1", 2)]
    assert not any(a.projection for c in chains for a in c.adds)
    p = dtrsurgeon.plan(model, {"version": 1})
    assert [u.path for u in p.units] == ["blocks.0", "blocks.1", "hint_blocks.0", "hint_blocks.1"]
    assert {(u.mode, u.mode_note, u.stream_arg, u.masked_at) for u in p.units if u.out_index is None} == {
        ("block", "", "x", "unit input (x)")}
    assert {(u.stream_arg, u.out_index) for u in p.units if u.out_index is not None} == {("x", 1)}
    branch = dtrsurgeon.plan(model, {"version": 1, "routing": {"mode": "branch"}})
    assert {tuple(sl.code for sl in u.branch_lines) for u in branch.units if u.out_index is None} == {
        ("h = self.norm1(x.float()) + c[:, None]", "h = self.norm2(x.float())")}


def test_an_embedding_each_block_adds_again_is_no_residual_branch():
    """Block 1's ``x + pos`` adds a tensor its stream carries since block 0: pos is not computed in
    block 1, so the add is no residual; each block holds its one residual add."""
    model = toy_models.PosNet()
    cap = capture(model, *model.example_inputs())
    adds = find_residual_adds(cap.graph, set(cap.params))
    assert [(a.module, a.node.meta["stack_trace"].strip().splitlines()[-1].strip()) for a in adds] == [
        ("blocks.0", "x = x + self.fc(self.norm(x))"), ("blocks.1", "x = x + self.fc(self.norm(x))")]
