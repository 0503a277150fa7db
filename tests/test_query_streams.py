"""A residual stream that starts as learned queries expanded to the batch (tests/query_stream_patterns.py)
is routed from its first block on, while an adaLN shift expanded over the tokens is never taken for a
stream.  Checked through the plan, per-sample routing, identity at ratio 1, a training step and apply."""

import json
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.cli import main
from dtrsurgeon.runtime import dtr_task_index
from tests import query_stream_patterns as qp
from tests.conftest import import_path

FILE = "tests/query_stream_patterns.py"
DEFAULT = {"version": 1}
QUERY_LINES = ("q = q + self.attn(self.norm1(q), context)", "return q + self.mlp(self.norm2(q))")


def build(name):
    torch.manual_seed(0)
    return getattr(qp, name)().eval()


def inputs(model, batch=3):
    torch.manual_seed(1)
    return model.example_inputs(batch)[0]


def units(plan):
    return [(u.path, u.stream_arg, tuple(sl.code.strip() for sl in u.residual_lines)) for u in plan.units]


def test_learned_queries_are_the_stream_of_every_block():
    """``q = self.queries.expand(B, -1, -1)`` enters blocks.0: both its adds are residual and it is a unit,
    though its input is computed from no sample (its branches read the sample's context)."""
    plan = dtrsurgeon.plan(build("LearnedQueryNet"), DEFAULT)
    assert units(plan) == [("blocks.0", "q", QUERY_LINES), ("blocks.1", "q", QUERY_LINES)]
    assert not plan.skipped


def test_an_expanded_shift_is_no_stream():
    """The second block's input is computed from the shift (the first block added it to its normalised
    input), yet ``norm(x) * (1 + scale) + shift`` is no residual add: the blocks route ``x``."""
    plan = dtrsurgeon.plan(build("ExpandedShiftNet"), DEFAULT)
    assert units(plan) == [(f"blocks.{i}", "x", ("return x + self.mix(h)",)) for i in range(2)]


def test_an_expanded_condition_gating_a_block_is_no_stream_of_the_next():
    """``c`` reaches blocks.1's ``norm1(x)`` through blocks.0's ``mlp(...) * sigmoid(gate(c))``, outside
    blocks.1: every block is a unit on ``x`` with its two residual adds, none on ``c``."""
    plan = dtrsurgeon.plan(build("GatedConditionNet"), DEFAULT)
    lines = ("x = x + self.attn(h)", "return x + self.mlp(self.norm2(x)) * torch.sigmoid(self.gate(c))")
    assert units(plan) == [(f"blocks.{i}", "x", lines) for i in range(3)]
    assert not plan.skipped


def test_a_text_refiner_reading_the_image_is_no_unit():
    """refiners.0's stream starts from the text input; what it adds reads the image through the joint
    attention, which keeps only a stream that starts from parameters (learned queries) a unit."""
    plan = dtrsurgeon.plan(build("JointTextRefinerNet"), DEFAULT)
    assert [p for p, _ in plan.skipped] == ["refiners.0"]
    assert "processes only the timestep or the conditioning" in plan.skipped[0][1]
    assert [(f"blocks.{i}", "q", QUERY_LINES) for i in range(2)] == units(plan)[-2:]
    assert "refiners.0" not in [u.path for u in plan.units]


@pytest.mark.parametrize("name", ["LearnedQueryNet", "ExpandedShiftNet", "GatedConditionNet", "JointTextRefinerNet"])
def test_routes_per_sample_is_identity_at_ratio_one_and_trains(name):
    model = build(name)
    routed = dtrsurgeon.transform(model, DEFAULT)
    identity = dtrsurgeon.transform(model, {"version": 1, "routing": {"channel_ratio": 1.0}})
    args = inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out, ref = routed(*args), model(*args)
            assert torch.equal(identity(*args), ref)
            alone = torch.cat([routed(*(a[i:i + 1] for a in args)) for i in range(len(args[0]))])
            assert torch.allclose(out, alone, atol=1e-5)
        assert not torch.allclose(out, ref, atol=1e-4)
        routed.train()
        routed(*args).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in routed.parameters() if p.grad is not None)


def test_first_query_block_routes_the_expanded_queries():
    """blocks.0 computes ``block(q * m, context) + q * (1 - m)`` on the expanded queries, m the task's
    channel window: the DTR block form, written out with the unrouted block."""
    model = build("LearnedQueryNet")
    routed = dtrsurgeon.transform(model, {"version": 1, "routing": {"channel_ratio": 0.25}})
    x, t = inputs(model)
    seen = {}
    routed.blocks[0].register_forward_hook(lambda module, args, out: seen.setdefault("out", out))
    with torch.no_grad():
        routed(x, t)
        keep = routed.blocks[0].dtr_mask[dtr_task_index(t, 0.0, 999.0, 1000, False)][:, None].float()
        context = model.embed(x) + model.temb(qp.time_features(t, model.dim))[:, None]
        queries = model.queries.expand(len(x), -1, -1)
        want = model.blocks[0](queries * keep, context) + queries * (1 - keep)
    assert torch.allclose(seen["out"], want, atol=1e-6)
    assert not torch.allclose(seen["out"], model.blocks[0](queries, context), atol=1e-4)


@pytest.mark.parametrize("name", [pytest.param("LearnedQueryNet", marks=pytest.mark.slow), "ExpandedShiftNet",
                                  "GatedConditionNet", "JointTextRefinerNet"])
def test_through_apply_equals_transform(name, tmp_path):
    model = build(name)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(DEFAULT))
    out = tmp_path / f"{name}_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", name, "-o", str(out)]) == 0
    generated = getattr(import_path(out, f"gen_query_{name}"), name)().eval()
    generated.load_state_dict(model.state_dict(), strict=True)
    routed = dtrsurgeon.transform(model, DEFAULT)
    args = inputs(model)
    with torch.no_grad():
        assert torch.equal(generated(*args), routed(*args))
