"""Saving and reloading routed models: save_pretrained / from_pretrained, pickling, EMA copies.

Every round trip reloads in a fresh Python process (what a user does a week later) and compares
the outputs with the ones computed before saving, exactly.
"""

import copy
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dtrsurgeon
from dtrsurgeon import CheckpointError
from dtrsurgeon.persist import CONFIG_KEY, CONFIG_NAME
from model_zoo.dit import tiny_dit
from tests.conftest import randomize_

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"version": 1, "routing": {"channel_ratio": 0.7}}
DIFFUSERS_SPEC = {"version": 1, "timestep": {"arg": "timestep"}}


def fresh_process(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter (repository root on the path); fail with its stderr."""
    script = tmp_path / "fresh.py"
    script.write_text("import sys\nsys.path.insert(0, %r)\n" % str(ROOT) + textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def dit_inputs(model, batch=4):
    (x, _, y), _ = model.example_inputs(batch)
    return x, torch.tensor([0.0, 999.0, 250.0, 731.0][:batch]), y


def trained(routed, steps=2):
    """A few optimiser steps, so that saved weights differ from the initial ones."""
    opt = torch.optim.SGD(routed.parameters(), lr=0.05)
    x, t, y = dit_inputs(routed)
    for _ in range(steps):
        opt.zero_grad()
        routed(x, t, y).square().mean().backward()
        opt.step()
    return routed


@pytest.mark.slow
def test_model_zoo_dit_round_trip_with_an_ema_copy_in_a_fresh_process(dit, tmp_path):
    routed = dtrsurgeon.transform(dit, SPEC)
    ema = copy.deepcopy(routed)  # the usual EMA: a deep copy, updated from the trained model
    trained(routed)
    with torch.no_grad():
        for e, p in zip(ema.parameters(), routed.parameters()):
            e.lerp_(p, 0.5)
    x, t, y = dit_inputs(dit)
    torch.save({"x": x, "t": t, "y": y, "model": routed(x, t, y), "ema": ema(x, t, y)}, tmp_path / "ref.pt")
    dtrsurgeon.save_pretrained(routed, tmp_path / "model")
    dtrsurgeon.save_pretrained(ema, tmp_path / "ema")
    saved = json.loads((tmp_path / "model" / CONFIG_NAME).read_text())
    assert saved["spec"] == routed.dtr_spec.to_dict() and saved["plan"] == routed.dtr_plan.to_dict()
    assert saved["format_version"] == 1 and saved["dtrsurgeon_version"] == dtrsurgeon.__version__

    fresh_process("""
        import torch, dtrsurgeon
        from model_zoo.dit import tiny_dit
        ref = torch.load("ref.pt")
        for name in ("model", "ema"):
            model = dtrsurgeon.from_pretrained(tiny_dit, name)
            assert type(model).__qualname__ == "DiT" and model.dtr_plan.units, name
            out = model.eval()(ref["x"], ref["t"], ref["y"])
            assert torch.allclose(out, ref[name], rtol=0, atol=1e-5), (name, (out - ref[name]).abs().max())
    """, tmp_path)


def test_reloading_routes_without_capturing_again(dit, tmp_path, monkeypatch):
    routed = dtrsurgeon.transform(dit, SPEC)
    dtrsurgeon.save_pretrained(routed, tmp_path)

    def no_capture(*args, **kwargs):
        raise AssertionError("from_pretrained captured the model although nothing changed")

    monkeypatch.setattr("dtrsurgeon.analysis.units.build_plan", no_capture)
    again = dtrsurgeon.from_pretrained(randomize_(tiny_dit(), seed=1), tmp_path)  # other weights: overwritten
    x, t, y = dit_inputs(dit)
    assert torch.equal(again.eval()(x, t, y), routed(x, t, y))
    assert again.dtr_plan == routed.dtr_plan


def test_a_different_architecture_is_one_line_naming_the_first_difference(dit, tmp_path):
    dtrsurgeon.save_pretrained(dtrsurgeon.transform(dit, SPEC), tmp_path)
    with pytest.raises(CheckpointError) as e:
        dtrsurgeon.from_pretrained(tiny_dit(depth=3), tmp_path)
    assert "'blocks.2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=r"'blocks.0.adaLN_modulation.1.bias' has shape \[192\] here, \[384\] when saved"):
        dtrsurgeon.from_pretrained(tiny_dit(hidden_size=32, num_heads=2), tmp_path)


def test_a_directory_without_routing_is_refused(dit, tmp_path):
    from safetensors.torch import save_model

    save_model(dit, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no dtr_config.json; it was not saved by dtrsurgeon.save_pretrained"):
        dtrsurgeon.from_pretrained(tiny_dit, tmp_path)


@pytest.mark.slow
def test_changed_sources_capture_again_and_must_route_the_same(tmp_path):
    """The model's file changed since saving (another library version): the saved spec is applied to
    the model as it is now, after checking that it routes the same units."""
    src = (ROOT / "model_zoo" / "dit.py").read_text()
    (tmp_path / "mydit.py").write_text(src)
    fresh_process("""
        import sys, torch, dtrsurgeon
        sys.path.insert(0, ".")
        from mydit import tiny_dit
        torch.manual_seed(0)
        model = tiny_dit().eval()
        routed = dtrsurgeon.transform(model, {"version": 1})
        (x, t, y), _ = model.example_inputs(2)
        torch.save(routed(x, t, y), "ref.pt")
        dtrsurgeon.save_pretrained(routed, "saved")
    """, tmp_path)
    (tmp_path / "mydit.py").write_text("# a line added above everything\n" + src)
    done = fresh_process("""
        import logging, sys, torch, dtrsurgeon
        logging.basicConfig(level=logging.INFO)
        sys.path.insert(0, ".")
        from mydit import tiny_dit
        routed = dtrsurgeon.from_pretrained(tiny_dit, "saved")
        (x, t, y), _ = routed.example_inputs(2)
        assert torch.equal(routed.eval()(x, t, y), torch.load("ref.pt"))
        assert routed.dtr_plan.units[0].call_path[-1].line == 244   # the lines of the file as it is now
    """, tmp_path)
    assert "changed since saving; capturing it again" in done.stderr


# -- pickling ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_save_of_a_routed_model_loads_routed_in_a_fresh_process(dit, tmp_path):
    routed = dtrsurgeon.transform(dit, SPEC)
    x, t, y = dit_inputs(dit)
    torch.save({"model": routed, "x": x, "t": t, "y": y, "out": routed(x, t, y)}, tmp_path / "whole.pt")
    fresh_process("""
        import torch
        saved = torch.load("whole.pt", weights_only=False)
        model = saved["model"]
        assert type(model).__name__ == "DiT" and model.dtr_plan.units
        assert torch.equal(model(saved["x"], saved["t"], saved["y"]), saved["out"])
    """, tmp_path)


def test_pickle_round_trip_keeps_routing_parameters_and_the_original_model(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    again = pickle.loads(pickle.dumps(routed))
    x, t, y = dit_inputs(dit)
    assert torch.equal(again(x, t, y), routed(x, t, y))
    assert again.dtr_plan == routed.dtr_plan and again.dtr_spec == routed.dtr_spec
    assert list(again.state_dict()) == list(routed.state_dict())
    assert type(routed.blocks[0]).__name__ == "DiTBlock" and routed.blocks[0].dtr_mask is not None  # untouched


def test_a_deep_copy_is_routed_by_the_same_classes(dit):
    routed = dtrsurgeon.transform(dit, SPEC)
    ema = copy.deepcopy(routed)
    assert [type(m) for m in ema.modules()] == [type(m) for m in routed.modules()]
    assert ema.blocks[0].dtr_mask is not routed.blocks[0].dtr_mask
    x, t, y = dit_inputs(dit)
    assert torch.equal(ema(x, t, y), routed(x, t, y))
    shallow = copy.copy(routed)
    assert type(shallow) is type(routed) and shallow.blocks is routed.blocks


def test_a_routed_submodule_pickled_alone_comes_back_as_its_original_class(dit):
    """Routing belongs to the whole model (the root computes the task index): a unit alone is plain."""
    routed = dtrsurgeon.transform(dit, SPEC)
    block = pickle.loads(pickle.dumps(routed.blocks[0]))
    assert type(block) is type(dit.blocks[0]) and "dtr_mask" not in dict(block.named_buffers())
    assert list(block.state_dict()) == list(dit.blocks[0].state_dict())


# -- diffusers ------------------------------------------------------------------------------------------------

diffusers_round_trip = """
    import torch, dtrsurgeon
    from diffusers import {cls}
    ref = torch.load("ref.pt")
    for name in ("model", "ema"):
        model = dtrsurgeon.from_pretrained({cls}, name)
        assert model.dtr_plan.units, name
        out = model(*ref["args"], **ref["kwargs"])[0]
        assert torch.allclose(out, ref[name], rtol=0, atol=1e-5), (name, (out - ref[name]).abs().max())
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("unet2d", marks=pytest.mark.slow), "dit"])
def test_diffusers_round_trip_with_an_ema_copy_in_a_fresh_process(name, tmp_path):
    pytest.importorskip("diffusers")
    from tests import diffusers_models as dm

    model = dm.FACTORIES[name]()
    routed = dtrsurgeon.transform(model, DIFFUSERS_SPEC)
    ema = copy.deepcopy(routed)
    args, kwargs = dm.example_inputs(model, 4)
    with torch.no_grad():
        for p in routed.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # the trained model moved away from its EMA
    torch.save({"args": args, "kwargs": kwargs, "model": routed(*args, **kwargs)[0], "ema": ema(*args, **kwargs)[0]},
               tmp_path / "ref.pt")
    routed.save_pretrained(tmp_path / "model")  # the library's own method writes the routing too
    dtrsurgeon.save_pretrained(ema, tmp_path / "ema")
    assert (tmp_path / "model" / CONFIG_NAME).is_file() and (tmp_path / "ema" / CONFIG_NAME).is_file()
    fresh_process(diffusers_round_trip.format(cls=type(model).__name__), tmp_path)


@pytest.mark.slow
def test_plain_diffusers_from_pretrained_of_a_routed_directory_warns(tmp_path):
    pytest.importorskip("diffusers")
    from tests import diffusers_models as dm

    dtrsurgeon.transform(dm.tiny_unet2d(), DIFFUSERS_SPEC).save_pretrained(tmp_path / "unet")
    done = fresh_process("""
        from diffusers import UNet2DModel
        UNet2DModel.from_pretrained("unet")
    """, tmp_path)
    assert CONFIG_KEY in done.stderr and "NOT routed" in done.stderr and "from_pretrained(UNet2DModel" in done.stderr


@pytest.mark.slow
def test_the_routed_class_loads_routed_and_runs(tmp_path):
    """type(routed).from_pretrained: a routed directory by its dtr_config.json; a vanilla checkpoint
    routed as the class's model was."""
    pytest.importorskip("diffusers")
    from tests import diffusers_models as dm

    model = dm.tiny_unet2d()
    routed = dtrsurgeon.transform(model, DIFFUSERS_SPEC)
    args, kwargs = dm.example_inputs(model, 4)
    routed.save_pretrained(tmp_path / "routed")
    model.save_pretrained(tmp_path / "vanilla")
    for directory in ("routed", "vanilla"):
        again = type(routed).from_pretrained(tmp_path / directory)
        assert again.dtr_plan.units and CONFIG_KEY not in again.config
        assert torch.equal(again(*args, **kwargs)[0], routed(*args, **kwargs)[0]), directory
    built = type(routed).from_config(routed.config)  # how diffusers' training scripts build EMA models
    built.load_state_dict(routed.state_dict())
    built.eval()
    assert built.dtr_plan == routed.dtr_plan and torch.equal(built(*args, **kwargs)[0], routed(*args, **kwargs)[0])


@pytest.mark.slow
def test_pipeline_save_pretrained_writes_the_component_routing(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import DDPMPipeline, DDPMScheduler

    from tests import diffusers_models as dm

    routed = dtrsurgeon.transform(dm.tiny_unet2d(), DIFFUSERS_SPEC)
    DDPMPipeline(unet=routed, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "unet" / CONFIG_NAME).read_text())
    assert saved["plan"] == routed.dtr_plan.to_dict()


def tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                  pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)).eval()


def flux_inputs(batch=2, tokens=16, text=6):
    g = torch.Generator().manual_seed(0)
    kwargs = {"encoder_hidden_states": torch.randn(batch, text, 16, generator=g),
              "pooled_projections": torch.randn(batch, 8, generator=g),
              "timestep": torch.tensor([0.1, 0.9][:batch]), "img_ids": torch.zeros(tokens, 3),
              "txt_ids": torch.zeros(text, 3), "return_dict": False}
    return (torch.randn(batch, tokens, 8, generator=g),), kwargs


@pytest.mark.slow
def test_flux_round_trip_in_a_fresh_process(tmp_path):
    pytest.importorskip("diffusers")
    model = tiny_flux()
    args, kwargs = flux_inputs()
    routed = dtrsurgeon.transform(model, {"version": 1, "timestep": {"arg": "timestep", "range": [0, 1]}},
                                  example_inputs=(args, kwargs))
    torch.save({"args": args, "kwargs": kwargs, "model": routed(*args, **kwargs)[0],
                "ema": copy.deepcopy(routed)(*args, **kwargs)[0]}, tmp_path / "ref.pt")
    routed.save_pretrained(tmp_path / "model")
    dtrsurgeon.save_pretrained(copy.deepcopy(routed), tmp_path / "ema")
    fresh_process(diffusers_round_trip.format(cls="FluxTransformer2DModel"), tmp_path)


def test_save_pretrained_without_safetensors_says_how_to_install_it(dit, tmp_path, monkeypatch):
    routed = dtrsurgeon.transform(dit, SPEC)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors -> ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"needs safetensors: pip install 'dtrsurgeon\[persist\]'") as caught:
        dtrsurgeon.save_pretrained(routed, tmp_path / "ckpt")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ckpt").exists()
