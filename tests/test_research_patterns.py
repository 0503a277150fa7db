"""Research code as released (tests/research_patterns.py): helper functions on the call path,
zero-argument super(), branches only training takes, train() that re-parameterises, Python
on tensor values, isinstance dispatch; and capture's checks of its inputs and sources."""

import json
import linecache
import sys
import textwrap
import types
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.analysis.capture import capture
from dtrsurgeon.analysis.sources import check_current
from dtrsurgeon.cli import main
from dtrsurgeon.errors import CaptureError, SpecError
from tests import research_patterns as rp
from tests.conftest import import_path
from tests.pattern_harness import Toys, check_apply, check_routes, each_toy_and_mode

FILE = "tests/research_patterns.py"
UNSEEN = "called without dtr_task"


def spec_for(mode="block", ratio=None, arg="t"):
    return {"version": 1, "timestep": {"arg": arg},
            "routing": {"mode": mode, **({"channel_ratio": ratio} if ratio is not None else {})}}


def build(name):
    torch.manual_seed(0)
    return getattr(rp, name)().eval()


def inputs(model, batch=3):
    torch.manual_seed(1)
    return model.example_inputs(batch)


def switch_training_branches(routed, name, kwargs):
    """The branch each pattern only takes while training: the call's kwargs, checkpointing switched on."""
    if name == "MaskedTrainNet":
        kwargs = {**kwargs, "mask_ratio": 0.5}
    if name == "DispatchNet":
        routed.gradient_checkpointing = True
    if name == "HelperCheckpointNet":
        for block in routed.blocks:
            block.grad_checkpointing = True
    return kwargs


TOYS = Toys(file=FILE, spec_for=spec_for, build=build, inputs=inputs, prefix="gen_research",
            prepare_training=switch_training_branches)

PATTERNS = {  # toy -> the units its default spec routes
    "HelperCheckpointNet": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "SuperNet": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "MaskedTrainNet": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "ReparamNet": ["blocks.0", "blocks.1", "blocks.2", "blocks.3"],
    "DataDependentNet": ["blocks.0", "blocks.1", "blocks.2"],
    "DispatchNet": ["blocks.0", "blocks.1", "blocks.3", "blocks.4"],
}


@each_toy_and_mode(PATTERNS)
def test_pattern_routes_per_sample_is_identity_at_ratio_one_and_trains(name, mode):
    check_routes(TOYS, name, mode, PATTERNS[name])


@each_toy_and_mode(PATTERNS)
def test_pattern_through_apply_equals_transform(name, mode, tmp_path):
    check_apply(TOYS, name, mode, tmp_path)


@pytest.mark.slow
def test_helper_functions_are_rewritten_and_keep_checkpointing(tmp_path):
    """checkpoint(fn, *args) and auto_grad_checkpoint(module, *args, **kwargs) gain dtr_task=None and
    pass it on only when given; their branches that checkpoint bind it to the unit."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for()))
    out = tmp_path / "helper_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", "HelperCheckpointNet", "-o", str(out)]) == 0
    text = out.read_text()
    assert "def checkpoint(fn, *args, dtr_task=None):" in text
    assert ("return torch.utils.checkpoint.checkpoint((dtr_bind_task(fn, dtr_task) if dtr_task is not None else fn), "
            "*args, use_reentrant=False)") in text
    assert "return fn(*args, dtr_task=dtr_task) if dtr_task is not None else fn(*args)" in text
    assert "return module(*args, **kwargs, dtr_task=dtr_task) if dtr_task is not None else module(*args, **kwargs)" in text
    assert "x = auto_grad_checkpoint(block, x, c, dtr_task=dtr_task)" in text
    # the helper still serves callers without a task (the user's module is not changed)
    assert rp.checkpoint(torch.nn.Identity(), torch.ones(1)).item() == 1
    # with checkpointing on, the recompute in backward routes like the forward: gradients match
    model = build("HelperCheckpointNet")
    args, _ = inputs(model)
    grads = []
    for on in (False, True):
        routed = dtrsurgeon.transform(model, spec_for()).train()
        for block in routed.blocks:
            block.grad_checkpointing = on
        routed(*args).square().mean().backward()
        grads.append(routed.blocks[1].mlp[0].weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert "dtr_task" not in rp.checkpoint.__code__.co_varnames  # the user's module keeps its helper


def test_training_only_branch_routes_the_calls_it_makes():
    """The masked-training branch calls blocks the example inputs reached only on the other branch:
    those calls route (a routed unit's output differs from the unrouted block's), and the side block
    no example call reached runs unrouted without a warning."""
    model = build("MaskedTrainNet")
    routed = dtrsurgeon.transform(model, spec_for())
    args, _ = inputs(model)
    routed.train()
    seen = []
    hook = routed.blocks[0].register_forward_hook(lambda m, a, kw, out: seen.append("dtr_task" in kw), with_kwargs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        routed(*args, mask_ratio=0.5)
    hook.remove()
    assert seen == [True]
    assert "side" not in [u.path for u in routed.dtr_plan.units]


def test_source_edits_of_the_training_branch(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for("branch")))
    out = tmp_path / "masked_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", "MaskedTrainNet", "-o", str(out)]) == 0
    text = out.read_text()
    assert "kept = block(kept, c, dtr_task=dtr_task)" in text
    assert text.count("x = block(x, c, dtr_task=dtr_task)") == 2
    # Block also runs as the side block, which no example call reached: its task is optional
    assert "def forward(self, x, c, dtr_task=None):" in text
    assert '"side": None,  # not called by the example inputs' in text


@pytest.mark.parametrize("mode", ["block", "branch"])
def test_undecidable_call_warns_and_runs_unrouted(mode):
    """Blocks called through a local list on a training-only path: the source cannot say what the
    list holds, so those calls run unrouted, with a warning, instead of failing."""
    model = build("UnseenCallNet")
    routed = dtrsurgeon.transform(model, spec_for(mode))
    args, _ = inputs(model)
    routed.train()
    with pytest.warns(UserWarning, match=UNSEEN):
        routed(*args, shuffle=True).square().mean().backward()


def test_isinstance_dispatch_passes_the_task_only_to_blocks_that_take_it(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_for()))
    out = tmp_path / "dispatch_dtr.py"
    assert main(["apply", str(spec), FILE, "--entry", "DispatchNet", "-o", str(out)]) == 0
    lines = [ln.strip() for ln in out.read_text().splitlines()]
    assert "x = torch.utils.checkpoint.checkpoint(dtr_bind_task(block, dtr_task), x, use_reentrant=False)" in lines
    assert "x = torch.utils.checkpoint.checkpoint(dtr_bind_task(block, dtr_task), x, r, use_reentrant=False)" in lines
    assert "x = torch.utils.checkpoint.checkpoint(block, x, r, use_reentrant=False)" in lines  # Modulate
    assert lines.count("x = block(x, r)") == 1 and "x = block(x, r, dtr_task=dtr_task)" in lines


def test_zero_argument_super_reaches_the_rewritten_method():
    """SuperNet.forward hands on with super().forward(...): the routed one calls the routed
    BaseNet.forward (the original would not take dtr_task), and the user's classes are unchanged."""
    model = build("SuperNet")
    routed = dtrsurgeon.transform(model, spec_for())
    args, _ = inputs(model)
    with torch.no_grad():
        assert not torch.allclose(routed(*args), model(*args), atol=1e-4)
    assert rp.SuperNet.forward.__code__.co_freevars == ("__class__",)
    assert "dtr_task" not in rp.BaseNet.forward.__code__.co_varnames


# -- capture ----------------------------------------------------------------------------

def test_capture_never_switches_the_callers_model():
    """ReparamNet's train()/eval() rescale weights (not bit-exactly back): capture must not call them."""
    model = build("ReparamNet").train()
    model.blocks[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    switches = model.mode_switches
    dtrsurgeon.plan(model, spec_for())
    dtrsurgeon.transform(model, spec_for())
    assert model.mode_switches == switches
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_data_dependent_python_is_captured_on_real_tensors():
    model = build("DataDependentNet")
    args, kwargs = model.example_inputs()
    cap = capture(model, args, kwargs)
    assert cap.method == "real-tensor trace"
    stacks = {p for n in cap.graph.nodes for p, _ in (n.meta.get("nn_module_stack") or {}).values()}
    assert {"blocks.1.moe.gate", "blocks.2.mlp.0"} <= stacks
    assert any("research_patterns.py" in (n.meta.get("stack_trace") or "") for n in cap.graph.nodes)
    assert all(isinstance(n.meta.get("val"), torch.Tensor) for n in cap.graph.nodes if n.op == "placeholder")
    assert set(cap.params.values()) == set(dict(model.named_parameters())) | set(dict(model.named_buffers()))
    plain = capture(build("BaseNet"), *inputs(build("BaseNet")))
    assert plain.method == "export"


@pytest.mark.slow
@pytest.mark.parametrize("arg, why", [
    ("x", r"'x' of TimestepArgNet.forward is a float32 tensor of shape \[2, 6, 4\], not timesteps"),
    ("mask", r"'mask' of TimestepArgNet.forward is a bool tensor"),
    ("unused", r"'unused' of TimestepArgNet.forward is not used by the forward"),
    ("extra", r"'extra' of TimestepArgNet.forward gets nothing \(its default\)"),
])
def test_timestep_arg_must_carry_timesteps(arg, why):
    class TimestepArgNet(rp.BaseNet):
        def forward(self, x, t, mask, unused, extra=None):
            return super().forward(x * mask[..., None], t)

    model = TimestepArgNet().eval()
    example = ((torch.randn(2, 6, 4), torch.tensor([1, 2]), torch.ones(2, 6, dtype=torch.bool), torch.ones(2)), {})
    with pytest.raises(SpecError, match="^spec /timestep/arg: " + why) as info:
        dtrsurgeon.plan(model, spec_for(arg=arg), example_inputs=example)
    assert "\n" not in str(info.value)
    assert dtrsurgeon.plan(model, spec_for(), example_inputs=example).units


NOTEBOOK_CELL = '''
import torch
from torch import nn
from tests.research_patterns import BaseNet, Block


class CellBlock(Block):
    def forward(self, x, c):
        return x + self.mlp(self.norm(x) * (1 + self.mod(c)[:, None]))


class CellNet(BaseNet):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(CellBlock(self.dim) for _ in range(3))

    def forward(self, x, t):
        return super().forward(x, t)
'''


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["block", "branch"])
def test_notebook_cells_are_read_from_linecache(mode):
    """IPython compiles each cell under a pseudo file name and keeps its text in linecache."""
    name = f"<ipython-input-7-{mode}>"
    linecache.cache[name] = (len(NOTEBOOK_CELL), None, NOTEBOOK_CELL.splitlines(True), name)
    main_module = types.ModuleType(f"notebook_main_{mode}")  # IPython runs cells in __main__'s namespace
    sys.modules[main_module.__name__] = main_module
    exec(compile(NOTEBOOK_CELL, name, "exec"), main_module.__dict__)
    torch.manual_seed(0)
    model = main_module.CellNet().eval()
    routed = dtrsurgeon.transform(model, spec_for(mode))
    identity = dtrsurgeon.transform(model, spec_for(mode, ratio=1.0))
    args, _ = inputs(model)
    with torch.no_grad():
        out = routed(*args)
        assert torch.equal(identity(*args), model(*args))
        assert torch.allclose(out, torch.cat([routed(x[None], t[None]) for x, t in zip(*args)]), atol=1e-5)
    assert not torch.allclose(out, model(*args), atol=1e-4)


def test_exec_of_a_string_is_refused_in_one_line():
    namespace = {"__name__": "__main__"}
    exec(NOTEBOOK_CELL, namespace)
    model = namespace["CellNet"]().eval()
    with pytest.raises(CaptureError, match=r"CellBlock.forward \(<string>:\d+\): <string> holds no source text "
                                           r"\(a class built by exec\(\) of a string") as info:
        dtrsurgeon.transform(model, spec_for())
    assert "\n" not in str(info.value)


EDITABLE = '''
import torch
from tests.research_patterns import Block, TokenNet


class EditedBlock(Block):
    def forward(self, x, c):
        h = self.norm(x) * (1 + self.mod(c)[:, None])
        return x + self.mlp(h)


class EditedNet(TokenNet):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(EditedBlock(self.dim) for _ in range(2))

    def forward(self, x, t):
        x, c = self.embed(x, t)
        for block in self.blocks:
            x = block(x, c)
        return self.out(x)
'''


@pytest.mark.parametrize("edit", [("return x + self.mlp(h)", "return x - self.mlp(h)"),
                                  ("        h = self.norm", "\n        h = self.norm")])
def test_a_source_edited_after_import_is_refused(edit, tmp_path):
    path = tmp_path / "edited_model.py"
    path.write_text(textwrap.dedent(EDITABLE))
    module = import_path(path, "edited_model")
    model = module.EditedNet().eval()
    assert dtrsurgeon.plan(model, spec_for()).units  # as imported: fine
    path.write_text(textwrap.dedent(EDITABLE).replace(*edit))
    with pytest.raises(CaptureError, match=r"Edited(Block|Net).forward \(.*edited_model.py:\d+\): the file was edited after "
                                           r"the model's module was imported") as info:
        dtrsurgeon.transform(model, spec_for())
    assert "\n" not in str(info.value)


IMPORTED_NAME_CALL = '''
import types as T


def many_keywords(x):
    return T.SimpleNamespace(a=x, b=1, c=2, d=3, e=4, f=5, g=6, h=7, i=8, j=9, k=10, l=11, m=12, n=13, o=14,
                             p=15, q=16, r=17, s=18)
'''


def test_a_call_on_an_imported_name_with_many_keywords_is_not_taken_for_an_edit(tmp_path):
    """Python 3.11 compiles ``T.f(19 keywords)`` on a module-imported ``T`` unlike the same def compiled
    alone (diffusers' HunyuanDiTAttentionPool.forward calls ``F.multi_head_attention_forward`` so)."""
    path = tmp_path / "keywords_module.py"
    path.write_text(IMPORTED_NAME_CALL)
    module = import_path(path, "keywords_module")
    check_current(module.many_keywords.__code__)
    path.write_text(IMPORTED_NAME_CALL.replace("s=18", "s=19"))
    with pytest.raises(CaptureError, match="edited after"):
        check_current(module.many_keywords.__code__)


# -- diffusers backbones that need these patterns -------------------------------------------

def _lumina():
    from diffusers import Lumina2Transformer2DModel

    model = Lumina2Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=2,
                                      num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                                      axes_dim_rope=(4, 6, 6), axes_lens=(32, 32, 32), cap_feat_dim=16)

    def example(batch):
        mask = torch.ones(batch, 5, dtype=torch.bool)
        mask[1:, 3:] = False  # captions of two lengths: len(set(seq_lengths)) > 1
        return {"hidden_states": torch.randn(batch, 4, 8, 8), "timestep": torch.linspace(0.1, 0.9, batch),
                "encoder_hidden_states": torch.randn(batch, 5, 16), "encoder_attention_mask": mask, "return_dict": False}

    # the context refiner works on the caption alone: conditioning, no unit
    return model, example, {"arg": "timestep", "range": [0, 1]}, ["noise_refiner.0", "layers.0", "layers.1"]


def _hidream():
    from diffusers import HiDreamImageTransformer2DModel

    model = HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=2,
                                           attention_head_dim=8, num_attention_heads=4, caption_channels=[8, 4],
                                           text_emb_dim=8, num_routed_experts=2, num_activated_experts=1,
                                           axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1))

    def example(batch):
        return {"hidden_states": torch.randn(batch, 4, 8, 8), "timesteps": torch.linspace(10, 900, batch).long(),
                "encoder_hidden_states_t5": torch.randn(batch, 4, 8), "pooled_embeds": torch.randn(batch, 8),
                "encoder_hidden_states_llama3": torch.randn(2, batch, 4, 4), "return_dict": False}

    return model, example, {"arg": "timesteps"}, ["double_stream_blocks.0.block", "single_stream_blocks.0.block", "single_stream_blocks.1.block"]


def _stable_cascade():
    from diffusers import StableCascadeUNet

    model = StableCascadeUNet(in_channels=4, out_channels=4, timestep_ratio_embedding_dim=8, conditioning_dim=16,
                              block_out_channels=(16, 16), num_attention_heads=(2, 2), down_num_layers_per_block=(1, 1),
                              up_num_layers_per_block=(1, 1), clip_text_pooled_in_channels=8, clip_seq=2,
                              dropout=(0.0, 0.0), switch_level=(False,))

    def example(batch):
        return {"sample": torch.randn(batch, 4, 8, 8), "timestep_ratio": torch.linspace(0.1, 0.9, batch),
                "clip_text_pooled": torch.randn(batch, 1, 8), "return_dict": False}

    units = [f"{side}_blocks.{i}.{j}" for side in ("down", "up") for i in (0, 1) for j in (0, 2)]
    return model, example, {"arg": "timestep_ratio", "range": [0, 1]}, units


def _one_sample(kwargs, i, batch):
    def pick(key, value):
        if not isinstance(value, torch.Tensor):
            return value
        axis = 1 if key == "encoder_hidden_states_llama3" else 0
        return value.narrow(axis, i, 1) if value.dim() > axis and value.shape[axis] == batch else value
    return {k: pick(k, v) for k, v in kwargs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("factory", [_lumina, _hidream, _stable_cascade], ids=["Lumina2", "HiDream", "StableCascade"])
def test_diffusers_backbones_with_data_dependent_python_and_dispatch(factory):
    """Lumina2 (len(set(seq_lengths))) and HiDream (.numpy() in its MoE router) are captured on real
    tensors; StableCascadeUNet's checkpointing branch binds the task only to the blocks that take it."""
    pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model, example, timestep, units = factory()
    model = model.eval()
    torch.manual_seed(1)
    kwargs = example(3)
    spec = {"version": 1, "timestep": timestep}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # units left out are reported as warnings
        routed = dtrsurgeon.transform(model, spec, example_inputs=kwargs)
        identity = dtrsurgeon.transform(model, {**spec, "routing": {"channel_ratio": 1.0}}, example_inputs=kwargs)
    assert [u.path for u in routed.dtr_plan.units] == units
    with torch.no_grad():
        out, ref = routed(**kwargs)[0], model(**kwargs)[0]
        assert torch.equal(identity(**kwargs)[0], ref)
        one_by_one = torch.cat([routed(**_one_sample(kwargs, i, 3))[0] for i in range(3)])
    assert not torch.allclose(out, ref, atol=1e-4)
    assert torch.allclose(out, one_by_one, atol=1e-4)
    routed.train()
    if hasattr(routed, "enable_gradient_checkpointing") and routed._supports_gradient_checkpointing:
        routed.enable_gradient_checkpointing()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no routed unit runs without its task
        routed(**kwargs)[0].square().mean().backward()
    grads = [p.grad for p in routed.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
