"""Blocks whose forward returns a tuple (tests/tuple_return_patterns.py): a stream that starts after a
line inside the block, with a tuple return on a branch the main blocks do not take (PosHintNet), and
a first control block that makes its stream from the control input and the hidden state and returns
``(hint, stream)`` (ControlStreamNet).  Both routed by ``transform()`` and by apply's file alike."""

import pytest
import torch

import dtrsurgeon
from tests import tuple_return_patterns as tp
from tests.pattern_harness import Toys, check_apply, check_routes, tensors

FILE = "tests/tuple_return_patterns.py"


def spec_for(mode="block", ratio=None):
    return {"version": 1, "timestep": {"arg": "t"},
            "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}


def build(name):
    torch.manual_seed(0)
    return getattr(tp, name)().eval()


def inputs(model, batch=3):
    torch.manual_seed(1)
    return model.example_inputs(batch)


TOYS = Toys(file=FILE, spec_for=spec_for, build=build, inputs=inputs, prefix="gen_tuple")

PATTERNS = {  # (toy, mode) -> the units it routes
    ("PosHintNet", "block"): ["blocks.0", "blocks.1", "control.0", "control.1"],
    ("PosHintNet", "branch"): ["blocks.0", "blocks.1", "control.0", "control.1"],
    ("ControlStreamNet", "block"): ["blocks.0", "blocks.1", "control.0", "control.1"],
    # control.1 takes its stream as a parameter and returns a tuple: block semantics only
    ("ControlStreamNet", "branch"): ["blocks.0", "blocks.1", "control.1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", list(PATTERNS))
def test_tuple_returning_blocks_route_per_sample_and_train(name, mode):
    check_routes(TOYS, name, mode, PATTERNS[name, mode])


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", list(PATTERNS))
def test_tuple_returning_blocks_through_apply_equal_transform(name, mode, tmp_path):
    check_apply(TOYS, name, mode, tmp_path)


def _unit_outputs(routed, args, path):
    """What the unit at ``path`` returned in one call of ``routed``, as a list of tensors."""
    seen = []
    handle = dict(routed.named_modules())[path].register_forward_hook(lambda m, i, o: seen.append(tensors(o)))
    with torch.no_grad():
        routed(*args)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("name,path,place", [("PosHintNet", "control.0", 0), ("ControlStreamNet", "control.0", 1)])
def test_made_stream_is_merged_at_its_place_and_depends_on_t(name, path, place):
    """The unit's returned stream differs between two timesteps with everything else equal; the
    item it returns beside the stream is computed from the routed stream, so it differs too."""
    model = build(name)
    routed = dtrsurgeon.transform(model, spec_for())
    unit = next(u for u in routed.dtr_plan.units if u.path == path)
    assert (unit.out_index, unit.mode) == (place, "block") and unit.stream_line is not None
    (x, _), _ = inputs(model, batch=2)
    early = _unit_outputs(routed, (x, torch.tensor([0, 0])), path)
    late = _unit_outputs(routed, (x, torch.tensor([999, 999])), path)
    assert not torch.allclose(early[place], late[place], atol=1e-4)


def test_made_stream_merge_keeps_the_bypassed_channels():
    """At the stream's place, channels the task leaves out carry the stream as it was made (the
    merge adds the bypass back): with the block's residual branch zeroed, the output equals the made
    stream on every channel, and the other item passes through unmerged."""
    model = build("ControlStreamNet")
    block = model.control[0]
    torch.nn.init.zeros_(block.fc[-1].weight)
    torch.nn.init.zeros_(block.fc[-1].bias)
    routed = dtrsurgeon.transform(model, spec_for())
    (x, t), _ = inputs(model)
    hint, stream = _unit_outputs(routed, (x, t), "control.0")
    plain_hint, plain_stream = _unit_outputs(model, (x, t), "control.0")
    assert torch.allclose(stream, plain_stream, atol=1e-6)
    assert not torch.allclose(hint, plain_hint, atol=1e-4)  # computed from the masked stream


def test_made_stream_the_returns_do_not_name_is_left_out_with_the_reason():
    """A block that may return its made stream normalised (``(hint, self.out_norm(c))``) gives no item
    to merge it at: it is left out, named in plan.skipped with why, and the rest is routed (control.1
    takes its stream as a parameter)."""
    plan = dtrsurgeon.plan(build("NormedControlNet"), spec_for())
    assert [u.path for u in plan.units] == ["blocks.0", "blocks.1", "control.1"]
    assert "nor does it return the stream it makes inside itself ('control') as one item of each tuple it returns" \
        in dict(plan.skipped)["control.0"]


def test_a_stream_renamed_by_its_first_residual_add_is_not_cut_there():
    """``h = x + self.fc(x)`` reads the parameter it adds to: a residual add, not where a stream is made.
    Routing ``h`` after it would leave that add unrouted, so the block is left out with the reason."""
    plan = dtrsurgeon.plan(build("RenamedStreamNet"), spec_for())
    assert [u.path for u in plan.units] == ["tail"]
    assert "nor does it make one stream inside itself" in dict(plan.skipped)["blocks.0"]


def test_a_tuple_return_the_example_inputs_never_took_is_refused_by_name():
    """A block whose stream is its input returns ``(x, hint)`` only once a hint is attached, a branch the
    example inputs never took: ``transform()``'s wrapper cannot tell which item is the stream and says so,
    naming the block's class, rather than failing inside the runtime on a tuple."""
    vanilla = build("InputHintNet")
    args, _ = inputs(vanilla)
    routed = dtrsurgeon.transform(vanilla, spec_for(), example_inputs=(args, {}))
    with torch.no_grad():
        routed(*args)  # the branch the plan saw
        routed.blocks[0].hint = torch.nn.Linear(16, 16)
        with pytest.raises(dtrsurgeon.EmitError, match=r"InputHintBlock: this routed block returned a tuple of 2 items"):
            routed(*args)


def test_a_block_called_without_a_task_returns_its_tuple_unrouted():
    vanilla = build("InputHintNet")
    args, _ = inputs(vanilla)
    routed = dtrsurgeon.transform(vanilla, spec_for(), example_inputs=(args, {}))
    routed.blocks[0].hint = torch.nn.Linear(16, 16)
    x, c = torch.randn(3, 6, 16), torch.randn(3, 16)
    with torch.no_grad(), pytest.warns(UserWarning):
        out = routed.blocks[0](x, c)  # no dtr_task: unrouted, as the block's own forward
    with torch.no_grad():
        expected = type(routed.blocks[0])._dtr_base.forward(routed.blocks[0], x, c)
    assert isinstance(out, tuple) and all(torch.equal(a, b) for a, b in zip(out, expected))
