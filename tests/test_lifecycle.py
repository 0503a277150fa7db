"""A routed model's life after transform(): switch routing off, change it, remove it, wrappers,
what it shows, what the API refuses, and what it leaves behind."""

import copy
import gc
import logging
import os
import weakref

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import dtrsurgeon
from dtrsurgeon import SpecError
from dtrsurgeon.cli import main
from dtrsurgeon.emit.module import apply_plan

SPEC = {"version": 1, "routing": {"channel_ratio": 0.7}}


def inputs(model, t=(0.0, 999.0, 250.0, 731.0)):
    (x, _, y), _ = model.example_inputs(len(t))
    return x, torch.tensor(t), y


# -- unroute, routing_disabled, set_routing -------------------------------------------------------------------


@pytest.mark.slow
def test_unroute_gives_the_original_classes_parameters_and_outputs(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    params = list(routed.parameters())
    x, t, y = inputs(dit)
    assert not torch.equal(routed(x, t, y), dit(x, t, y))
    plain = dtrsurgeon.unroute(routed)
    assert plain is routed
    assert [type(m) for m in plain.modules()] == [type(m) for m in dit.modules()]
    assert all(a is b for a, b in zip(plain.parameters(), params))
    assert not any("dtr" in name for name, _ in plain.named_buffers())
    assert not hasattr(plain, "dtr_plan") and not hasattr(plain, "dtr_spec")
    assert torch.equal(plain(x, t, y), dit(x, t, y))
    assert list(plain.state_dict()) == list(dit.state_dict())
    dtrsurgeon.transform(plain, SPEC)  # routable again: nothing of the routing is left


def test_routing_disabled_is_exactly_the_vanilla_model_and_restores_on_exit(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    x, t, y = inputs(dit)
    before = routed(x, t, y)
    with dtrsurgeon.routing_disabled(routed) as same:
        assert same is routed
        assert torch.equal(routed(x, t, y), dit(x, t, y))
        with dtrsurgeon.routing_disabled(routed):  # nested: still off
            assert torch.equal(routed(x, t, y), dit(x, t, y))
        assert torch.equal(routed(x, t, y), dit(x, t, y))
    assert torch.equal(routed(x, t, y), before)
    with pytest.raises(RuntimeError, match="inside"), dtrsurgeon.routing_disabled(routed):
        raise RuntimeError("inside")
    assert torch.equal(routed(x, t, y), before)  # restored after an exception too


def test_routing_disabled_under_compile_neither_breaks_nor_recompiles(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    x, t, y = inputs(dit)
    expected_on, expected_off = routed(x, t, y), dit(x, t, y)
    counter = CompileCounter()
    compiled = torch.compile(routed, backend=counter, fullgraph=True)
    assert torch.equal(compiled(x, t, y), expected_on)
    with dtrsurgeon.routing_disabled(routed):
        assert torch.equal(compiled(x, t, y), expected_off)
    assert torch.equal(compiled(x, t, y), expected_on)
    assert counter.frame_count == 1


@pytest.mark.slow
def test_set_routing_equals_a_fresh_transform_with_the_new_spec(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    change = {"channel_ratio": 0.5, "task_weights": {"curve": "linear"}}
    dtrsurgeon.set_routing(routed, change)
    fresh = dtrsurgeon.transform(dit, {**SPEC, "routing": change})
    x, t, y = inputs(dit)
    assert torch.equal(routed(x, t, y), fresh(x, t, y))
    assert routed.dtr_plan == fresh.dtr_plan and routed.dtr_spec == fresh.dtr_spec
    assert "K=32" in repr(routed.blocks[0])  # C=64, ratio 0.5


def test_set_routing_refuses_what_needs_a_new_transform_and_changes_nothing(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    x, t, y = inputs(dit)
    before, plan = routed(x, t, y), routed.dtr_plan
    with pytest.raises(SpecError, match=r"^spec /routing/channel_ratio: expected a number <= 1, got 1.5$"):
        dtrsurgeon.set_routing(routed, {"channel_ratio": 1.5})
    with pytest.raises(SpecError, match="^spec /routing/mode: set_routing changes only"):
        dtrsurgeon.set_routing(routed, {"mode": "branch"})
    assert torch.equal(routed(x, t, y), before) and routed.dtr_plan is plan


def test_lifecycle_verbs_refuse_an_unrouted_model(dit):
    with pytest.raises(TypeError, match=r"^unroute\(\): DiT is not routed"):
        dtrsurgeon.unroute(dit)
    with pytest.raises(TypeError, match=r"^set_routing\(\): DiT is not routed"):
        dtrsurgeon.set_routing(dit, {})
    with pytest.raises(TypeError, match=r"^routing_disabled\(\): DiT is not routed"), dtrsurgeon.routing_disabled(dit):
        pass


# -- wrappers ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_transform_routes_the_model_inside_a_peft_model(dit):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(copy.deepcopy(dit), peft.LoraConfig(target_modules=["qkv"], r=4,
                                                                         init_lora_weights=False))
    x, t, y = inputs(dit)
    vanilla = wrapped(x, t, y)
    routed = dtrsurgeon.transform(wrapped, SPEC)
    assert isinstance(routed, peft.PeftModel) and routed is not wrapped
    assert routed.get_base_model().dtr_plan.units and not hasattr(wrapped.get_base_model(), "dtr_plan")
    assert torch.equal(routed(x, t, y), dtrsurgeon.transform(wrapped.get_base_model(), SPEC)(x, t, y))
    with dtrsurgeon.routing_disabled(routed):
        assert torch.equal(routed(x, t, y), vanilla)


@pytest.mark.slow
def test_transform_routes_inside_data_parallel_and_compiled_modules(dit):
    x, t, y = inputs(dit)
    expected = dtrsurgeon.transform(dit, SPEC)(x, t, y)
    dp = torch.nn.DataParallel(copy.deepcopy(dit))
    routed_dp = dtrsurgeon.transform(dp, SPEC)
    assert isinstance(routed_dp, torch.nn.DataParallel) and not hasattr(dp.module, "dtr_plan")
    assert torch.equal(routed_dp(x, t, y), expected)
    compiled = torch.compile(copy.deepcopy(dit), backend="eager")
    assert dtrsurgeon.transform(compiled, SPEC, inplace=True) is compiled
    assert torch.equal(compiled(x, t, y), expected)
    assert dtrsurgeon.unroute(compiled) is compiled and torch.equal(compiled(x, t, y), dit(x, t, y))


@pytest.mark.slow
def test_transform_routes_inside_ddp_in_place_and_refuses_to_copy_it(dit, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(dit))
        with pytest.raises(TypeError, match="cannot be copied; pass inplace=True"):
            dtrsurgeon.transform(ddp, SPEC)
        assert dtrsurgeon.transform(ddp, SPEC, inplace=True) is ddp
        x, t, y = inputs(dit)
        assert torch.equal(ddp(x, t, y), dtrsurgeon.transform(dit, SPEC)(x, t, y))
    finally:
        dist.destroy_process_group()


# -- what a routed model shows ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_routed_unit_shows_its_routing_in_repr(dit):
    routed = dtrsurgeon.transform(dit, {"version": 1, "targets": {"include": ["blocks.0"]}})
    assert "dtr=block C=64 K=51" in repr(routed.blocks[0])
    assert "dtr=off" in repr(routed.blocks[1])  # left out, yet it runs the routed class's forward
    assert "dtr=" not in repr(dit)


def test_plan_summary_is_the_inspect_table(capsys):
    assert main(["inspect", "model_zoo/dit.py", "--entry", "tiny_dit", "--spec", "dit-paper"]) == 0
    printed = capsys.readouterr().out
    from model_zoo.dit import tiny_dit

    routed = dtrsurgeon.transform(tiny_dit(), "dit-paper")
    assert routed.dtr_plan.summary("dit-paper") == printed
    assert "blocks.1  DiTBlock  block  2     64  51" in printed


# -- the API's arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, needle", [
    (lambda m: dtrsurgeon.transform("model.py", SPEC), "transform(): model must be a torch.nn.Module, got str "
                                                        "'model.py'; to route a model file, run `dtrsurgeon apply"),
    (lambda m: dtrsurgeon.transform(None, SPEC), "transform(): model must be a torch.nn.Module, got NoneType None"),
    (lambda m: dtrsurgeon.transform(SPEC, m), "transform(): arguments swapped: the model comes first"),
    (lambda m: dtrsurgeon.transform(m, 0.8), "transform(): spec must be a path, a JSON string, a dict or a "
                                             "dtrsurgeon.Spec, got float 0.8"),
    (lambda m: dtrsurgeon.transform(m, SPEC, example_inputs=torch.zeros(2)), "transform(): example_inputs must be"),
    (lambda m: dtrsurgeon.transform(m, SPEC, inplace="yes"), "transform(): inplace must be True or False"),
    (lambda m: dtrsurgeon.plan("dit-paper", m), "plan(): arguments swapped"),
    (lambda m: dtrsurgeon.plan(None, SPEC), "plan(): model must be a torch.nn.Module"),
    (lambda m: dtrsurgeon.plan(m, None), "plan(): spec must be"),
])
def test_wrong_argument_types_are_one_line_type_errors(dit, call, needle):
    with pytest.raises(TypeError) as e:
        call(dit)
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


# -- timesteps outside the range -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_timesteps_map_to_the_ends_of_the_range_eager_and_compiled(dit):
    """NaN counts as t0 and -inf as t0, +inf as t1 (as finite values beyond the range are clamped): the
    routed forward runs where the vanilla one does (its output is NaN there, as the vanilla model's)."""
    routed = dtrsurgeon.transform(dit, SPEC)
    odd = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e30, 500.0])
    tmap = routed.dtr_spec.timestep
    assert dtrsurgeon.task_index(odd, tmap).tolist() == [0, 999, 0, 999, 500]
    x, _, y = inputs(dit, t=odd.tolist())
    compiled = torch.compile(routed, backend="eager", fullgraph=True)
    for model in (routed, compiled):
        out = model(x, odd, y)
        assert torch.equal(out.isnan(), dit(x, odd, y).isnan())
        torch.testing.assert_close(out[4], routed(x, torch.full((5,), 500.0), y)[4], rtol=0, atol=1e-6)


# -- what the library leaves behind ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("n", [10, pytest.param(100, marks=pytest.mark.slow)])
def test_routed_classes_are_freed_with_their_models(dit, n):
    spec = dtrsurgeon.load_spec(SPEC)
    plan = dtrsurgeon.plan(dit, spec)
    apply_plan(dit, plan, spec)  # the first one adds the routed functions' module beside model_zoo.dit, once
    gc.collect()
    modules_before = len(__import__("sys").modules)
    classes = []
    for _ in range(n):
        routed = apply_plan(dit, plan, spec)
        classes += [weakref.ref(type(m)) for m in routed.modules() if hasattr(type(m), "_dtr_base")]
        del routed
    gc.collect()
    assert len(classes) >= 3 * n and not [c for c in classes if c() is not None]
    assert len(__import__("sys").modules) == modules_before


def test_long_captures_log_a_progress_line_and_nothing_is_printed(dit, caplog, capsys, monkeypatch):
    monkeypatch.setattr("dtrsurgeon.api.PROGRESS_AFTER_S", 0.0)
    with caplog.at_level(logging.INFO, logger="dtrsurgeon"):
        dtrsurgeon.transform(dit, SPEC)
    messages = [r.getMessage() for r in caplog.records if r.name == "dtrsurgeon"]
    assert any(m.startswith("capturing DiT with torch.export") for m in messages), messages
    assert any(m.startswith("captured and planned DiT in ") for m in messages), messages
    assert capsys.readouterr() == ("", "")


def test_the_package_says_it_is_typed():
    assert os.path.isfile(os.path.join(os.path.dirname(dtrsurgeon.__file__), "py.typed"))


@pytest.mark.slow
def test_the_readme_section_on_saving_and_switching_off_runs(monkeypatch, capsys):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    section = (root / "README.md").read_text().split("## Save, reload, switch off")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(root)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "dtr=block C=64 K=32" in capsys.readouterr().out
