"""``checkpoint_sequential`` over an ``nn.Sequential`` of units (tests/checkpoint_patterns.py): it calls
each child itself, so the routed code binds the task to the children that take it.  Checked in train
mode with gradients, with ``use_reentrant`` False and True, for ``transform()`` and for apply's file."""

import json
import re
import warnings

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.cli import main
from tests import checkpoint_patterns as cp
from tests.conftest import import_path

FILE = "tests/checkpoint_patterns.py"
DEFAULT = {"version": 1}
UNITS = ["blocks.0", "blocks.2", "blocks.3"]  # blocks.1 is the Dropout between them


def build(name, reentrant):
    torch.manual_seed(0)
    return getattr(cp, name)(reentrant=reentrant).eval()


def inputs(model, batch=3):
    torch.manual_seed(1)
    return model.example_inputs(batch)[0]


def train_outputs(model, args, checkpointing):
    """The output and the gradients of one backward pass, in train mode, without a warning."""
    model.train().zero_grad()
    model.grad_checkpointing = checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a unit called without its task warns
        out = model(*args)
        out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def routed_reference(name, reentrant):
    """The same weights through SegmentedCheckpointNet's plain path, ``self.blocks(x)`` (the routed
    Sequential's forward hands each unit its task), what a checkpointed run must equal."""
    reference = dtrsurgeon.transform(build("SegmentedCheckpointNet", reentrant), DEFAULT)
    reference.load_state_dict(build(name, reentrant).state_dict())
    return reference


# each toy with use_reentrant False and True; the fast suite runs the if/else loop without
# reentrance, the rest is slow (3-6 s each on 2 cores)
FAST = {("LoopElseNet", False)}
TOYS_AND_REENTRANCE = [
    pytest.param(name, reentrant, marks=() if (name, reentrant) in FAST else pytest.mark.slow)
    for name in ("SegmentedCheckpointNet", "AlwaysSegmentedNet", "DecoratedSegmentedNet", "LoopElseNet")
    for reentrant in (False, True)
]


@pytest.mark.parametrize("name,reentrant", TOYS_AND_REENTRANCE)
def test_checkpoint_sequential_routes_each_unit(name, reentrant):
    model = build(name, reentrant)
    routed = dtrsurgeon.transform(model, DEFAULT)
    assert [u.path for u in routed.dtr_plan.units] == UNITS
    args = inputs(model)
    out, grads = train_outputs(routed, args, checkpointing=True)
    ref, ref_grads = train_outputs(routed_reference(name, reentrant), args, checkpointing=False)
    assert torch.allclose(out, ref, atol=1e-6)
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, ref_grads))
    vanilla, _ = train_outputs(model, args, checkpointing=True)
    assert not torch.allclose(out, vanilla, atol=1e-4)
    alone = torch.cat([train_outputs(routed, [a[i:i + 1] for a in args], True)[0] for i in range(len(args[0]))])
    assert torch.allclose(out, alone, atol=1e-5)  # each sample routed by its own timestep


@pytest.mark.parametrize("name,reentrant", TOYS_AND_REENTRANCE)
def test_checkpoint_sequential_through_apply_equals_transform(name, reentrant, tmp_path):
    model = build(name, reentrant)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(DEFAULT))
    out = tmp_path / f"{name}_{reentrant}_dtr.py"
    kwargs = ["--kwargs", json.dumps({"reentrant": reentrant})]
    assert main(["apply", str(spec), FILE, "--entry", name, *kwargs, "-o", str(out)]) == 0
    text = out.read_text()
    assert "dtr_bind_children(self.blocks, dtr_task)" in text
    assert not re.search(r"^\s*(from|import) dtrsurgeon", text, re.MULTILINE)
    module = import_path(out, f"gen_checkpoint_{name}_{reentrant}")
    # SegmentedCheckpointNet also calls the Sequential's own forward: a file of subclasses and route(model)
    generated = module.route(build(name, reentrant)) if hasattr(module, "route") else getattr(module, name)(reentrant=reentrant)
    generated.load_state_dict(model.state_dict(), strict=True)
    args = inputs(model)
    got, got_grads = train_outputs(generated, args, checkpointing=True)
    want, want_grads = train_outputs(dtrsurgeon.transform(model, DEFAULT), args, checkpointing=True)
    assert torch.allclose(got, want, atol=1e-6)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got_grads, want_grads))


def test_bind_children_leaves_a_sequential_without_task_as_it_is():
    """A helper its caller gave no task hands the Sequential on unchanged; with a task, only the
    children whose forward takes ``dtr_task`` are bound (a plain Dropout is not)."""
    from dtrsurgeon.runtime import dtr_bind_children

    routed = dtrsurgeon.transform(build("SegmentedCheckpointNet", False), DEFAULT)
    assert dtr_bind_children(routed.blocks, None) is routed.blocks
    functions = [routed.blocks[0], torch.nn.Dropout(0.0), routed.blocks[2]]
    children = dtr_bind_children(functions, torch.tensor([3]))
    assert [c is f for c, f in zip(children, functions)] == [False, True, False]
