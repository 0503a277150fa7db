"""The checks every pattern toy goes through, shared by the files of toys written after research
code (test_research_patterns.py, test_reference_impl_patterns.py, test_research_repo_patterns.py).

Each file describes its toys once (``Toys``: where they live, how one is built and fed, what its
training step switches on) and calls ``check_routes`` and ``check_apply`` from its parametrized
tests::

    TOYS = Toys(file="tests/research_patterns.py", spec_for=spec_for, build=build,
                inputs=inputs, prefix="gen_research", prepare_training=switch_on_checkpointing)

    @each_toy_and_mode(PATTERNS)
    def test_pattern_routes_per_sample_is_identity_at_ratio_one_and_trains(name, mode):
        check_routes(TOYS, name, mode, PATTERNS[name])
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch

import dtrsurgeon
from dtrsurgeon.cli import main
from tests.conftest import import_path


def each_toy_and_mode(names):
    """``@pytest.mark.slow``, parametrized over the toys ``names`` and both routing modes (ids
    ``[Toy-block]``, ``[Toy-branch]``)."""
    def decorate(test):
        by_name = pytest.mark.parametrize("name", list(names))(test)
        return pytest.mark.slow(pytest.mark.parametrize("mode", ["block", "branch"])(by_name))
    return decorate


def _as_is(routed, name, kwargs):
    return kwargs


@dataclass(frozen=True)
class Toys:
    """One file of toys: ``spec_for(mode, ratio=None)`` its spec, ``build(name)`` an eval-mode toy,
    ``inputs(model)`` the ``(args, kwargs)`` of a batch of three, ``prepare_training(routed, name,
    kwargs)`` the switches a toy's training branch needs (it returns the call's kwargs),
    ``library_form`` the toys apply writes as subclasses and ``route(model)``."""

    file: str
    spec_for: Callable
    build: Callable
    inputs: Callable
    prefix: str
    prepare_training: Callable = _as_is
    library_form: frozenset = field(default_factory=frozenset)


def tensors(out) -> list:
    """The tensors of a forward's result, in order: a tensor, or nested tuples and lists of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in tensors(item)]


def sample(args, kwargs, i):
    """The inputs of sample ``i`` alone: every tensor with a batch axis sliced."""
    one = lambda v: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v  # noqa: E731
    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def run_alone(routed, args, kwargs) -> list:
    """Each sample run alone, the results joined along the batch."""
    outs = [tensors(routed(*sample(args, kwargs, i)[0], **sample(args, kwargs, i)[1])) for i in range(len(args[0]))]
    return [torch.cat(parts) for parts in zip(*outs)]


def train_step(toys: Toys, routed, name: str) -> None:
    """One training step on the branch the toy only takes while training: finite gradients."""
    args, kwargs = toys.inputs(routed)
    routed.train()
    kwargs = toys.prepare_training(routed, name, kwargs)
    routed.zero_grad()
    sum(t.square().mean() for t in tensors(routed(*args, **kwargs))).backward()
    grads = [p.grad for p in routed.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def check_routes(toys: Toys, name: str, mode: str, units: Optional[list] = None) -> None:
    """The routed toy's units are ``units`` (when given); at channel_ratio 1 it is the toy, bit for
    bit; routed, its output differs and each sample comes out as if run alone; it trains; and no call
    runs unrouted (a warning is an error)."""
    model = toys.build(name)
    routed = dtrsurgeon.transform(model, toys.spec_for(mode))
    if units is not None:
        assert [u.path for u in routed.dtr_plan.units] == units
    identity = dtrsurgeon.transform(model, toys.spec_for(mode, ratio=1.0))
    args, kwargs = toys.inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out, ref = tensors(routed(*args, **kwargs)), tensors(model(*args, **kwargs))
            alone = run_alone(routed, args, kwargs)
            assert all(torch.equal(a, b) for a, b in zip(tensors(identity(*args, **kwargs)), ref, strict=True))
        assert not torch.allclose(out[0], ref[0], atol=1e-4)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, alone, strict=True))
        train_step(toys, routed, name)


def check_apply(toys: Toys, name: str, mode: str, tmp_path) -> None:
    """``dtrsurgeon apply`` on the toys' file: the generated model, given the toy's weights, computes
    what ``transform()`` computes, bit for bit, and trains without a call running unrouted."""
    model = toys.build(name)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(toys.spec_for(mode)))
    out = tmp_path / f"{name}_{mode}_dtr.py"
    assert main(["apply", str(spec), toys.file, "--entry", name, "-o", str(out)]) == 0
    module = import_path(out, f"{toys.prefix}_{name}_{mode}")
    # units called through torch's own forwards (nn.Sequential): a file of subclasses and route(model)
    generated = module.route(toys.build(name)) if name in toys.library_form else getattr(module, name)().eval()
    assert hasattr(module, "route") == (name in toys.library_form)
    generated.load_state_dict(model.state_dict(), strict=True)
    routed = dtrsurgeon.transform(model, str(spec))
    args, kwargs = toys.inputs(model)
    with torch.no_grad():
        a, b = tensors(generated(*args, **kwargs)), tensors(routed(*args, **kwargs))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(2)
        train_step(toys, generated, name)
