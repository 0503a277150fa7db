"""More research code as released (tests/reference_impl_patterns.py): reference-Flux and reference-SD3
blocks, a root that returns projector features beside its output, a decoupled encoder-decoder
DiT, and blocks held in a ModuleDict or in nested stages.  Each toy goes through the default spec
(the one a user gets with no options): the plan's units, every sample routed as if run alone,
identity at channel_ratio 1, a training step, and ``apply``'s file computing what
``transform()`` computes."""

import json
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.analysis.capture import capture
from dtrsurgeon.analysis.residuals import find_residual_adds, group_chains
from dtrsurgeon.analysis.streams import NoStreams, tuple_streams
from dtrsurgeon.cli import main
from tests import reference_impl_patterns as rp
from tests.conftest import import_path, randomize_
from tests.pattern_harness import Toys, check_apply, check_routes, each_toy_and_mode, run_alone

FILE = "tests/reference_impl_patterns.py"

PATTERNS = {  # toy -> the units its default spec routes
    "FluxRefNet": ["double_blocks.0", "double_blocks.1", "single_blocks.0", "single_blocks.1"],
    "SD3RefNet": ["joint_blocks.0", "joint_blocks.1", "joint_blocks.2"],
    "ProjectorSiT": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "DecoupledDiT": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "DictNet": ["encoder.enc0", "encoder.enc1", "decoder.dec0", "decoder.dec1", "refiner.ref0",
                "refiner.ref1"],
    "StageNet": ["stages.0.0", "stages.0.1", "stages.1.0"],
    "ListStageNet": ["stage1.0", "stage1.1", "stage2.0"],
}


def spec_for(mode="block", ratio=None):
    return {"version": 1, "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}


def build(name):
    torch.manual_seed(0)
    return randomize_(getattr(rp, name)()).eval()


def inputs(model, batch=3):
    return model.example_inputs(batch)


TOYS = Toys(file=FILE, spec_for=spec_for, build=build, inputs=inputs, prefix="gen_refimpl")


@pytest.mark.parametrize("name", list(PATTERNS))
def test_default_spec_finds_a_unit_on_every_residual_block(name):
    assert [u.path for u in dtrsurgeon.plan(build(name), spec_for()).units] == PATTERNS[name]


@each_toy_and_mode(PATTERNS)
def test_pattern_routes_per_sample_is_identity_at_ratio_one_and_trains(name, mode):
    check_routes(TOYS, name, mode)


@each_toy_and_mode(PATTERNS)
def test_pattern_through_apply_equals_transform(name, mode, tmp_path):
    check_apply(TOYS, name, mode, tmp_path)


# -- reference SD3: streams that come in through *args ---------------------------------------------

def _joint_block_streams(context_tokens):
    """tuple_streams of joint_blocks.0 of SD3RefNet on a context of ``context_tokens`` tokens (the
    image gives 4)."""
    model = build("SD3RefNet")
    args, kwargs = inputs(model)
    args = (*args[:3], torch.randn(3, context_tokens, 6))
    cap = capture(model, args, kwargs)
    params = set(cap.params)
    starts = [(c.start, "") for c in group_chains(find_residual_adds(cap.graph, params)) if c.module == "joint_blocks.0"]
    return tuple_streams("joint_blocks.0", model.joint_blocks[0], starts, cap.output_shapes["joint_blocks.0"], params,
                         cap.input_shapes["joint_blocks.0"])


def test_streams_through_args_are_told_apart_by_shape_and_never_guessed():
    """forward(self, *args, **kwargs) returns what block_mixing builds: each stream is the positional
    argument whose shape no other argument has, merged where the one item of that shape is returned.
    A context as long as the image leaves nothing to tell them apart: the block is not a unit."""
    assert [(s.arg, s.out_index) for s in _joint_block_streams(3)] == [("args[0]", 0), ("args[1]", 1)]
    with pytest.raises(NoStreams, match="no argument of it comes back in that tuple with a shape no other"):
        _joint_block_streams(4)


@pytest.mark.slow
def test_sd3_routes_the_image_tokens_by_default_and_the_context_on_request(tmp_path):
    """The routed stream is args[1], the one the caller unpacks as ``x`` (the root's sample); with
    routing.streams "all" the context too, except in the last block, which returns None for it.  The
    generated forward puts each routed argument back into ``args``."""
    model = build("SD3RefNet")
    default = dtrsurgeon.plan(model, spec_for())
    assert {(u.stream_arg, u.out_index, u.streams) for u in default.units} == {("args[1]", 1, ())}
    every = {**spec_for(), "routing": {"streams": "all"}}
    assert [[(s.arg, s.out_index, s.buffer) for s in u.streams] for u in dtrsurgeon.plan(model, every).units] == [
        [("args[0]", 0, "dtr_mask_args_0")]] * 2 + [[]]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(every))
    out = tmp_path / "sd3_all_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", "SD3RefNet", "-o", str(out)]) == 0
    lines = [ln.strip() for ln in out.read_text().splitlines()]
    assert "def forward(self, *args, dtr_task, **kwargs):" in lines
    assert "args = (*args[:1], args_1, *args[2:])" in lines and "args = (*args[:0], args_0, *args[1:])" in lines
    generated = import_path(out, "gen_refimpl_sd3_all").SD3RefNet().eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    routed = dtrsurgeon.transform(model, every)
    args, kwargs = inputs(model)
    with torch.no_grad():
        assert torch.equal(generated(*args), routed(*args))
        assert not torch.allclose(routed(*args), dtrsurgeon.transform(model, spec_for())(*args), atol=1e-4)
        assert torch.allclose(routed(*args), run_alone(routed, args, kwargs)[0], atol=1e-5)


@pytest.mark.slow
def test_decoupled_dit_reuses_a_routed_condition():
    """Given the condition s of a routed call, the routed model skips its encoder and predicts what the
    call that computed s predicted; the unrouted encoder's s gives another prediction."""
    model = build("DecoupledDiT")
    routed = dtrsurgeon.transform(model, spec_for())
    args, _ = inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out, s = routed(*args)
            assert torch.equal(routed(*args, s=s)[0], out)
            assert not torch.allclose(routed(*args, s=model(*args)[1])[0], out, atol=1e-4)


@pytest.mark.parametrize("form", ["module", "source"])
def test_stages_in_plain_lists_route_on_the_path_the_example_did_not_take(form, tmp_path):
    """Masked training walks the stages through a plain list attribute, a line the example inputs did
    not run: every block called there gets its task (no call runs unrouted), in the live module and
    in apply's file."""
    model = build("ListStageNet")
    if form == "module":
        routed = dtrsurgeon.transform(model, spec_for())
    else:
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps(spec_for()))
        out = tmp_path / "list_stage_dtr.py"
        assert main(["apply", str(spec), FILE, "--entry", "ListStageNet", "-o", str(out)]) == 0
        assert "kept = blk(kept, c, dtr_task=dtr_task)" in out.read_text()
        routed = import_path(out, "gen_refimpl_list_stage").ListStageNet()
        routed.load_state_dict(model.state_dict(), strict=True)
    args, _ = inputs(model)
    seen = []
    hooks = [routed.get_submodule(p).register_forward_pre_hook(lambda m, a, kw: seen.append("dtr_task" in kw),
                                                                with_kwargs=True)
             for p in PATTERNS["ListStageNet"]]
    routed.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        routed(*args, mask_ratio=0.5).square().mean().backward()
    for hook in hooks:
        hook.remove()
    assert seen == [True] * 3
