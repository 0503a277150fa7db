"""Models whose sample is a list of per-sample tensors (tests/list_sample_patterns.py): the list is
the sample, so the blocks on the image tokens are units and the caption refiner stays conditioning;
each sample is routed by its own timestep, in ``transform()`` and in apply's file alike."""

import functools
import json
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.analysis.capture import capture, trace_real
from dtrsurgeon.cli import main
from dtrsurgeon.errors import SpecError
from tests import list_sample_patterns as lp
from tests.conftest import import_path
from tests.pattern_harness import Toys, check_apply, tensors, train_step

FILE = "tests/list_sample_patterns.py"
SAMPLE = {"PackedImageNet": None, "PackedVideoNet": None, "ContextFirstNet": "latents"}  # sample.arg of the spec
UNITS = ["noise_refiner.0", "layers.0", "layers.1"]
CONDITIONING = "it processes only the timestep or the conditioning"


def spec_for(name, mode="block", ratio=None):
    return {"version": 1, **({"sample": {"arg": SAMPLE[name]}} if SAMPLE[name] else {}),
            "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}


def build(name):
    torch.manual_seed(0)
    return getattr(lp, name)().eval()


def inputs(model, batch=4):
    """Four samples of 4 channels: each item's first axis is as long as the batch."""
    torch.manual_seed(1)
    return model.example_inputs(batch)


def toys(name):
    return Toys(file=FILE, spec_for=functools.partial(spec_for, name), build=build, inputs=inputs,
                prefix="gen_list_samples")


def with_timesteps(args, kwargs, t):
    """The call's arguments with the timestep tensor (the only 1-D long tensor) replaced by ``t``."""
    swap = lambda v: t if isinstance(v, torch.Tensor) and v.dtype == torch.long else v  # noqa: E731
    return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}


def alone(args, kwargs, i):
    """The call's arguments for sample ``i`` alone: tensors and per-sample lists sliced."""
    one = lambda v: v[i:i + 1] if isinstance(v, (torch.Tensor, list, tuple)) else v  # noqa: E731
    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


@pytest.mark.parametrize("name", list(SAMPLE))
def test_the_blocks_on_the_sample_list_are_units_and_the_caption_refiner_is_not(name):
    p = dtrsurgeon.plan(build(name), spec_for(name))
    assert [u.path for u in p.units] == UNITS
    assert CONDITIONING in dict(p.skipped)["context_refiner.0"]
    sample = SAMPLE[name] or "x"
    assert f"computed from the sample {sample!r}" in dict(p.skipped)["context_refiner.0"]


@pytest.mark.slow
def test_capture_maps_each_items_placeholder_back_to_its_list_argument():
    """Export names a list's tensors x_0, x_1, ...; a trace on real tensors argN_M: both map back."""
    model = build("PackedImageNet")
    args, kwargs = inputs(model)
    exported = capture(model, args, kwargs).inputs
    assert exported == {"x": ("x_0", "x_1", "x_2", "x_3"), "t": ("t",),
                        "cap_feats": ("cap_feats_0", "cap_feats_1", "cap_feats_2", "cap_feats_3")}
    traced = trace_real(model, args, kwargs)[2]
    assert {k: len(v) for k, v in traced.items()} == {"x": 4, "t": 1, "cap_feats": 4}
    assert len(set(traced["x"]) | set(traced["cap_feats"]) | set(traced["t"])) == 9


def test_an_argument_named_like_a_list_item_keeps_its_own_placeholder():
    """forward(x=[a, b], t, x_0=c): export names c's placeholder x_0_1, since x_0 is a's."""

    class Net(lp.PackedImageNet):
        def forward(self, x, t, cap_feats, x_0=None):
            return super().forward([image + x_0 for image in x], t, cap_feats)

    model = build("PackedImageNet")
    net = Net()
    net.load_state_dict(model.state_dict())
    args, kwargs = inputs(model)
    found = capture(net, args, {**kwargs, "x_0": torch.zeros(1)}).inputs
    assert found["x"] == ("x_0", "x_1", "x_2", "x_3") and found["x_0"] == ("x_0_1",)


# each toy in each mode, 4 s each on 2 cores: slow; the fast suite checks the plan and capture of the toys
TOY_MODES = [pytest.param(name, mode, marks=pytest.mark.slow) for name in SAMPLE for mode in ("block", "branch")]


@pytest.mark.parametrize("name, mode", TOY_MODES)
def test_each_sample_is_routed_by_its_own_timestep_and_trains(name, mode):
    """Identity at channel ratio 1; routed, each sample comes out as if run alone; a train step runs."""
    model = build(name)
    routed = dtrsurgeon.transform(model, spec_for(name, mode))
    assert [u.path for u in routed.dtr_plan.units] == UNITS
    identity = dtrsurgeon.transform(model, spec_for(name, mode, ratio=1.0))
    args, kwargs = inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a unit called without its task warns
        with torch.no_grad():
            ref, out = tensors(model(*args, **kwargs)), tensors(routed(*args, **kwargs))
            assert all(torch.equal(a, b) for a, b in zip(tensors(identity(*args, **kwargs)), ref, strict=True))
            one_by_one = [tensors(routed(*a, **k))[0] for a, k in (alone(args, kwargs, i) for i in range(4))]
        assert not any(torch.allclose(a, b, atol=1e-4) for a, b in zip(out, ref))
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, one_by_one, strict=True))
        train_step(toys(name), routed, name)


@pytest.mark.parametrize("name", list(SAMPLE))
def test_changing_one_samples_timestep_changes_that_sample_only(name):
    """With the timestep embedding zeroed, the model reads t through the routing alone, and only the
    refiner of the image tokens, made from the list's items, is routed."""
    model = build(name)
    for p in model.t_embedder.parameters():
        torch.nn.init.zeros_(p)
    routed = dtrsurgeon.transform(model, {**spec_for(name), "targets": {"exclude": ["layers.*"]}})
    assert [u.path for u in routed.dtr_plan.units] == ["noise_refiner.0"]
    args, kwargs = inputs(model)
    before = with_timesteps(args, kwargs, torch.tensor([10, 500, 900, 300]))
    after = with_timesteps(args, kwargs, torch.tensor([10, 990, 900, 300]))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(tensors(model(*before[0], **before[1])),
                                                        tensors(model(*after[0], **after[1]))))
        a, b = tensors(routed(*before[0], **before[1])), tensors(routed(*after[0], **after[1]))
    assert [torch.equal(x, y) for x, y in zip(a, b)] == [True, False, True, True]


@pytest.mark.slow
@pytest.mark.parametrize("name, mode", TOY_MODES)
def test_generated_source_computes_what_transform_computes(name, mode, tmp_path):
    check_apply(toys(name), name, mode, tmp_path)
    generated = import_path(tmp_path / f"{name}_{mode}_dtr.py", f"gen_list_samples_{name}_{mode}_units")
    assert [path for path, table in generated.DTR_UNITS.items() if table is not None] == UNITS


BAD_SAMPLES = [  # sample.arg -> the error's text after "spec /sample/arg: "
    ("image", "'image' is not an argument of ContextFirstNet.forward(context, latents, t); set sample.arg to "
              "the argument that carries the sample"),
    ("t", "'t' is the timestep argument of ContextFirstNet.forward"),
]


@pytest.mark.parametrize("arg, message", BAD_SAMPLES)
def test_a_sample_arg_that_names_no_sample_is_a_spec_error(arg, message):
    spec = {"version": 1, "sample": {"arg": arg}}
    with pytest.raises(SpecError) as info:
        dtrsurgeon.plan(build("ContextFirstNet"), spec)
    assert str(info.value).startswith(f"spec /sample/arg: {message}") and "\n" not in str(info.value)


def test_a_sample_list_as_long_as_no_timestep_tensor_is_a_spec_error():
    model = build("ContextFirstNet")
    (context, latents, t), _ = inputs(model)
    with pytest.raises(SpecError, match=r"^spec /sample/arg: 'latents' of ContextFirstNet.forward gets a list of 3 "
                                        r"items in the example inputs, not samples \(a tensor \[B, \.\.\.\] or a list "
                                        r"of 4 tensors, one per sample\)"):
        dtrsurgeon.plan(model, spec_for("ContextFirstNet"), example_inputs=((context, latents[:3], t), {}))


def test_the_cli_reports_a_bad_sample_arg_in_one_line_and_exits_2(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"version": 1, "sample": {"arg": "image"}}))
    out = tmp_path / "out.py"
    assert main(["apply", str(spec), FILE, "--entry", "ContextFirstNet", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtrsurgeon apply: error: spec /sample/arg: 'image' is not an argument of "
                          "ContextFirstNet.forward(context, latents, t)") and "\n" not in err
    assert not out.exists()


class _ConditionListFirst(torch.nn.Module):
    """A list of conditions comes before the sample tensor: the tensor is the sample."""

    def forward(self, cond_list, x, timestep):
        return x


class _Variadic(torch.nn.Module):
    def forward(self, *args, timestep=None):
        return args[0]


def test_a_plain_tensor_sample_wins_over_an_earlier_list_and_varargs_are_no_sample():
    from dtrsurgeon.analysis.units import _sample_input
    from dtrsurgeon.spec import load_spec

    spec = load_spec({"version": 1, "timestep": {"arg": "timestep"}})
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    assert _sample_input(_ConditionListFirst(), ([torch.randn(7), torch.randn(7)], x, t), {}, spec) == ("x", 2)
    assert _sample_input(_Variadic(), (x, torch.randn(2, 5)), {"timestep": t}, spec) == ("", 0)
