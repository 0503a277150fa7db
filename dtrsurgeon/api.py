"""The two verbs: ``plan`` (a dry run) and ``transform`` (the routed module)."""

from __future__ import annotations

from torch import nn

from dtrsurgeon.analysis.units import build_plan
from dtrsurgeon.emit.module import apply_plan, refuse_routed
from dtrsurgeon.plan import Plan
from dtrsurgeon.spec import load_spec


def plan(model: nn.Module, spec, example_inputs=None) -> Plan:
    """Analyse ``model`` and return what ``transform`` would do; changes nothing.

    ``example_inputs``: ``(args, kwargs)``, a tuple of positional inputs, or a
    dict of keyword inputs for one forward call.  Default: the model's own
    ``example_inputs()`` method, else inputs guessed from its forward signature.
    """
    return build_plan(model, load_spec(spec), example_inputs)


def transform(model: nn.Module, spec, example_inputs=None, inplace: bool = False) -> nn.Module:
    """Return ``model`` with Denoising Task Routing compiled in.

    The result is the same kind of object (``isinstance`` holds, every method
    such as DiT's ``forward_with_cfg`` works, the forward signature is
    unchanged), with exactly the same parameters and ``state_dict()`` keys; the
    input is left untouched unless ``inplace``.  Each sample's timestep picks
    its own mask row.  The result carries ``dtr_spec`` and ``dtr_plan``.

        >>> routed = dtrsurgeon.transform(DiT_S_2(), "dit-paper")   # doctest: +SKIP
        >>> routed(x, t, y).shape == model(x, t, y).shape                       # doctest: +SKIP
    """
    spec = load_spec(spec)
    refuse_routed(model)
    return apply_plan(model, build_plan(model, spec, example_inputs), spec, inplace=inplace)
