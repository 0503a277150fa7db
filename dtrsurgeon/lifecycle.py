"""Routing across a model's life: find the model inside a wrapper, switch routing off for a
while, change its masks in place, remove it.

    >>> routed = dtrsurgeon.transform(model, "dit-paper")            # doctest: +SKIP
    >>> with dtrsurgeon.routing_disabled(routed):                                # doctest: +SKIP
    ...     baseline = routed(x, t, y)                 # exactly model(x, t, y)
    >>> dtrsurgeon.set_routing(routed, {"channel_ratio": 0.6})                   # doctest: +SKIP
    >>> plain = dtrsurgeon.unroute(routed)             # model's classes, same parameters   # doctest: +SKIP

The PEFT counterparts are ``disable_adapter()``, a new ``LoraConfig`` and ``unload()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, Iterator, Mapping, TypeVar

import torch
from torch import nn

from dtrsurgeon.emit.module import mask_buffers, strip_routing, unit_repr
from dtrsurgeon.errors import SpecError
from dtrsurgeon.masks import active_channels, mask_table_for
from dtrsurgeon.spec import load_spec

M = TypeVar("M", bound=nn.Module)

# what set_routing may change: everything that only decides the mask tables' values
SETTABLE = ("channel_ratio", "task_weights", "window_shift", "seed")


def inner_model(model: nn.Module) -> nn.Module:
    """The model a wrapper holds: ``PeftModel`` -> its base model, ``DistributedDataParallel`` /
    ``DataParallel`` -> ``.module``, ``torch.compile``'s ``OptimizedModule`` -> ``._orig_mod``
    (nested wrappers are unwrapped in turn); any other module is returned as it is."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel):
            model = model.get_base_model()
        else:
            return model


def routed_root(model: Any, verb: str) -> nn.Module:
    """The routed model inside ``model`` (a routed module or a wrapper of one); a one-line
    TypeError naming ``verb`` otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{verb}(): model must be a torch.nn.Module routed by dtrsurgeon, got {type(model).__name__}")
    root = inner_model(model)
    if "dtr_plan" not in root.__dict__ or not hasattr(type(root), "_dtr_base"):
        raise TypeError(f"{verb}(): {type(root).__name__} is not routed (it has no dtr_plan); "
                        "route it with dtrsurgeon.transform(model, spec)")
    return root


def unroute(model: M) -> M:
    """Remove routing in place: every module gets its original class back (and with it its
    original methods), keeping its parameters and buffers; the mask tables, ``dtr_plan`` and
    ``dtr_spec`` go.  Returns ``model``::

        plain = dtrsurgeon.unroute(routed)
        type(plain) is DiT and plain(x, t, y) == DiT-with-the-same-weights(x, t, y)
    """
    root = routed_root(model, "unroute")
    for module in root.modules():
        base = getattr(type(module), "_dtr_base", None)
        if base is not None:
            module.__class__ = base
        strip_routing(module.__dict__)
    return model


@contextlib.contextmanager
def routing_disabled(model: M) -> Iterator[M]:
    """Inside the block the routed model computes exactly what the unrouted one does.

    Every mask table is set to all-True in place (each unit's ``x * m`` is ``x`` and its
    bypass ``x * (1 - m)`` is zero) and restored on leaving.  The routed code keeps running,
    so a compiled model neither breaks its graph nor recompiles when it enters or leaves::

        with dtrsurgeon.routing_disabled(routed):
            baseline = routed(x, t, y)      # == the vanilla model's output

    Leaving restores the tables as they were on entering: call ``set_routing`` outside the block.
    """
    root = routed_root(model, "routing_disabled")
    tables = [m._buffers[name] for m in root.modules() for name in mask_buffers(m._buffers) if m._buffers[name] is not None]
    saved = [table.clone() for table in tables]
    with torch.no_grad():
        for table in tables:
            table.fill_(True)
    try:
        yield model
    finally:
        with torch.no_grad():
            for table, values in zip(tables, saved):
                table.copy_(values)


def set_routing(model: M, routing: Mapping[str, Any]) -> M:
    """Change the routing settings of a routed model in place, as a fresh ``transform`` with the
    spec's ``routing`` section updated by ``routing`` would have them; ``dtr_spec`` and
    ``dtr_plan`` follow.  Keys: ``channel_ratio``, ``task_weights``, ``window_shift``, ``seed``
    (the spec's ``overrides`` still apply on top)::

        dtrsurgeon.set_routing(routed, {"channel_ratio": 0.6, "task_weights": {"curve": "linear"}})

    A bad value is a SpecError naming its pointer, and nothing changes.
    """
    root = routed_root(model, "set_routing")
    if not isinstance(routing, Mapping):
        raise TypeError(f"set_routing(): routing must be a dict of {', '.join(SETTABLE)}, got {type(routing).__name__}")
    for key in routing:
        if key not in SETTABLE:
            raise SpecError(f"/routing/{key}", f"set_routing changes only {', '.join(SETTABLE)}; "
                            f"a new {key} needs a fresh dtrsurgeon.transform")
    if root.dtr_spec is None:
        raise TypeError("set_routing(): the model was routed from a plan without its spec; use dtrsurgeon.transform")
    doc = root.dtr_spec.to_dict()
    doc["routing"].update(routing)
    spec = load_spec(doc)
    units = []
    for unit in root.dtr_plan.units:
        params = spec.mask_params_for(unit.path)
        streams = tuple(dataclasses.replace(s, active=active_channels(s.channels, params.channel_ratio))
                        for s in unit.streams)
        units.append(dataclasses.replace(unit, mask=params, active=active_channels(unit.channels, params.channel_ratio),
                                         streams=streams))
    # every table first: an error changes nothing
    tables = [[("dtr_mask", mask_table_for(u.mask, u.channels))]
              + [(s.buffer, mask_table_for(u.mask, s.channels)) for s in u.streams] for u in units]
    with torch.no_grad():
        for unit, unit_tables in zip(units, tables):
            module = root.get_submodule(unit.path)
            for name, table in unit_tables:
                if module._buffers.get(name) is not None:
                    module._buffers[name].copy_(table)
            module._dtr_repr = unit_repr(unit)
    root.dtr_plan = dataclasses.replace(root.dtr_plan, units=tuple(units), spec_sha256=spec.sha256)
    root.dtr_spec = spec
    return model
